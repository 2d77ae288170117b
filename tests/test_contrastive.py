"""The CLIP-style contrastive baseline: InfoNCE / SupCon by hand, masks, the temperature, M = 3, training, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.eval.retrieval import cross_modal_retrieval
from commonspace.losses.contrastive import LOG_SCALE_INIT, MAX_SCALE, contrastive_loss, info_nce, sup_con
from commonspace.models.base import create, create_for_data
from commonspace.models.contrastive import Contrastive
from commonspace.train import TrainConfig, Trainer
from commonspace.train.checkpoint import load_model, save_model

K = 5


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# ------------------------------------------------------------------------------------------- helpers
def unit(angles: list[float]) -> np.ndarray:
    """Rows of 2-d unit vectors at these angles."""
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def np_lse(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


A = unit([0.1, 1.3, 2.9])
B = unit([0.4, 1.0, -2.5])
T = math.log(5.0)  # a scale of 5: the softmaxes are far from one-hot, so the hand values test every term


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def rand_unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def views(n: int = 300, seed: int = 0, labels: bool = True) -> MultimodalDataset:
    """Two noisy linear views (8-d, 6-d) of a shared 4-d latent around K class centres; 2/3 train, 1/3 test."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % K
    latent = 2.0 * g.normal(size=(K, 4))[y] + 0.5 * g.normal(size=(n, 4))
    a = latent @ g.normal(size=(4, 8)) + 0.3 * g.normal(size=(n, 8))
    b = latent @ g.normal(size=(4, 6)) + 0.3 * g.normal(size=(n, 6))
    idx = g.permutation(n)
    return MultimodalDataset({"a": a.astype(np.float32), "b": b.astype(np.float32)}, labels=y if labels else None,
                             splits={"train": idx[: 2 * n // 3], "test": idx[2 * n // 3:]}, name="views")


def small(dims: dict | None = None, **kw) -> Contrastive:
    return create("contrastive", dims or {"a": 8, "b": 6}, init_seed=0, **{"dim": 16, **kw})


def batch_of(feats: dict[str, torch.Tensor], mask: torch.Tensor, labels: torch.Tensor | None = None) -> Batch:
    return Batch(feats, mask, tuple(feats), labels)


def mean_map(model: Contrastive, data: MultimodalDataset) -> float:
    ti = data.split("test")
    res = cross_modal_retrieval(model.encode_dataset(data, ti), data.labels[ti], data.mask[ti], list(data.modalities))
    return float(np.mean([r["map"] for r in res.values()]))


# ------------------------------------------------------------------------------------ loss by hand
def test_info_nce_matches_a_hand_computation() -> None:
    s = math.exp(T) * A @ B.T
    rows = np.mean([np_lse(s[i], 0) - s[i, i] for i in range(3)])      # a_i -> its b_i among all b
    cols = np.mean([np_lse(s[:, j], 0) - s[j, j] for j in range(3)])   # b_j -> its a_j among all a
    got = info_nce(t64(A), t64(B), torch.tensor(T, dtype=torch.float64))
    assert float(got) == pytest.approx(0.5 * (rows + cols), rel=1e-12)


@pytest.mark.parametrize("labels", [[0, 0, 1], [[1, 0], [1, 1], [0, 0]]], ids=["ids", "multilabel"])
def test_sup_con_matches_a_hand_computation(labels: list) -> None:
    y = np.asarray(labels)
    pos = (y[:, None] == y[None, :]) if y.ndim == 1 else (y @ y.T > 0)  # shares >= 1 label
    s = math.exp(T) * A @ B.T

    def direction(logits: np.ndarray, p: np.ndarray) -> float:
        per = [-np.mean([logits[i, j] - np_lse(logits[i], 0) for j in np.flatnonzero(p[i])])
               for i in range(3) if p[i].any()]  # anchors with no positive (the unlabelled row) are left out
        return float(np.mean(per))

    want = 0.5 * (direction(s, pos) + direction(s.T, pos.T))
    yt = torch.tensor(y, dtype=torch.bool) if y.ndim == 2 else torch.tensor(y)
    got = sup_con(t64(A), t64(B), yt, torch.tensor(T, dtype=torch.float64))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_sup_con_with_distinct_labels_is_info_nce() -> None:
    a, b = rand_unit(6, 3, 0), rand_unit(6, 3, 1)
    t = torch.tensor(1.5, dtype=torch.float64)
    assert torch.allclose(sup_con(a, b, torch.arange(6), t), info_nce(a, b, t), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("supervised", [False, True])
def test_rows_missing_a_modality_do_not_change_the_pair_loss(supervised: bool) -> None:
    a, b = rand_unit(8, 3, 0), rand_unit(8, 3, 1)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    t = torch.tensor(2.0, dtype=torch.float64)
    b_garbage = torch.where(valid[:, None], b, torch.full_like(b, 7.0))  # what a missing row holds must not matter
    if supervised:
        got, want = sup_con(a, b_garbage, y, t, valid), sup_con(a[valid], b[valid], y[valid], t)
    else:
        got, want = info_nce(a, b_garbage, t, valid), info_nce(a[valid], b[valid], t)
    assert torch.equal(got, want)


def test_model_loss_ignores_incomplete_rows() -> None:
    data = views(40)
    m = small()
    full = data.batch(torch.arange(12))
    mask = full.mask.clone()
    mask[[1, 4], 1] = False
    mask[7, 0] = False
    feats = dict(full.features)  # the features stay in the masked rows: the mask alone must decide
    keep = mask.all(1)
    sub = batch_of({k: v[keep] for k, v in feats.items()}, mask[keep], full.labels[keep])
    for use_labels in (False, True):
        m = small(use_labels=use_labels)
        assert torch.equal(m.loss(batch_of(feats, mask, full.labels))["total"], m.loss(sub)["total"])


def test_a_pair_with_fewer_than_two_rows_gives_zero_and_backward_works() -> None:
    a = rand_unit(4, 3, 0).requires_grad_()
    b = rand_unit(4, 3, 1).requires_grad_()
    t = torch.tensor(LOG_SCALE_INIT, dtype=torch.float64, requires_grad=True)
    one = torch.tensor([0, 0, 1, 0], dtype=torch.bool)
    for loss in (info_nce(a, b, t, one), sup_con(a, b, torch.zeros(4, dtype=torch.long), t, one)):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(t.grad, torch.zeros_like(t))
    total, terms = contrastive_loss({"a": a, "b": b}, {"a": one, "b": torch.ones(4, dtype=torch.bool)}, t)
    assert total.item() == 0.0 and terms == {}
    total.backward()


# ------------------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("supervised", [False, True])
def test_temperature_gradient_matches_finite_differences(supervised: bool) -> None:
    a, b = rand_unit(7, 4, 0), rand_unit(7, 4, 1)
    y = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)

    def f(t: torch.Tensor) -> torch.Tensor:
        return sup_con(a, b, y, t, valid) if supervised else info_nce(a, b, t, valid)

    t = torch.tensor(LOG_SCALE_INIT, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (t,), eps=1e-6, atol=1e-8)
    f(t).backward()
    assert abs(float(t.grad)) > 1e-4


def test_the_scale_is_clipped_at_100() -> None:
    a, b = rand_unit(5, 3, 0), rand_unit(5, 3, 1)
    t = torch.tensor(math.log(MAX_SCALE) + 0.5, dtype=torch.float64, requires_grad=True)
    loss = info_nce(a, b, t)
    assert loss.item() == pytest.approx(float(info_nce(a, b, torch.tensor(math.log(MAX_SCALE)).double())))
    loss.backward()
    assert float(t.grad) == 0.0
    m = small()
    with torch.no_grad():
        m.log_scale.fill_(6.0)
    m.train()
    out = m.loss(views(20).batch())
    assert m.log_scale.item() == pytest.approx(math.log(MAX_SCALE)) and float(out["scale"]) == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------- M = 3
def test_three_modalities_total_is_the_mean_of_the_pair_terms() -> None:
    z = {m: rand_unit(6, 3, s) for s, m in enumerate("abc")}
    t = torch.tensor(2.0, dtype=torch.float64)
    ones = torch.ones(6, dtype=torch.bool)
    pres = {"a": ones, "b": torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool),
            "c": torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool)}
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    for y in (None, torch.tensor([0, 1, 0, 1, 2, 2])):
        total, terms = contrastive_loss(z, pres, t, y)
        each = [info_nce(z[p], z[q], t, pres[p] & pres[q]) if y is None else
                sup_con(z[p], z[q], y, t, pres[p] & pres[q]) for p, q in pairs]
        assert list(terms) == pairs
        assert torch.allclose(total, torch.stack(each).mean(), rtol=1e-14, atol=0)
    # b and c share only row 2: that pair has no negative and leaves the mean
    pres["b"] = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    pres["c"] = torch.tensor([0, 0, 1, 1, 1, 1], dtype=torch.bool)
    total, terms = contrastive_loss(z, pres, t)
    assert list(terms) == [("a", "b"), ("a", "c")]
    want = 0.5 * (info_nce(z["a"], z["b"], t, pres["b"]) + info_nce(z["a"], z["c"], t, pres["c"]))
    assert torch.allclose(total, want, rtol=1e-14, atol=0)


# -------------------------------------------------------------------------------------------- model
def test_defaults_and_image_like_modalities() -> None:
    m = create("contrastive", {"img": (1, 4, 4), "txt": 5})
    c = m.config
    assert (c["dim"], c["hidden"], c["dropout"], c["use_labels"]) == (128, [], 0.0, False)
    assert (c["temperature"], c["learn_temperature"]) == (0.07, True)
    assert m.log_scale.item() == pytest.approx(LOG_SCALE_INIT)
    assert Contrastive.train_defaults == {"optimizer": "adam", "lr": 1e-3, "batch_size": 256}
    assert not Contrastive.supervised
    lin = [x for x in m.encoders["img"] if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(16, 128)]  # () = one linear map
    b = batch_of({"img": torch.randn(3, 1, 4, 4), "txt": torch.randn(3, 5)}, torch.ones(3, 2, dtype=torch.bool))
    z = m.encode(b)
    assert z["img"].shape == (3, 128) and torch.allclose(z["img"].norm(dim=1), torch.ones(3))
    assert torch.isfinite(m.loss(b)["total"])


def test_embed_is_the_normalised_mean_of_the_present_modalities() -> None:
    m = small(hidden=[12]).eval()
    data = views(8)
    full = data.batch(torch.arange(4))
    mask = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1]], dtype=torch.bool)
    feats = {k: v * mask[:, j:j + 1] for j, (k, v) in enumerate(full.features.items())}
    z_full = m.encode(full)
    e = m.embed(batch_of(feats, mask))
    assert torch.allclose(e[0], z_full["a"][0], atol=1e-6)  # one modality: its own normalised encoding
    assert torch.allclose(e[1], z_full["b"][1], atol=1e-6)
    assert torch.equal(e[2], torch.zeros(16))
    assert torch.allclose(e[3], F.normalize(z_full["a"][3] + z_full["b"][3], dim=0), atol=1e-6)


