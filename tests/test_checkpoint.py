"""Checkpoints: safetensors + JSON round trips, tied weights, clear errors, no pickle, atomic writes."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from commonspace.data.dataset import Batch, Standardizer
from commonspace.train import CheckpointError, load_model, load_weights, save_model
from commonspace.train import checkpoint as ck
from helpers_train import ToyTied, build_model, make_data


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_round_trip_gives_equal_outputs(tmp_path, no_pickle):
    data = make_data()
    model = build_model(dropout=0.1)
    std = Standardizer().fit(data)
    save_model(tmp_path / "m", model, standardizer=std, meta={"note": "hi", "n": 3})
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header["model"] == "_toy_linear" and header["config"]["dims"] == {"a": [6], "b": [4]}
    assert "commonspace_version" in header
    loaded = load_model(tmp_path / "m")
    assert type(loaded.model) is type(model) and loaded.meta == {"note": "hi", "n": 3}
    assert loaded.model.config == model.config
    batch = data.batch(torch.arange(10))
    model.eval()
    loaded.model.eval()
    assert torch.equal(model.embed(batch), loaded.model.embed(batch))
    for k in std.mean:
        assert torch.equal(std.mean[k], loaded.standardizer.mean[k])
        assert torch.equal(std.std[k], loaded.standardizer.std[k])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind


def test_tied_weights_stay_one_parameter(tmp_path, no_pickle):
    torch.manual_seed(0)
    model = ToyTied({"x": 5}, hidden=3)
    assert set(model.state_dict()) == {"a.weight", "b_weight_source"}
    save_model(tmp_path, model)
    loaded = load_model(tmp_path).model
    assert loaded.a.weight is loaded.b_weight_source
    assert len(list(loaded.parameters())) == 1
    assert torch.equal(loaded.a.weight, model.a.weight)
    with torch.no_grad():
        loaded.a.weight[0, 0] = 123.0
    assert loaded.b_weight_source[0, 0] == 123.0
    batch = Batch({"x": torch.randn(4, 5)}, torch.ones(4, 1, dtype=torch.bool), ("x",))
    assert torch.equal(model.loss(batch)["total"], load_model(tmp_path).model.loss(batch)["total"])


def test_trained_out_dir_loads_directly(tmp_path, no_pickle):
    from helpers_train import run_training

    model, _ = run_training(tmp_path, epochs=1)
    loaded = load_model(tmp_path)  # resolves out_dir/model
    assert loaded.meta["train_config"]["epochs"] == 1
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_missing_files_and_unknown_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    save_model(tmp_path / "m", build_model())
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "u", build_model())
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    cfg["model"] = "no_such_model"
    (tmp_path / "u" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model 'no_such_model'"):
        load_model(tmp_path / "u")


def test_wrong_dims_errors(tmp_path):
    save_model(tmp_path / "m", build_model())
    # config and weights disagree
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["config"]["dims"]["a"] = [9]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'enc.weight' is \(8, 6\) in the checkpoint .* but \(8, 9\)"):
        load_model(tmp_path / "m")
    # loading into a model built for other dims
    save_model(tmp_path / "ok", build_model())
    from helpers_train import ToyLinear

    other = ToyLinear({"a": 128, "b": 4})
    with pytest.raises(CheckpointError, match="checkpoint has modality 'a' with 6 features but the model expects 128"):
        load_weights(other, tmp_path / "ok")
    same = build_model(seed=1)
    load_weights(same, tmp_path / "ok")
    assert torch.equal(same.enc.weight, build_model(seed=0).enc.weight)


def test_unserialisable_config_is_rejected(tmp_path):
    model = build_model()
    model.config["bad"] = object()
    with pytest.raises(CheckpointError, match="JSON"):
        save_model(tmp_path / "m", model)
    assert not (tmp_path / "m").exists()


def test_optimizer_state_flattening_round_trip():
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(make_data().batch(torch.arange(8)))["total"].backward()
    opt.step()
    tensors = {}
    flat = ck.flatten_state(opt.state_dict(), tensors)
    back = ck.unflatten_state(json.loads(json.dumps(flat)), tensors)
    opt2 = torch.optim.Adam(model.parameters(), lr=0.5)
    opt2.load_state_dict(back)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    with pytest.raises(CheckpointError, match="without pickle"):
        ck.flatten_state({"x": object()}, {})


def test_atomic_dir_keeps_last_complete_copy(tmp_path):
    target = tmp_path / "ckpt"
    with ck.atomic_dir(target) as d:
        (d / "f.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with ck.atomic_dir(target) as d:
            (d / "f.txt").write_text("tw")  # a writer that dies half-way
            raise RuntimeError("killed")
    assert (target / "f.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    # a kill between the two renames leaves only ckpt.old, which is found and later cleaned up
    target.rename(tmp_path / "ckpt.old")
    assert ck.find_checkpoint(target) == tmp_path / "ckpt.old"
    with ck.atomic_dir(target) as d:
        (d / "f.txt").write_text("three")
    assert ck.find_checkpoint(target) == target and (target / "f.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # a stale temp dir from a killed writer is removed by the next write (a legacy name without pid: by age)
    (tmp_path / ".ckpt.tmp-dead").mkdir()
    os.utime(tmp_path / ".ckpt.tmp-dead", (0, 0))
    with ck.atomic_dir(target) as d:
        (d / "f.txt").write_text("four")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_training_checkpoint_survives_a_crash_while_writing(tmp_path, monkeypatch):
    from helpers_train import run_training

    run_training(tmp_path, epochs=2)
    before = ck.read_training_checkpoint(tmp_path / "checkpoint")
    real = ck._write_json

    def crash(path, obj):
        if path.name == "trainer.json":
            raise KeyboardInterrupt  # killed just before the last file
        real(path, obj)

    monkeypatch.setattr(ck, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path, epochs=3, resume=False)
    monkeypatch.setattr(ck, "_write_json", real)
    after = ck.read_training_checkpoint(tmp_path / "checkpoint")
    assert after.state == before.state
    assert all(torch.equal(after.weights[k], v) for k, v in before.weights.items())
