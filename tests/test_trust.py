"""Issue 10: seeded runs repeat bit for bit (CLI, API, torchrun), given splits are kept, bad data is refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from commonspace import CommonSpace
from commonspace.cli import app
from commonspace.data.dataset import DataError, DataWarning, MultimodalDataset
from commonspace.data.io import load_embeddings, load_npz, read_npz, save_embeddings, save_npz
from commonspace.data.resolve import ensure_splits
from commonspace.models.base import create

runner = CliRunner()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(*args: object) -> object:
    res = runner.invoke(app, [str(a) for a in args])
    return res


def _tiny(path: Path, n: int = 80, **extra: object) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    arrays = {"x_a": rng.normal(size=(3, 6))[y] + 0.3 * rng.normal(size=(n, 6)),
              "x_b": rng.normal(size=(3, 4))[y] + 0.3 * rng.normal(size=(n, 4)), "labels": y,
              "modalities": np.array(["a", "b"])}
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------ 1. repeatability
def test_cli_train_and_embed_repeat_bit_for_bit(tmp_path: Path) -> None:
    shas = []
    for run in ("r1", "r2"):
        res = _cli("train", "--data", "digits-halves", "--model", "bidnn", "--out", tmp_path / run, "--epochs", 2,
                   "--seed", 3, "--no-progress")
        assert res.exit_code == 0, res.output
        res = _cli("embed", "--model", tmp_path / run, "--data", "digits-halves", "--split", "test", "--out",
                   tmp_path / f"{run}.npz")
        assert res.exit_code == 0, res.output
        shas.append((_sha(tmp_path / run / "model" / "model.safetensors"), _sha(tmp_path / f"{run}.npz")))
    assert shas[0] == shas[1]
    # and the seed matters: another seed gives other weights
    res = _cli("train", "--data", "digits-halves", "--model", "bidnn", "--out", tmp_path / "r3", "--epochs", 2,
               "--seed", 4, "--no-progress")
    assert res.exit_code == 0
    assert _sha(tmp_path / "r3" / "model" / "model.safetensors") != shas[0][0]


def test_create_init_seed_ignores_what_ran_before() -> None:
    torch.manual_seed(1)
    a = create("bidnn", {"a": 5, "b": 3}, init_seed=7)
    torch.rand(100)  # the global stream moved on
    b = create("bidnn", {"a": 5, "b": 3}, init_seed=7)
    state = torch.get_rng_state()
    create("bidnn", {"a": 5, "b": 3}, init_seed=8)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_api_seed_repeats_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(90, 6)), "b": rng.normal(size=(90, 4))}
    outs, shas = [], []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever the caller did with the global RNG before
        cs = CommonSpace("bidnn", epochs=2, seed=5).fit(x)
        outs.append(cs.transform(x))
        cs.save(tmp_path / f"m{i}")
        shas.append(_sha(tmp_path / f"m{i}" / "model.safetensors"))
    assert np.array_equal(outs[0], outs[1])
    assert shas[0] == shas[1]


def test_npz_writers_give_the_same_bytes(tmp_path: Path) -> None:
    ds = MultimodalDataset({"a": np.arange(12.0).reshape(6, 2)}, labels=np.arange(6) % 2)
    save_npz(ds, tmp_path / "d1.npz")
    save_embeddings(tmp_path / "e1.npz", {"z": np.ones((3, 2))}, meta={"k": 1})
    import time

    time.sleep(2.1)  # zip timestamps have a two-second resolution
    save_npz(ds, tmp_path / "d2.npz")
    save_embeddings(tmp_path / "e2.npz", {"z": np.ones((3, 2))}, meta={"k": 1})
    assert _sha(tmp_path / "d1.npz") == _sha(tmp_path / "d2.npz")
    assert _sha(tmp_path / "e1.npz") == _sha(tmp_path / "e2.npz")
    assert np.array_equal(load_embeddings(tmp_path / "e2.npz")[0]["z"], np.ones((3, 2)))


def test_torchrun_matches_single_process(tmp_path: Path) -> None:
    common = ["train", "--data", "digits-halves", "--model", "bidnn", "--epochs", "2", "--seed", "0",
              "--no-progress", "--set", "dropout=0"]
    res = _cli(*common, "--out", tmp_path / "single")
    assert res.exit_code == 0, res.output
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", "-m", "commonspace", *common, "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


# --------------------------------------------------------------------------------------- 2. splits
def test_given_test_split_is_exactly_the_evaluated_one(tmp_path: Path) -> None:
    test_rows = np.array([3, 9, 17, 22, 31, 40, 51, 60, 70, 79])
    data = _tiny(tmp_path / "d.npz", split_test=test_rows)
    res = _cli("train", "--data", data, "--model", "bidnn", "--out", tmp_path / "run", "--epochs", 1,
               "--no-progress")
    assert res.exit_code == 0, res.output
    assert "kept the data's splits (test 10 rows)" in res.output
    res = _cli("embed", "--model", tmp_path / "run", "--data", data, "--split", "test", "--out", tmp_path / "e.npz")
    assert res.exit_code == 0, res.output
    arrays, _ = load_embeddings(tmp_path / "e.npz")
    assert np.array_equal(np.sort(arrays["index"]), test_rows)
    res = _cli("evaluate", "--model", tmp_path / "run", "--data", data, "--split", "test")
    assert res.exit_code == 0, res.output
    assert "10 items" in res.output


def test_ensure_splits_carves_only_unassigned_rows() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 100)
    given = {"test": np.arange(0, 100, 10), "query": np.arange(1, 30, 10)}
    ds = MultimodalDataset({"a": rng.normal(size=(100, 3))}, labels=y, splits=given)
    out, note = ensure_splits(ds, seed=0)
    for k, v in given.items():
        assert np.array_equal(out.splits[k].numpy(), v)
    taken = np.concatenate(list(given.values()))
    for k in ("train", "val"):
        assert not np.intersect1d(out.splits[k].numpy(), taken).size
    assert len(out.splits["train"]) + len(out.splits["val"]) == 100 - len(taken)
    assert "kept" in note and "test" in note and "query" in note
    # a val split given: train is every unassigned row, val untouched
    ds = MultimodalDataset({"a": rng.normal(size=(100, 3))}, labels=y, splits={"val": np.arange(10)})
    out, _ = ensure_splits(ds)
    assert np.array_equal(out.splits["val"].numpy(), np.arange(10))
    assert np.array_equal(out.splits["train"].numpy(), np.arange(10, 100))
    # given splits that cover every row leave nothing to train on
    ds = MultimodalDataset({"a": rng.normal(size=(4, 3))}, splits={"test": np.arange(4)})
    with pytest.raises(DataError, match="no 'train' split"):
        ensure_splits(ds)


# ---------------------------------------------------------------------------------- 3. bad data
def test_damaged_npz_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a valid .npz file .not a zip archive"):
        load_npz(tmp_path / "text.npz")
    raw = _tiny(tmp_path / "full.npz").read_bytes()
    for cut in (len(raw) // 3, len(raw) - 30):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(DataError, match="damaged or truncated"):
            read_npz(tmp_path / "cut.npz")
    res = _cli("train", "--data", tmp_path / "text.npz", "--model", "bidnn", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("error:")


def test_feature_values_float32_cannot_hold() -> None:
    x = np.ones((5, 2))
    x[2, 1] = 1e200
    with pytest.raises(DataError, match="beyond float32's range"):
        MultimodalDataset({"a": x})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        MultimodalDataset({"a": np.full((5, 2), 2**24 + 1, dtype=np.int64)})
        MultimodalDataset({"b": np.full((5, 2), 2**24, dtype=np.int64)})  # still exact: no warning
    assert [w.category for w in got] == [DataWarning]
    assert "precision is lost" in str(got[0].message)


def test_width_zero_and_string_labels_refused() -> None:
    with pytest.raises(DataError, match="no features"):
        MultimodalDataset({"a": np.ones((5, 2)), "b": np.ones((5, 0))})
    with pytest.raises(DataError, match="numpy.unique"):
        MultimodalDataset({"a": np.ones((3, 2))}, labels=np.array(["x", "y", "x"]))
    with pytest.raises(DataError, match="numpy.unique"):
        MultimodalDataset({"a": np.ones((3, 2))}, labels=["x", "y", "x"])


def test_bool_column_labels_stay_multilabel_and_round_trip(tmp_path: Path) -> None:
    yb = np.array([[True], [False], [True]])
    ds = MultimodalDataset({"a": np.ones((3, 2))}, labels=yb)
    assert ds.multilabel and ds.labels.shape == (3, 1)
    save_npz(ds, tmp_path / "d.npz")
    back = load_npz(tmp_path / "d.npz")
    assert back.multilabel and torch.equal(back.labels, ds.labels)
    ds = MultimodalDataset({"a": np.ones((3, 2))}, labels=np.array([[0], [2], [1]]))
    assert not ds.multilabel and ds.labels.tolist() == [0, 2, 1]


def test_set_of_the_wrong_type_names_the_parameter(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "d.npz")
    res = _cli("train", "--data", data, "--model", "bidnn", "--out", tmp_path / "r", "--set", "hidden=big")
    assert res.exit_code == 2
    assert "'hidden'" in res.output and "integer" in res.output and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0  # one line: no note before the refusal
    with pytest.raises(DataError, match="unknown hyper-parameters"):
        create("bidnn", {"a": 3, "b": 2}, hiden=4)
    create("cvs", {"a": 3, "b": 2}, n_classes=np.int64(3), hidden=(8,))  # numpy ints and tuples are fine


def test_one_sample_training_split_refused(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "d.npz", split_train=np.array([0]), split_test=np.arange(1, 80))
    res = _cli("train", "--data", data, "--model", "bidnn", "--out", tmp_path / "r", "--no-progress")
    assert res.exit_code == 2 and "at least 2" in res.output


def test_rows_without_any_modality_are_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 80
    a, b = rng.normal(size=(n, 6)), rng.normal(size=(n, 4))
    mask = np.ones((n, 2), dtype=bool)
    mask[:4] = False
    a[:4] = 0
    b[:4] = 0
    data = _tiny(tmp_path / "d.npz", x_a=a, x_b=b, mask=mask)
    res = _cli("train", "--data", data, "--model", "bidnn", "--out", tmp_path / "r", "--epochs", 1, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "4 of 80 rows have no modality present" in res.output
    assert MultimodalDataset({"a": a, "b": b}, mask=mask).empty_rows.tolist() == [0, 1, 2, 3]