@pytest.mark.parametrize("use_labels", [False, True])
def test_training_lowers_the_loss_and_retrieves_across_modalities(use_labels: bool) -> None:
    data = views()
    m = small(hidden=[32], use_labels=use_labels)
    cfg = TrainConfig.for_model(m, epochs=8, batch_size=50, lr=5e-3, progress=False)
    trainer = Trainer(m, cfg)
    before_loss, before_map = trainer.evaluate(data, "train")["total"], mean_map(m, data)
    t0 = m.log_scale.item()
    history = trainer.fit(data, val=None)
    after_loss = trainer.evaluate(data, "train")["total"]
    after_map = mean_map(m, data)
    assert after_loss < 0.7 * before_loss and history[-1]["train"]["total"] < history[0]["train"]["total"]
    assert after_map > 0.6 and after_map > before_map + 0.2, (before_map, after_map)  # chance is about 1/K
    assert m.log_scale.item() != t0  # the temperature is learnt


def test_a_fixed_temperature_stays_put() -> None:
    data = views(60)
    m = small(learn_temperature=False, temperature=0.1)
    assert all(p is not m.log_scale for s in m.stages() for p in s.parameters)
    Trainer(m, TrainConfig.for_model(m, epochs=1, batch_size=30, progress=False)).fit(data, val=None)
    assert m.log_scale.item() == pytest.approx(math.log(10.0))


