"""Each Algorithm-1 substep has its own optimizer state: hand-computed updates, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from commonspace.data.dataset import MultimodalDataset
from commonspace.models import create
from commonspace.models.base import MultimodalModel
from commonspace.train import CheckpointError, TrainConfig, Trainer
from commonspace.train import checkpoint as ck
from commonspace.train.checkpoint import state_for_saving
from helpers_train import ToySubsteps, build_model, final_state, fit_or_interrupt, make_data

W0, U0 = 1.0, 0.0


class TwoSteps(ToySubsteps):
    """Substep "a" pulls w to 3 and u to 2, substep "b" pulls w to -1: w is shared, u belongs to "a" alone."""

    name = "_toy_two_steps"  # not registered: the trainer never rebuilds it from the registry
    train_defaults = {"epochs": 1, "batch_size": 8, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
                      "nesterov": False}

    def __init__(self, dims) -> None:
        super().__init__(dims)
        self.w = torch.nn.Parameter(torch.tensor(W0))
        self.u = torch.nn.Parameter(torch.tensor(U0))

    def loss(self, batch):
        a = (self.w - 3.0) ** 2 + (self.u - 2.0) ** 2
        b = (self.w + 1.0) ** 2
        return {"total": a + b, "a": a, "b": b}


def _grads(term: str, w: float, u: float) -> dict[str, float]:
    return {"w": 2 * (w - 3), "u": 2 * (u - 2)} if term == "a" else {"w": 2 * (w + 1)}


def reference(batches: int, optimizer: str = "sgd", lr: float = 0.1, nesterov: bool = False,
              shared: bool = False, fresh_b_at: int | None = None) -> tuple[float, float]:
    """(w, u) after ``batches`` batches of the two substeps, in float64 by the textbook update rules.

    Each substep keeps its own momentum buffer / Adam moments (``shared=True``: one state for both, the old
    trainer); a parameter without a gradient in a step is skipped, as torch does. ``fresh_b_at=k`` drops
    substep "b"'s state before batch k (a resume that could restore only "a").
    """
    mu, b1, b2, eps = 0.9, 0.9, 0.999, 1e-8
    p = {"w": W0, "u": U0}
    states: dict[str, dict[str, dict[str, float]]] = {"a": {}, "b": {}}
    for k in range(batches):
        if fresh_b_at == k:
            states["b"] = {}
        for term in ("a", "b"):
            st = states["a" if shared else term]
            for name, g in _grads(term, p["w"], p["u"]).items():
                s = st.setdefault(name, {})
                if optimizer == "sgd":
                    s["buf"] = mu * s["buf"] + g if "buf" in s else g
                    p[name] -= lr * (g + mu * s["buf"] if nesterov else s["buf"])
                else:
                    s["t"] = s.get("t", 0) + 1
                    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
                    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
                    mhat, vhat = s["m"] / (1 - b1 ** s["t"]), s["v"] / (1 - b2 ** s["t"])
                    p[name] -= lr * mhat / (math.sqrt(vhat) + eps)
    return p["w"], p["u"]


def _data(n: int = 8) -> MultimodalDataset:
    return MultimodalDataset({"x": torch.zeros(n, 1)}, splits={"train": torch.arange(n)})


def _fit(out: Path | None = None, stop_after: int | None = None, resume: bool = True, **cfg) -> TwoSteps:
    model = TwoSteps({"x": 1})
    config = TrainConfig.for_model(model, progress=False, out_dir=out, **cfg)

    def stop(trainer: Trainer, record: dict) -> None:
        if stop_after is not None and len(trainer.history) == stop_after:
            raise KeyboardInterrupt  # like a kill right after that epoch's checkpoint

    Trainer(model, config, callbacks=[stop]).fit(_data(), val=None, resume=resume)
    return model


# ------------------------------------------------------------------------------ the update rule
def test_one_batch_matches_two_independent_momentum_buffers() -> None:
    m = _fit()
    # "a": buf_a = g_a = 2 (1 - 3) = -4, w = 1 - 0.1 (-4) = 1.4 (u: buf = -4, u = 0.4)
    # "b": its own fresh buffer: buf_b = g_b = 2 (1.4 + 1) = 4.8, w = 1.4 - 0.48 = 0.92.
    # One shared optimizer would have used 0.9 (-4) + 4.8 = 1.2 and ended at w = 1.28.
    assert float(m.w.detach()) == pytest.approx(0.92, rel=1e-6)
    assert float(m.u.detach()) == pytest.approx(0.4, rel=1e-6)
    assert reference(1) == pytest.approx((0.92, 0.4)) and reference(1, shared=True)[0] == pytest.approx(1.28)


@pytest.mark.parametrize("optimizer,nesterov", [("sgd", False), ("sgd", True), ("adam", False)])
def test_several_batches_follow_the_per_substep_update_rule(optimizer: str, nesterov: bool) -> None:
    m = _fit(epochs=3, batch_size=4, optimizer=optimizer, nesterov=nesterov, lr=0.1)  # 6 batches
    got = (float(m.w.detach()), float(m.u.detach()))
    assert got == pytest.approx(reference(6, optimizer, nesterov=nesterov), rel=1e-5)
    assert got[0] != pytest.approx(reference(6, optimizer, nesterov=nesterov, shared=True)[0], rel=1e-3)


def test_trainer_holds_one_optimizer_per_substep_and_logs_the_first_lr() -> None:
    seen: list[tuple[list[str], bool, bool]] = []

    def look(trainer: Trainer, record: dict) -> None:
        opts = trainer.optimizers
        seen.append((list(opts), trainer.optimizer is opts["a"], opts["a"] is not opts["b"]))

    model = TwoSteps({"x": 1})
    hist = Trainer(model, TrainConfig.for_model(model, progress=False, lr=0.05),
                   callbacks=[look]).fit(_data(), val=None, resume=False)
    assert seen == [(["a", "b"], True, True)]
    assert hist[0]["lr"] == 0.05


# ------------------------------------------------------------------------------ checkpoints and resume
def test_resume_mid_stage_restores_every_substep_optimizer(tmp_path: Path) -> None:
    cfg = {"epochs": 3, "batch_size": 4}
    whole = _fit(tmp_path / "whole", **cfg)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", stop_after=1, **cfg)
    ckpt = ck.read_training_checkpoint(tmp_path / "cut" / "checkpoint")
    assert ckpt.state["epoch"] == 1 and list(ckpt.optimizers) == ["a", "b"]
    assert ckpt.optimizer is ckpt.optimizers["a"]
    # "b" never touches u: its state holds w's buffer only (index 0 of the stage's [w, u])
    assert sorted(ckpt.optimizers["a"]["state"]) == [0, 1] and sorted(ckpt.optimizers["b"]["state"]) == [0]
    flat = json.loads((tmp_path / "cut" / "checkpoint" / "optimizer.json").read_text())
    assert [name for name, _ in flat[ck.NAMED_OPTIMIZERS]] == ["a", "b"]
    resumed = _fit(tmp_path / "cut", **cfg)
    assert torch.equal(resumed.w, whole.w) and torch.equal(resumed.u, whole.u)
    assert (float(resumed.w.detach()), float(resumed.u.detach())) == pytest.approx(reference(6), rel=1e-5)


def test_single_state_checkpoint_restores_the_first_substep_and_warns(tmp_path: Path, caplog) -> None:
    """A checkpoint with one unnamed optimizer state (written when the substeps shared one optimizer)."""
    cfg = {"epochs": 3, "batch_size": 4}
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, stop_after=1, **cfg)
    d = tmp_path / "checkpoint"
    ckpt = ck.read_training_checkpoint(d)
    m = TwoSteps({"x": 1})
    ck.apply_state(m, ckpt.weights)
    single = torch.optim.SGD([m.w, m.u], lr=0.1, momentum=0.9)
    single.load_state_dict(ckpt.optimizers["a"])
    ck.save_training_checkpoint(d, model=m, state=ckpt.state, optimizer=single, rng=ckpt.rng,
                                meta=ckpt.header["meta"])
    again = ck.read_training_checkpoint(d)
    assert again.optimizers is None and sorted(again.optimizer["state"]) == [0, 1]
    with caplog.at_level(logging.WARNING, logger="commonspace.train"):
        resumed = _fit(tmp_path, **cfg)
    assert "restored it for 'a', the optimizers of ['b'] start fresh" in caplog.text
    # batches 0-1 before the cut, then "b" restarts with no momentum at batch 2
    assert (float(resumed.w.detach()), float(resumed.u.detach())) == pytest.approx(reference(6, fresh_b_at=2), rel=1e-5)
    assert float(resumed.w.detach()) != pytest.approx(reference(6)[0], rel=1e-3)


def test_named_states_round_trip_and_one_optimizer_keeps_the_single_layout(tmp_path: Path) -> None:
    m = TwoSteps({"x": 1})
    opts = {"a": torch.optim.Adam([m.w, m.u], lr=0.1), "b": torch.optim.Adam([m.w, m.u], lr=0.1)}
    for term, opt in opts.items():
        opt.zero_grad(set_to_none=True)
        m.loss(None)[term].backward()
        opt.step()
    state = {"stage_index": 0, "epoch": 1, "global_step": 1, "history": [], "run": {}}
    back = ck.read_training_checkpoint(ck.save_training_checkpoint(tmp_path / "two", model=m, state=state,
                                                                   optimizer=opts))
    for name, opt in opts.items():
        want = opt.state_dict()
        assert back.optimizers[name]["param_groups"] == want["param_groups"]
        assert back.optimizers[name]["state"].keys() == want["state"].keys()
        for i, s in want["state"].items():
            assert all(torch.equal(back.optimizers[name]["state"][i][k], v) for k, v in s.items())
    # a mapping of one optimizer writes exactly the files of that optimizer passed alone
    ck.save_training_checkpoint(tmp_path / "one", model=m, state=state, optimizer={"a": opts["a"]})
    ck.save_training_checkpoint(tmp_path / "plain", model=m, state=state, optimizer=opts["a"])
    for f in ("optimizer.json", "optimizer.safetensors"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "plain" / f).read_bytes()
    assert ck.read_training_checkpoint(tmp_path / "one").optimizers is None
    with pytest.raises(CheckpointError, match="empty mapping"):
        ck.save_training_checkpoint(tmp_path / "none", model=m, state=state, optimizer={})


def test_damaged_named_optimizer_json_is_an_error_naming_it(tmp_path: Path) -> None:
    m = TwoSteps({"x": 1})
    opts = {"a": torch.optim.SGD([m.w, m.u], lr=0.1), "b": torch.optim.SGD([m.w, m.u], lr=0.1)}
    state = {"stage_index": 0, "epoch": 1, "global_step": 1, "history": [], "run": {}}
    d = ck.save_training_checkpoint(tmp_path / "c", model=m, state=state, optimizer=opts)
    trainer_json = json.loads((d / "trainer.json").read_text())
    for bad in ({ck.NAMED_OPTIMIZERS: []}, {ck.NAMED_OPTIMIZERS: [["a", {}], ["a", {}]]},
                {ck.NAMED_OPTIMIZERS: [["a", 3], ["b", {}]]}):
        (d / "optimizer.json").write_text(json.dumps(bad))
        # keep the checksum consistent, so the structure check itself is what fails
        trainer_json[ck.CHECKSUMS]["optimizer.json"] = ck._sha256(d / "optimizer.json")
        (d / "trainer.json").write_text(json.dumps(trainer_json))
        with pytest.raises(CheckpointError, match=r"optimizer\.json is damaged"):
            ck.read_training_checkpoint(d)


# ------------------------------------------------------------------------------ SSL models, no substeps
def _paired(n: int = 64) -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    z = torch.randint(4, (n,), generator=g)
    x = (torch.rand(4, 12, generator=g)[z] + 0.15 * torch.randn(n, 12, generator=g)).clamp(0, 1)
    y = (torch.rand(4, 10, generator=g)[z] + 0.15 * torch.randn(n, 10, generator=g)).clamp(0, 1)
    return MultimodalDataset({"a": x, "b": y}, splits={"train": torch.arange(n)}, name="paired")


@pytest.mark.parametrize("name,hp", [("mrbm", {"hidden": 16}),
                                     ("mdae", {"layers_x": (10,), "layers_y": (9,), "shared": 8})])
def test_ssl_model_resumes_bit_for_bit_with_substeps(tmp_path: Path, name: str, hp: dict) -> None:
    data = _paired()

    def run(out: Path, stop: bool) -> MultimodalModel | None:
        m = create(name, {"a": 12, "b": 10}, init_seed=0, sim="ce_xy", **hp)
        cfg = TrainConfig.for_model(m, epochs=3, seed=0, progress=False, batch_size=16, out_dir=out)
        return fit_or_interrupt(m, cfg, data, stop)

    whole = run(tmp_path / "whole", False)
    assert run(tmp_path / "cut", True) is None
    main = "recon" if name == "mdae" else "cd"
    assert list(ck.read_training_checkpoint(tmp_path / "cut" / "checkpoint").optimizers) == [main, "sim"]
    resumed = run(tmp_path / "cut", False)
    a, b = state_for_saving(whole)[0], state_for_saving(resumed)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_without_substeps_one_optimizer_and_the_single_state_layout(tmp_path: Path) -> None:
    def go(out: Path, stop: bool) -> tuple[torch.nn.Module, list[list[str]]]:
        model = build_model(dropout=0.2)
        names: list[list[str]] = []

        def cb(trainer: Trainer, record: dict) -> None:
            names.append(list(trainer.optimizers))
            if stop and record["epoch"] == 1:
                raise KeyboardInterrupt

        cfg = TrainConfig.for_model(model, epochs=3, out_dir=out, progress=False, optimizer="sgd")
        try:
            Trainer(model, cfg, callbacks=[cb]).fit(make_data())
        except KeyboardInterrupt:
            pass
        return model, names

    _, names = go(tmp_path / "cut", True)
    assert names == [["total"]]
    ckpt = ck.read_training_checkpoint(tmp_path / "cut" / "checkpoint")
    # one unnamed state: optimizer.json as it was before per-substep optimizers
    assert ckpt.optimizers is None and ckpt.optimizer["state"]
    assert "__dict__" in json.loads((tmp_path / "cut" / "checkpoint" / "optimizer.json").read_text())
    resumed, _ = go(tmp_path / "cut", False)
    whole, _ = go(tmp_path / "whole", False)
    assert all(torch.equal(v, final_state(whole)[k]) for k, v in final_state(resumed).items())
