"""Trainer behaviour on tiny toy models (helpers_train): config, stages, early stopping, data checks, logs."""

from __future__ import annotations

import json

import pytest
import torch

from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel
from commonspace.train import TrainConfig, Trainer
from commonspace.train.seed import shuffle_generator
from helpers_train import ToyComplete, ToyLinear, ToySubsteps, build_model, final_state, make_data, run_training


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.01, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------ config
def test_config_round_trip_and_defaults(tmp_path):
    cfg = TrainConfig(out_dir=tmp_path, optimizer="SGD", patience=3)
    d = cfg.to_dict()
    json.dumps(d)
    assert d["out_dir"] == str(tmp_path) and d["optimizer"] == "sgd"
    assert TrainConfig.from_dict(d) == cfg
    assert cfg.momentum == 0.9 and cfg.nesterov is True
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(optimizer="sgd", momentum=0.0)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=-1)


def test_for_model_merges_defaults_then_overrides():
    model = build_model()
    cfg = TrainConfig.for_model(model, lr=0.5)
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (3, 16, 0.5)  # epochs/batch from train_defaults
    assert TrainConfig.for_model(ToyLinear).epochs == 3
    assert TrainConfig.resolved_monitor(cfg, True) == ("val_metric", "max")
    assert TrainConfig.resolved_monitor(cfg, False) == ("val_loss", "min")


def test_monitor_val_metric_needs_callable():
    with pytest.raises(ValueError, match="val_metric callable"):
        Trainer(build_model(), _cfg(monitor="val_metric"))


# ------------------------------------------------------------------------------------------ fitting
def test_fit_history_log_and_final_model(tmp_path):
    model = build_model()
    before = final_state(model)
    hist = Trainer(model, _cfg(out_dir=tmp_path)).fit(make_data())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for h in hist:
        assert set(h["train"]) == {"total", "pred", "l2"}
        assert h["val_loss"] is not None and h["samples_per_s"] > 0 and h["seconds"] > 0
        assert h["stage"] == "main"
    assert hist[-1]["step"] == 3 * 4  # 64 training samples / 16
    assert hist[-1]["train"]["total"] < hist[0]["train"]["total"]
    assert any(not torch.equal(before[k], v) for k, v in final_state(model).items())
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
    assert all(p.requires_grad for p in model.parameters())  # flags restored after training


def test_seeded_runs_are_identical_and_sgd_works():
    _, h1 = run_training(None, epochs=2, dropout=0.3)
    m1 = final_state(_)
    m2, h2 = run_training(None, epochs=2, dropout=0.3)
    assert all(torch.equal(m1[k], v) for k, v in final_state(m2).items())
    assert [h["train"] for h in h1] == [h["train"] for h in h2]
    m3, h3 = run_training(None, epochs=2, optimizer="sgd")
    assert h3[-1]["train"]["total"] < h3[0]["train"]["total"] * 1.5


def test_shuffle_depends_only_on_seed_stage_epoch():
    a = torch.randperm(50, generator=shuffle_generator(0, 0, 1))
    torch.rand(100)  # global RNG use must not matter
    assert torch.equal(a, torch.randperm(50, generator=shuffle_generator(0, 0, 1)))
    assert not torch.equal(a, torch.randperm(50, generator=shuffle_generator(0, 0, 2)))
    assert not torch.equal(a, torch.randperm(50, generator=shuffle_generator(1, 0, 1)))


def test_without_val_split_validation_is_skipped():
    data = make_data(val=0)
    hist = Trainer(build_model(), _cfg(epochs=2)).fit(data)
    assert all(h["val_loss"] is None for h in hist)
    hist = Trainer(build_model(), _cfg(epochs=1)).fit(make_data(), val=None)
    assert hist[0]["val_loss"] is None


def test_patience_without_validation_errors_before_training():
    model = build_model()
    before = final_state(model)
    with pytest.raises(DataError, match="patience"):
        Trainer(model, _cfg(patience=2)).fit(make_data(val=0))
    assert all(torch.equal(before[k], v) for k, v in final_state(model).items())


