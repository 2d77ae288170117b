"""Verified checkpoints: checksums, format version, damaged files and safe temporary folders, each a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import Standardizer
from commonspace.models.base import create
from commonspace.train import CheckpointError, load_model, load_weights, save_model
from commonspace.train import checkpoint as ck
from commonspace.train.seed import get_rng_state
from helpers_train import build_model, make_data

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    # rich wraps (and folds long paths) at the terminal width: compare without any whitespace
    return "".join(text.split())


def _data_start(path: Path) -> int:
    """Offset of the first tensor byte in a safetensors file (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _flip_bit(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def _edit_json(path: Path, **changes: object) -> None:
    obj = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            obj.pop(k, None)
        else:
            obj[k] = v
    path.write_text(json.dumps(obj))


def _as_version_1(directory: Path) -> None:
    """Rewrite a directory as commonspace wrote it before checksums (format_version 1, no checksums)."""
    _edit_json(directory / "config.json", format_version=1, checksums=...)
    if (directory / "trainer.json").is_file():
        _edit_json(directory / "trainer.json", checksums=...)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny CLI-trained run folder (model/ + checkpoint/), copied by each test before damaging it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    r = _run("train", "--data", "digits-halves", "--model", "bidnn", "--out", run, "--epochs", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def small(tmp_path) -> Path:
    """A saved model directory with a standardizer."""
    torch.manual_seed(0)
    model = create("bidnn", {"a": 4, "b": 3})
    std = Standardizer()
    std.mean, std.std = {"a": torch.zeros(4), "b": torch.zeros(3)}, {"a": torch.ones(4), "b": torch.ones(3)}
    return save_model(tmp_path / "m", model, standardizer=std)


# ----------------------------------------------------------------------------------- checksums
def test_checksums_are_recorded_and_match(small, run):
    header = json.loads((small / "config.json").read_text())
    assert header["format_version"] == ck.FORMAT_VERSION == 2
    assert set(header["checksums"]) == {"model.safetensors", "standardizer.safetensors"}
    assert all(ck._sha256(small / n) == h for n, h in header["checksums"].items())
    state = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert {"config.json", "model.safetensors", "rng.safetensors", "rng.json"} <= set(state["checksums"])
    assert all(ck._sha256(run / "checkpoint" / n) == h for n, h in state["checksums"].items())
    assert "checksums" not in ck.read_training_checkpoint(run / "checkpoint").state


def test_flipped_bit_in_weights_fails_embed_naming_the_file(run, tmp_path):
    weights = run / "model" / "model.safetensors"
    _flip_bit(weights, _data_start(weights) + 1001)
    r = _run("embed", "--model", run, "--data", "digits-halves", "--out", tmp_path / "e.npz")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    flat = _flat(r.output)
    assert "model/model.safetensors" in flat and "damaged" in flat and "checksum" in flat and "retrain" in flat
    assert not (tmp_path / "e.npz").exists()


def test_flipped_bit_fails_load_model_and_load_weights(small):
    _flip_bit(small / "model.safetensors", _data_start(small / "model.safetensors") + 5)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged: its SHA-256 checksum"):
        load_model(small)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged"):
        load_weights(create("bidnn", {"a": 4, "b": 3}), small)


def test_damaged_standardizer_is_detected(small):
    _flip_bit(small / "standardizer.safetensors", _data_start(small / "standardizer.safetensors"))
    with pytest.raises(CheckpointError, match=r"standardizer\.safetensors is damaged"):
        load_model(small)


def test_checksum_for_a_missing_file_or_a_dropped_checksum_is_an_error(small):
    (small / "standardizer.safetensors").unlink()
    _edit_json(small / "config.json", standardizer=None)  # the checksum entry still names the file
    with pytest.raises(CheckpointError, match=r"standardizer\.safetensors is missing although config\.json records"):
        load_model(small)
    _edit_json(small / "config.json", checksums=...)
    with pytest.raises(CheckpointError, match="records no checksum for model.safetensors"):
        load_model(small)
    _edit_json(small / "config.json", checksums={"model.safetensors": "not hex"})
    with pytest.raises(CheckpointError, match="'checksums' entry is not a mapping"):
        load_model(small)


def test_version_1_directories_without_checksums_still_load(small):
    before = load_model(small).model.state_dict()
    _as_version_1(small)
    after = load_model(small)
    assert after.standardizer is not None
    assert all(torch.equal(v, after.model.state_dict()[k]) for k, v in before.items())


def test_matching_checksum_but_mismatching_tensors_gives_the_fit_message(small):
    tensors = {"enc.weight": torch.zeros(2, 2)}
    save_file(tensors, str(small / "model.safetensors"))
    sums = json.loads((small / "config.json").read_text())["checksums"]
    _edit_json(small / "config.json", checksums={**sums, "model.safetensors": ck._sha256(small / "model.safetensors")})
    with pytest.raises(CheckpointError, match="does not fit this BiDNN: .*missing tensors"):
        load_model(small)


# ------------------------------------------------------------------- damaged safetensors files
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(bytes(range(256)) * 8)


def _garble_header(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[8:12] = b"{{{{"
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _garble_header])
def test_damaged_safetensors_is_a_checkpoint_error_naming_the_file(small, damage):
    damage(small / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged: its SHA-256"):
        load_model(small)
    _as_version_1(small)  # without a checksum the parse itself must fail cleanly, never a SafetensorError
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or truncated \(not a readable"):
        load_model(small)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or truncated"):
        ck.tensor_shapes(small / "model.safetensors")


def test_truncated_weights_fail_embed_via_cli(run, tmp_path):
    _truncate(run / "model" / "model.safetensors")
    _as_version_1(run / "model")
    r = _run("embed", "--model", run, "--data", "digits-halves", "--out", tmp_path / "e.npz")
    assert r.exit_code == 2, r.output
    flat = _flat(r.output)
    assert "model/model.safetensors" in flat and "damagedortruncated" in flat and "SafetensorError" not in flat


# ------------------------------------------------------------------------- config.json checks
@pytest.mark.parametrize(("changes", "message"), [
    ({"config": []}, "'config' must be a JSON object"),
    ({"config": "x"}, "'config' must be a JSON object"),
    ({"model": 5}, "'model' must be a registry name"),
    ({"standardizer": "yes"}, "'standardizer' must be null or an object"),
    ({"meta": [1]}, "'meta' must be a JSON object"),
    ({"format_version": "2"}, "format_version is '2'"),
])
def test_malformed_config_json_is_refused_naming_it(run, tmp_path, changes, message):
    _edit_json(run / "model" / "config.json", **changes)
    r = _run("embed", "--model", run, "--data", "digits-halves", "--out", tmp_path / "e.npz")
    assert r.exit_code == 2, r.output
    assert "model/config.json" in _flat(r.output) and _flat(message) in _flat(r.output)


@pytest.mark.parametrize("dims", ["x", [4, 3], {"a": "4"}, {"a": [4, -1]}, {}])
def test_dims_that_are_not_a_mapping_of_shapes_are_refused(small, dims):
    cfg = json.loads((small / "config.json").read_text())
    cfg["config"]["dims"] = dims
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json is damaged: config 'dims' must map each modality"):
        load_model(small)
    with pytest.raises(CheckpointError, match=r"config\.json is damaged"):
        load_weights(create("bidnn", {"a": 4, "b": 3}), small)


def test_dims_x_via_cli(run, tmp_path):
    cfg = json.loads((run / "model" / "config.json").read_text())
    cfg["config"]["dims"] = "x"
    (run / "model" / "config.json").write_text(json.dumps(cfg))
    r = _run("embed", "--model", run, "--data", "digits-halves", "--out", tmp_path / "e.npz")
    assert r.exit_code == 2 and "model/config.json" in _flat(r.output) and "dims" in r.output


def test_newer_format_version_and_foreign_format_are_refused(small, run, tmp_path):
    _edit_json(small / "config.json", format_version=ck.FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match=r"format 3 .*newer than the formats up to 2.*upgrade commonspace"):
        load_model(small)
    _edit_json(small / "config.json", format="someone.else")
    with pytest.raises(CheckpointError, match="has format 'someone.else', not 'commonspace.model'"):
        load_model(small)
    _edit_json(run / "model" / "config.json", format_version=7)
    r = _run("embed", "--model", run, "--data", "digits-halves", "--out", tmp_path / "e.npz")
    assert r.exit_code == 2 and "newerthantheformatsupto2" in _flat(r.output) and "checkpointformat7" in _flat(r.output)


# -------------------------------------------------------------------------- resume (training)
def _train_again(run: Path, *extra: str):
    return _run("train", "--data", "digits-halves", "--model", "bidnn", "--out", run, "--epochs", "1",
                "--no-progress", *extra)


@pytest.mark.parametrize("content", ["{\"stage_index\": 0, \"epo", "[1, 2]", "{\"stage_index\": \"zero\"}", "\xff"])
def test_damaged_trainer_json_fails_resume_naming_it(run, content):
    (run / "checkpoint" / "trainer.json").write_bytes(content.encode("latin-1"))
    r = _train_again(run)
    assert r.exit_code == 2, r.output
    flat = _flat(r.output)
    assert "checkpoint/trainer.json" in flat and "damaged" in flat and "--no-resume" in flat
    assert _train_again(run, "--no-resume").exit_code == 0  # the fix the message names works


@pytest.mark.parametrize("content", ["{\"numpy\": ", "[]", "{\"numpy\": {\"kind\": 3}}"])
def test_damaged_rng_json_fails_resume_naming_it(run, content):
    (run / "checkpoint" / "rng.json").write_text(content)
    r = _train_again(run)
    assert r.exit_code == 2, r.output
    flat = _flat(r.output)
    assert "checkpoint/rng.json" in flat and "damaged" in flat and "checksum" in flat and "--no-resume" in flat
    _as_version_1(run / "checkpoint")  # a checkpoint from before checksums: the content itself is checked
    r = _train_again(run)
    assert r.exit_code == 2 and "checkpoint/rng.json" in _flat(r.output) and "--no-resume" in _flat(r.output)


def test_flipped_bit_in_checkpoint_weights_fails_resume(run):
    weights = run / "checkpoint" / "model.safetensors"
    _flip_bit(weights, _data_start(weights) + 77)
    r = _train_again(run)
    assert r.exit_code == 2 and "checkpoint/model.safetensors" in _flat(r.output) and "checksum" in r.output


def _checkpoint_with_optimizer(directory: Path) -> Path:
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(make_data().batch(torch.arange(8)))["total"].backward()
    opt.step()
    state = {"stage_index": 0, "epoch": 1, "global_step": 1, "history": [], "run": {}}
    return ck.save_training_checkpoint(directory, model=model, state=state, optimizer=opt,
                                       best=dict(model.state_dict()), rng=get_rng_state())


def test_damaged_optimizer_files_fail_reading_the_checkpoint(tmp_path):
    d = _checkpoint_with_optimizer(tmp_path / "checkpoint")
    assert ck.read_training_checkpoint(d).optimizer["state"]
    flat = json.loads((d / "optimizer.json").read_text())
    flat["__dict__"][0][1]["__dict__"][0][1]["__dict__"][0][1] = {"__tensor__": "no.such.tensor"}
    (d / "optimizer.json").write_text(json.dumps(flat))
    with pytest.raises(CheckpointError, match=r"optimizer\.json is damaged: its SHA-256.*--no-resume"):
        ck.read_training_checkpoint(d)
    _as_version_1(d)
    with pytest.raises(CheckpointError, match=r"optimizer\.json is damaged \(it does not match optimizer"):
        ck.read_training_checkpoint(d)
    (d / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is missing; the checkpoint is incomplete"):
        ck.read_training_checkpoint(d)


def test_damaged_best_weights_and_config_of_a_checkpoint(tmp_path):
    d = _checkpoint_with_optimizer(tmp_path / "checkpoint")
    _truncate(d / "best.safetensors")
    with pytest.raises(CheckpointError, match=r"best\.safetensors is damaged: its SHA-256"):
        ck.read_training_checkpoint(d)
    d = _checkpoint_with_optimizer(tmp_path / "c2")
    _edit_json(d / "config.json", meta={"stage": "edited"})  # config.json is covered by trainer.json
    with pytest.raises(CheckpointError, match=r"config\.json is damaged: its SHA-256 .* trainer\.json"):
        ck.read_training_checkpoint(d)


def test_reserved_state_key_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="may not use the key 'checksums'"):
        ck.save_training_checkpoint(tmp_path / "c", model=build_model(), state={"checksums": 1})
    assert not (tmp_path / "c").exists()


# -------------------------------------------------------------------- temporary folders of writers
def _tmp_name(pid: int, host: str | None = None) -> str:
    return f".ckpt.tmp-{pid}-{host or ck._host_tag()}-x1y2"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_live_writers_temp_folders_survive_and_dead_ones_are_swept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_self = tmp_path / _tmp_name(os.getpid())
        live_child = tmp_path / _tmp_name(sleeper.pid)
        other_host = tmp_path / _tmp_name(_dead_pid(), host="0badc0de")  # cannot be checked: kept while young
        dead = tmp_path / _tmp_name(_dead_pid())
        legacy_old, legacy_young = tmp_path / ".ckpt.tmp-abcd1234", tmp_path / ".ckpt.tmp-efgh5678"
        for d in (live_self, live_child, other_host, dead, legacy_old, legacy_young):
            d.mkdir()
            (d / "part.safetensors").write_bytes(b"half")
        os.utime(legacy_old, (0, 0))
        with ck.atomic_dir(tmp_path / "ckpt") as d:
            assert d.name.startswith(f".ckpt.tmp-{os.getpid()}-{ck._host_tag()}-")
            (d / "f.txt").write_text("x")
        assert (tmp_path / "ckpt" / "f.txt").read_text() == "x"
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"ckpt", live_self.name, live_child.name, other_host.name, legacy_young.name}
        assert (live_child / "part.safetensors").read_bytes() == b"half"
    finally:
        sleeper.kill()
        sleeper.wait()
    with ck.atomic_dir(tmp_path / "ckpt"):  # now that the child is gone, its folder is stale
        pass
    assert not live_child.exists() and live_self.exists()


def test_a_second_writer_does_not_break_the_first(tmp_path):
    target = tmp_path / "ckpt"
    with ck.atomic_dir(target) as first:
        (first / "f.txt").write_text("first")
        with ck.atomic_dir(target) as second:  # another writer of the same directory finishes meanwhile
            (second / "f.txt").write_text("second")
        assert (first / "f.txt").read_text() == "first"
    assert (target / "f.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
