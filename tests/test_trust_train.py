"""Issue 28, items 1 and 5: no resume on changed data, and training failures as one line before any allocation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import DataError, DataWarning, MultimodalDataset
from commonspace.data.labels import check_class_ids, single_class
from commonspace.models import base
from commonspace.train import CheckpointError, TrainConfig, Trainer
from commonspace.train import trainer as trainer_mod
from commonspace.train.trainer import content_digest
from helpers_train import build_model, fit_or_interrupt, folder_data, make_data

runner = CliRunner()
SPLITS = {"split_train": np.arange(40), "split_val": np.arange(40, 50), "split_test": np.arange(50, 60)}


def _npz(path: Path, seed: int = 0, labels: np.ndarray | None = None, **extra: object) -> Path:
    """Two modalities, three classes; ``seed`` changes the feature values only (same shape, labels, splits)."""
    y = np.random.default_rng(0).integers(0, 3, 60) if labels is None else labels
    rng = np.random.default_rng(seed)
    np.savez(path, x_a=rng.normal(size=(60, 6)), x_b=rng.normal(size=(60, 4)), labels=y,
             modalities=np.array(["a", "b"]), **extra)
    return path


def _train(data: Path, out: Path, *extra: str) -> object:
    return runner.invoke(app, ["train", "--data", str(data), "--model", "bidnn", "--out", str(out),
                               "--no-progress", *extra])


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def _stopped_cli_run(data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-epoch CLI run stopped right after epoch 1's checkpoint, as a kill would leave it."""
    write = trainer_mod.Trainer._checkpoint

    def stop(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        write(self, *a, **k)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer_mod.Trainer, "_checkpoint", stop)
        r = _train(data, out, "--epochs", "3")
    assert r.exit_code != 0
    assert (out / "checkpoint" / "trainer.json").is_file() and not (out / "model").exists()


# ------------------------------------------------------------------------------- item 1: resume on changed data
def test_resume_on_changed_data_is_refused_and_unchanged_data_resumes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data, run = _npz(tmp_path / "d.npz"), tmp_path / "run"
    _stopped_cli_run(data, run, monkeypatch)
    before = {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()}

    _npz(data, seed=1)  # same shape, labels and splits; other feature values
    r = _train(data, run, "--epochs", "3")
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "other data" in lines[0] and "--no-resume" in lines[0] and "--out" in lines[0]
    assert {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()} == before  # nothing touched

    _npz(data, seed=0)  # the original data back: resumes where it stopped, and says so
    r = _train(data, run, "--epochs", "3")
    assert r.exit_code == 0, r.output
    assert "note: resumed at epoch 1 of 3" in r.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 3

    _npz(data, seed=1)
    r = _train(data, run, "--epochs", "3", "--no-resume")  # the fix the refusal names
    assert r.exit_code == 0 and "resumed" not in r.output, r.output


def test_api_resume_on_changed_data_is_refused_and_notes_the_resume(tmp_path: Path) -> None:
    cfg = TrainConfig.for_model(build_model(), epochs=3, out_dir=tmp_path, progress=False)
    assert fit_or_interrupt(build_model(), cfg, make_data(), stop=True) is None
    other = make_data(seed=1)  # same sizes and splits, other values
    with pytest.raises(CheckpointError, match=r"other data.*resume=False"):
        Trainer(build_model(), cfg).fit(other, val=None)
    t = Trainer(build_model(), cfg)
    t.fit(make_data(), val=None)
    assert t.notes == [f"resumed at epoch 1 of 3 from {tmp_path / 'checkpoint'}"]


def test_content_digest_sees_values_and_reads_no_whole_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data()
    idx = (data.split("train"),)
    assert content_digest(data, idx) == content_digest(make_data(), idx)
    changed = data.features["a"].clone()
    changed[17, 2] += 1e-3
    assert content_digest(data.replace({"a": changed, "b": data.features["b"]}), idx) != content_digest(data, idx)
    relabelled = MultimodalDataset(dict(data.features), data.mask, torch.arange(data.n) % 2, data.splits)
    assert content_digest(relabelled, idx) != content_digest(data, idx)

    # large in-memory arrays are sampled (rows + column sums), and still see a change in one value
    monkeypatch.setattr(trainer_mod, "_HASH_WHOLE_BYTES", 64)
    big = content_digest(data, idx)
    changed = data.features["a"].clone()
    changed[5, 0] += 0.5
    assert content_digest(data.replace({"a": changed, "b": data.features["b"]}), idx) != big

    # a memory-mapped folder: sampled rows and the folder's sha256 manifest, never the whole file
    lazy = folder_data(tmp_path / "folder")
    assert lazy.lazy_modalities
    from commonspace.data.dataset import LazyArray

    monkeypatch.setattr(LazyArray, "materialise", lambda self: pytest.fail("the digest read a whole modality"))
    assert content_digest(lazy, idx) == content_digest(folder_data(tmp_path / "folder"), idx)