def test_max_steps_and_grad_clip():
    hist = Trainer(build_model(), _cfg(epochs=2, max_steps_per_epoch=2, grad_clip=0.1)).fit(make_data())
    assert [h["step"] for h in hist] == [2, 4]


def test_non_finite_loss_is_reported():
    data = make_data()
    data.features["b"][0, 0] = 1e30  # squares overflow to inf
    with pytest.raises(FloatingPointError, match="lower"):
        Trainer(build_model(), _cfg(epochs=1)).fit(data)


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            Trainer(build_model(), _cfg(out_dir=tmp_path, tensorboard=True)).fit(make_data())
    else:
        Trainer(build_model(), _cfg(epochs=1, out_dir=tmp_path, tensorboard=True)).fit(make_data())
        assert any((tmp_path / "tensorboard").iterdir())


# --------------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_and_restores_best():
    scores = iter([5.0, 4.0, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0])
    snapshots = []

    def metric(model, data, idx):
        assert not model.training
        assert idx.numel() == 32
        return next(scores)

    cfg = _cfg(epochs=8, patience=2, mode="min")
    model = build_model()
    trainer = Trainer(model, cfg, val_metric=metric, callbacks=[lambda t, r: snapshots.append(final_state(t.model))])
    hist = trainer.fit(make_data())
    assert len(hist) == 5  # best at 3, two worse epochs, stop
    assert [h["improved"] for h in hist] == [True, True, True, False, False]
    assert hist[-1]["val_metric"] == 4.0
    # the callback after the last epoch sees the restored best (epoch 3) weights
    best = snapshots[2]
    assert all(torch.equal(best[k], v) for k, v in final_state(model).items())
    assert not all(torch.equal(snapshots[3][k], v) for k, v in best.items())


def test_restore_best_false_keeps_last_weights():
    scores = iter([1.0, 2.0, 3.0])
    snapshots = []
    model = build_model()
    Trainer(model, _cfg(epochs=3, restore_best=False, mode="min"), val_metric=lambda m, d, i: next(scores),
            callbacks=[lambda t, r: snapshots.append(final_state(t.model))]).fit(make_data())
    assert all(torch.equal(snapshots[-1][k], v) for k, v in final_state(model).items())


# ------------------------------------------------------------------------------------------ stages
def test_staged_training_freezes_params_outside_the_stage():
    model = build_model(staged=True)
    states = [final_state(model)]
    seen_stage = []

    def cb(trainer, record):
        states.append(final_state(trainer.model))
        seen_stage.append((record["stage"], trainer.model.stage, record["lr"]))

    hist = Trainer(model, _cfg(epochs=3), callbacks=[cb]).fit(make_data())
    assert [h["stage"] for h in hist] == ["enc", "enc", "dec", "dec", "dec"]  # stage epochs=2, then config's 3
    assert seen_stage[0] == ("enc", "enc", 0.01) and seen_stage[-1] == ("dec", "dec", 0.05)
    for prev, cur, rec in zip(states[:-1], states[1:], hist, strict=True):
        frozen = "dec" if rec["stage"] == "enc" else "enc"
        moved = "enc" if frozen == "dec" else "dec"
        assert all(torch.equal(prev[k], cur[k]) for k in prev if k.startswith(frozen))
        assert any(not torch.equal(prev[k], cur[k]) for k in prev if k.startswith(moved))
    assert model.stage is None
    assert all(p.requires_grad for p in model.parameters())


# -------------------------------------------------------------------------------------- data checks
def test_requires_complete_filters_samples():
    data = make_data(missing=20)
    ToyComplete.seen.clear()
    torch.manual_seed(0)
    model = ToyComplete({"a": 6, "b": 4})
    Trainer(model, _cfg(epochs=1)).fit(data)
    assert ToyComplete.seen == set(range(20, 64))