def test_checkpoint_round_trip_gives_identical_embeddings(tmp_path) -> None:
    data = views(60)
    m = small(hidden=[12], dropout=0.1, use_labels=True, temperature=0.2, learn_temperature=False)
    Trainer(m, TrainConfig.for_model(m, epochs=1, batch_size=30, progress=False)).fit(data, val=None)
    save_model(tmp_path / "model", m)
    back = load_model(tmp_path / "model").model
    assert isinstance(back, Contrastive) and back.config == m.config
    assert not back.log_scale.requires_grad and torch.equal(back.log_scale, m.log_scale)
    assert torch.equal(back.embed_dataset(data), m.embed_dataset(data))
    enc, enc_back = m.encode_dataset(data), back.encode_dataset(data)
    assert all(torch.equal(enc[k], enc_back[k]) for k in enc)


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("hp", [{"unknown": 1}, {"dim": 0}, {"hidden": [0]}, {"hidden": 5}, {"temperature": 0.0},
                                {"temperature": 0.005}, {"temperature": float("nan")}, {"dropout": 1.5},
                                {"dropout": 0.2}, {"use_labels": "yes"}, {"learn_temperature": 1}])
def test_bad_hyper_parameters_are_a_data_error(hp: dict) -> None:
    with pytest.raises(DataError) as info:
        create("contrastive", {"a": 3, "b": 2}, **hp)
    assert "\n" not in str(info.value)


def test_one_modality_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least 2"):
        create("contrastive", {"a": 3})


def test_use_labels_refuses_unlabelled_data() -> None:
    data = views(40, labels=False)
    m = create_for_data("contrastive", data, use_labels=True)  # the ClassVar stays False: creating is fine
    with pytest.raises(DataError, match="batch.labels is None"):
        m.loss(data.batch())
    with pytest.raises(DataError, match="use_labels=True needs class labels"):
        Trainer(m, TrainConfig(epochs=1, progress=False)).fit(data, val=None)
    plain = create_for_data("contrastive", data)
    assert torch.isfinite(plain.loss(data.batch())["total"])