def test_checkpoint_without_content_hash_resumes_with_a_warning(tmp_path: Path) -> None:
    cfg = TrainConfig.for_model(build_model(), epochs=3, out_dir=tmp_path, progress=False)
    fit_or_interrupt(build_model(), cfg, make_data(), stop=True)
    path = tmp_path / "checkpoint" / "trainer.json"  # not itself checksummed: as an older version wrote it
    state = json.loads(path.read_text())
    del state["run"]["data"]["content"]
    path.write_text(json.dumps(state))
    t = Trainer(build_model(), cfg)
    with pytest.warns(DataWarning, match="predates data content hashes"):
        t.fit(make_data(), val=None)
    assert t.notes and t.notes[0].startswith("resumed at epoch 1 of 3")
    assert "content" in json.loads(path.read_text())["run"]["data"]  # recorded from now on


# -------------------------------------------------------------------------------- item 5: training failures
def test_diverging_loss_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    data = _npz(tmp_path / "d.npz", **SPLITS)
    r = runner.invoke(app, ["train", "--data", str(data), "--model", "ae_split", "--out", str(tmp_path / "run"),
                            "--lr", "1e30", "--epochs", "2", "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "diverged" in lines[0] and "epoch 2" in lines[0] and "--lr" in lines[0]
    assert not (tmp_path / "run").exists()


def test_diverging_resumed_run_keeps_its_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig.for_model(build_model(), epochs=3, out_dir=tmp_path, progress=False)
    fit_or_interrupt(build_model(), cfg, make_data(), stop=True)
    before = (tmp_path / "checkpoint" / "trainer.json").read_bytes()

    def poison(trainer: Trainer, record: dict) -> None:  # after the resumed epoch: the weights blow up
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.fill_(float("inf"))

    t = Trainer(build_model(), cfg.replace(checkpoint_every=5), callbacks=[poison])
    with pytest.raises(FloatingPointError, match=r"epoch 3.*keeps the last checkpointed epoch"):
        t.fit(make_data(), val=None)
    assert (tmp_path / "checkpoint" / "trainer.json").read_bytes() == before


def test_absurd_width_is_refused_before_any_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "available_memory", lambda device="cpu": 16 << 30)
    data = _npz(tmp_path / "d.npz", **SPLITS)
    r = _train(data, tmp_path / "run", "--set", "hidden=1000000000", "--epochs", "1")
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "GiB" in lines[0] and "16.0 GiB" in lines[0] and "--set" in lines[0] and "hidden=1000000000" in lines[0]
    assert not (tmp_path / "run").exists()


def test_meta_estimate_matches_the_built_model() -> None:
    nbytes = base._meta_bytes(base.model_class("bidnn"), {"a": 6, "b": 4}, {"hidden": 32})
    model = base.create("bidnn", {"a": 6, "b": 4}, hidden=32)
    assert nbytes == sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


def test_training_memory_beyond_the_weights_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(base, "available_memory", lambda device="cpu": 2 * weights)  # Adam needs 3x
    with pytest.raises(DataError, match=r"Adam's two moments.*--optimizer sgd"):
        Trainer(model, TrainConfig.for_model(model, epochs=1, progress=False)).fit(make_data(), val=None)
    Trainer(model, TrainConfig.for_model(model, epochs=1, progress=False, optimizer="sgd",
                                         momentum=0.9)).fit(make_data(), val=None)


def test_outlier_class_id_is_refused(tmp_path: Path) -> None:
    y = np.random.default_rng(0).integers(0, 3, 60)
    y[7] = 10**9
    data = _npz(tmp_path / "d.npz", labels=y, **SPLITS)
    r = runner.invoke(app, ["train", "--data", str(data), "--model", "cvs", "--out", str(tmp_path / "run"),
                            "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and "class ids go up to 1000000000" in lines[0] and "numpy.unique" in lines[0]
    assert not (tmp_path / "run").exists()


def test_class_id_rule() -> None:
    assert check_class_ids(np.array([0, 2, 1000])) == 1001  # small ranges are always fine
    assert check_class_ids(np.arange(0, 8000, 2)) == 7999  # 4000 classes over 8000 ids: within 4x
    with pytest.raises(DataError, match="distinct classes"):
        check_class_ids(np.array([0, 1, 2, 5000]))
    assert check_class_ids(np.zeros((5, 3), dtype=bool)) == 3  # multi-label: the column count


def test_single_class_labels_warn(tmp_path: Path) -> None:
    data = _npz(tmp_path / "d.npz", labels=np.zeros(60, dtype=int), **SPLITS)
    r = _train(data, tmp_path / "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert "warning: the labels hold one class only (id 0)" in r.output and "1.0" in r.output
    assert single_class(np.array([0, 1, 0])) is None
    assert "label 1 on every row" in single_class(np.array([[0, 1], [1, 1]], dtype=bool))
    assert single_class(None) is None