def test_requires_complete_with_no_complete_sample_errors():
    data = make_data(missing=96, val=32)
    with pytest.raises(DataError, match="none of the 64 samples"):
        Trainer(ToyComplete({"a": 6, "b": 4}), _cfg()).fit(data)


def test_bad_data_errors_before_training():
    model = build_model()
    with pytest.raises(DataError, match="lacks modalities"):
        Trainer(model, _cfg()).fit(MultimodalDataset({"a": torch.zeros(4, 6)}, splits={"train": [0, 1]}))
    with pytest.raises(DataError, match="no split .train2."):
        Trainer(model, _cfg()).fit(make_data(), train="train2")
    with pytest.raises(DataError, match="expects"):
        Trainer(model, _cfg()).fit(MultimodalDataset({"a": torch.zeros(4, 5), "b": torch.zeros(4, 4)},
                                                     splits={"train": [0, 1]}))


class _Closed(MultimodalModel):
    name = "_closed_form_test"
    trainable = False

    def __init__(self, dims):
        super().__init__(dims)
        self.register_buffer("mean", torch.zeros(self.dims["a"][0]))

    def fit_closed_form(self, data, split="train"):
        self.mean.copy_(data.features["a"][data.split(split)].mean(0))


def test_closed_form_models_skip_gradient_training(tmp_path, monkeypatch):
    from commonspace.models import base

    monkeypatch.setitem(base._REGISTRY, "_closed_form_test", _Closed)
    model = _Closed({"a": 6, "b": 4})
    data = make_data()
    hist = Trainer(model, _cfg(out_dir=tmp_path), val_metric=lambda m, d, i: 0.5).fit(data)
    assert hist[0]["stage"] == "closed_form" and hist[0]["val_metric"] == 0.5
    assert torch.allclose(model.mean, data.features["a"][:64].mean(0))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_callback_can_end_a_stage():
    def cb(trainer, record):
        if record["stage"] == "enc":
            trainer.stop_stage = True

    hist = Trainer(build_model(staged=True), _cfg(epochs=2), callbacks=[cb]).fit(make_data())
    assert [h["stage"] for h in hist] == ["enc", "dec", "dec"]


def test_shard_weights_average_to_one():
    from commonspace.train.distributed import shard

    idx = torch.arange(15)
    parts = [shard(idx, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)
    assert [p.numel() for p, _ in parts] == [7, 8]
    assert sum(w for _, w in parts) / 2 == pytest.approx(1.0)
    assert shard(idx, 0, 1) == (idx, 1.0)


class _Alternating(ToySubsteps):
    """Two loss terms on different parameters, stepped one after the other per batch."""

    train_defaults = {"epochs": 1, "batch_size": 8, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0, "nesterov": False}

    def __init__(self, dims) -> None:
        super().__init__(dims)
        self.u = torch.nn.Parameter(torch.tensor(1.0))
        self.v = torch.nn.Parameter(torch.tensor(0.0))

    def loss(self, batch):
        a = (self.u - 3.0) ** 2  # reaches u only
        b = (self.v - self.u.detach()) ** 2  # reaches v only, and reads the u the first step produced
        return {"total": a + b, "a": a, "b": b}


def test_substeps_step_each_term_on_a_fresh_forward() -> None:
    import torch as _t

    from commonspace.data.dataset import MultimodalDataset as _D
    from commonspace.train import TrainConfig as _C
    from commonspace.train import Trainer as _T

    data = _D({"x": _t.zeros(8, 1)}, splits={"train": _t.arange(8)})
    m = _Alternating({"x": 1})
    _T(m, _C.for_model(m, progress=False)).fit(data, val=None, resume=False)
    # one batch: u <- u - 0.1 * 2 (u - 3) = 1.4, then v <- v - 0.1 * 2 (v - 1.4) = 0.28
    assert float(m.u.detach()) == pytest.approx(1.4)
    assert float(m.v.detach()) == pytest.approx(0.28)
