"""Baselines of the BiDNN paper: AE #1, AE #2, raw features, linear combination, linear CCA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import available_models, create, model_class
from commonspace.models.raw import choose_weight, linear_combination_scores

DIMS = {"a": 6, "b": 5}
MASK4 = torch.tensor([[True, True], [True, False], [False, True], [False, False]])


def batch(n: int = 8, seed: int = 0, mask: torch.Tensor | None = None, garbage: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)
    if mask is None:
        mask = torch.ones(n, 2, dtype=torch.bool)
    if not garbage:  # honest zeros where missing; with garbage=True the masked rows keep their values
        x1, x2 = x1 * mask[:, :1], x2 * mask[:, 1:]
    return Batch({"a": x1, "b": x2}, mask, ("a", "b"))


def two_view(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, 6)) + rng.normal(size=(n, 6))
    y = z @ rng.normal(size=(2, 5)) + 0.8 * rng.normal(size=(n, 5))
    return x, y


# ----------------------------------------------------------------- registry / config
@pytest.mark.parametrize("name,hp", [
    ("bidnn", {"hidden": 7, "central": 3}),
    ("ae_concat", {"hidden": 7, "central": 3, "output_activation": "tanh"}),
    ("ae_split", {"hidden": 7, "central": 3, "p_drop": 0.25}),
    ("cca", {"n_components": 2, "reg": 0.01, "scale_by_corr": True}),
    ("cca", {}),
    ("raw", {}),
])
def test_config_rebuild(name, hp):
    assert name in available_models()
    m = create(name, DIMS, **hp)
    json.dumps(m.config)
    clone = model_class(name)(**m.config)
    assert clone.config == m.config
    sd, sd2 = m.state_dict(), clone.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape and sd[k].dtype == sd2[k].dtype for k in sd)


# ------------------------------------------------------------------------- AE #1
def test_ae_concat_shapes_mask_and_encode():
    torch.manual_seed(0)
    m = create("ae_concat", DIMS, hidden=8, central=3)
    m.eval()
    assert m.requires_complete and m.train_defaults["optimizer"] == "adam"
    assert m.config["hidden"] == 8 and create("ae_concat", DIMS).config["central"] == 100
    clean = batch(4, mask=MASK4)
    dirty = batch(4, mask=MASK4, garbage=True)
    e = m.embed(dirty)
    assert e.shape == (4, 3)
    torch.testing.assert_close(e, m.embed(clean))
    # central layer of [x1, 0] / [0, x2]
    full = batch(4)
    enc = m.encode(full)
    torch.testing.assert_close(enc["a"], m.embed(full.only(["a"])))
    torch.testing.assert_close(enc["b"], m.embed(full.only(["b"])))
    assert m.translate(full, "b").shape == (4, 5)
    out = m.loss(full)
    x = torch.cat([full.features["a"], full.features["b"]], 1)
    recon = m.decoder(m.encoder(x))
    torch.testing.assert_close(out["total"], torch.mean((recon - x) ** 2))
    torch.testing.assert_close(out["total"], (6 * out["recon_a"] + 5 * out["recon_b"]) / 11)


def test_ae_concat_learns():
    torch.manual_seed(0)
    x, y = two_view(512)
    full = Batch({"a": torch.tensor(x, dtype=torch.float32), "b": torch.tensor(y, dtype=torch.float32)},
                 torch.ones(512, 2, dtype=torch.bool), ("a", "b"))
    m = create("ae_concat", DIMS, hidden=32, central=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = m.loss(full)["total"].item()
    for _ in range(150):
        opt.zero_grad()
        m.loss(full)["total"].backward()
        opt.step()
    assert m.loss(full)["total"].item() < 0.7 * before


# ------------------------------------------------------------------------- AE #2
def test_ae_split_modality_dropout_only_in_training():
    torch.manual_seed(0)
    m = create("ae_split", DIMS, hidden=8, central=3, p_drop=1.0)
    mask = torch.ones(200, 2, dtype=torch.bool)
    mask[:20, 1] = False  # a sample with one modality never loses it
    m.train()
    eff = m.modality_dropout(mask)
    assert torch.equal(eff.sum(1), torch.ones(200, dtype=torch.long))
    assert torch.equal(eff[:20], mask[:20])
    assert 60 < int(eff[20:, 0].sum()) < 120  # uniform choice of the dropped modality
    m.eval()
    assert torch.equal(m.modality_dropout(mask), mask)
    b = batch(16)
    assert torch.equal(m.loss(b)["total"], m.loss(b)["total"])
    m.train()
    torch.manual_seed(1)
    train_loss = m.loss(b)
    assert set(train_loss) == {"total", "recon_a", "recon_b"}  # both reconstructed even when one dropped
    m.eval()
    assert not torch.equal(train_loss["total"], m.loss(b)["total"])
    # p_drop = 0: training mode changes nothing
    m0 = create("ae_split", DIMS, hidden=8, central=3, p_drop=0.0)
    m0.train()
    assert torch.equal(m0.modality_dropout(mask), mask)
    assert create("ae_split", DIMS).config["p_drop"] == 0.5


def test_ae_split_mask_encode_translate():
    torch.manual_seed(0)
    m = create("ae_split", DIMS, hidden=8, central=3)
    m.eval()
    e = m.embed(batch(4, mask=MASK4, garbage=True))
    torch.testing.assert_close(e, m.embed(batch(4, mask=MASK4)))
    full = batch(4)
    enc = m.encode(full)
    torch.testing.assert_close(enc["a"], m.embed(full.only(["a"])))
    torch.testing.assert_close(enc["b"], m.embed(full.only(["b"])))
    # a missing modality contributes nothing to the central pre-activation: only the bias remains
    none = m.embed(batch(4, mask=torch.zeros(4, 2, dtype=torch.bool)))
    torch.testing.assert_close(none, torch.tanh(m.fuse[0].bias).expand(4, 3))
    t = m.translate(full, "a")
    assert t.shape == (4, 6)
    torch.testing.assert_close(t, m.decoders["a"](enc["b"]))
    assert torch.equal(m.translate(batch(4, mask=MASK4), "a")[1], torch.zeros(6))  # no source


def test_ae_split_loss_skips_missing_targets():
    torch.manual_seed(0)
    m = create("ae_split", DIMS, hidden=8, central=3)
    m.eval()
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[3:, 1] = False
    b = batch(6, mask=mask)
    out = m.loss(b)
    z = m.embed(b)
    torch.testing.assert_close(out["recon_b"], torch.mean((m.decoders["b"](z[:3]) - b.features["b"][:3]) ** 2))


# -------------------------------------------------------------------------- raw
def test_raw_encode_embed():
    m = create("raw", DIMS)
    assert not m.trainable and len(list(m.parameters())) == 0
    b = batch(4, mask=MASK4, garbage=True)
    enc = m.encode(b)
    assert torch.equal(enc["a"][2], torch.zeros(6)) and torch.equal(enc["a"][0], b.features["a"][0])
    e = m.embed(b)
    assert e.shape == (4, 11)
    n1 = b.features["a"] / b.features["a"].norm(dim=1, keepdim=True)
    n2 = b.features["b"] / b.features["b"].norm(dim=1, keepdim=True)
    torch.testing.assert_close(e[0], torch.cat([n1[0], n2[0]]))
    torch.testing.assert_close(e[1], torch.cat([n1[1], torch.zeros(5)]))
    torch.testing.assert_close(e[2], torch.cat([torch.zeros(6), n2[2]]))
    assert torch.equal(e[3], torch.zeros(11))
    data = MultimodalDataset({"a": np.ones((3, 6)), "b": np.ones((3, 5))}, splits={"train": [0, 1]})
    m.fit_closed_form(data)  # no-op


# ----------------------------------------------------------- linear combination
def _cos(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(d, dim=1).T


def test_linear_combination_extremes_and_mix():
    q, d = batch(5, seed=1), batch(7, seed=2)
    sa, sb = _cos(q.features["a"], d.features["a"]), _cos(q.features["b"], d.features["b"])
    s = lambda w: linear_combination_scores(q.features, q.mask, d.features, d.mask, w)  # noqa: E731
    torch.testing.assert_close(s(1.0), sa)
    torch.testing.assert_close(s(0.0), sb)
    torch.testing.assert_close(s(0.3), 0.3 * sa + 0.7 * sb)
    assert s(0.3).shape == (5, 7)
    dot = linear_combination_scores(q.features, q.mask, d.features, d.mask, 0.5, metric="dot")
    torch.testing.assert_close(dot, 0.5 * q.features["a"] @ d.features["a"].T
                               + 0.5 * q.features["b"] @ d.features["b"].T)


def test_linear_combination_missing_modalities():
    q = batch(4, seed=1, mask=MASK4, garbage=True)  # rows: both / only a / only b / none
    d = batch(3, seed=2, mask=torch.tensor([[True, True], [True, False], [False, True]]), garbage=True)
    sa, sb = _cos(q.features["a"], d.features["a"]), _cos(q.features["b"], d.features["b"])
    s = linear_combination_scores(q.features, q.mask, d.features, d.mask, 0.3)
    torch.testing.assert_close(s[0, 0], 0.3 * sa[0, 0] + 0.7 * sb[0, 0])
    torch.testing.assert_close(s[0, 1], sa[0, 1])  # renormalised onto the one shared modality
    torch.testing.assert_close(s[0, 2], sb[0, 2])
    torch.testing.assert_close(s[1, 0], sa[1, 0])
    torch.testing.assert_close(s[2, 0], sb[2, 0])
    assert s[1, 2] == 0 and s[2, 1] == 0  # nothing in common
    assert torch.equal(s[3], torch.zeros(3))
    # w = 1 but only modality b shared: fall back to what is available rather than 0
    s1 = linear_combination_scores(q.features, q.mask, d.features, d.mask, 1.0)
    torch.testing.assert_close(s1[2, 0], sb[2, 0])
    s_miss = linear_combination_scores(q.features, q.mask, d.features, d.mask, 0.3, missing_score=-5.0)
    assert s_miss[3, 0] == -5.0
    with pytest.raises(DataError):
        linear_combination_scores(q.features, q.mask[:, :1], d.features, d.mask, 0.3)


def test_choose_weight_maximises_metric():
    q, d = batch(5, seed=1), batch(7, seed=2)
    target = linear_combination_scores(q.features, q.mask, d.features, d.mask, 0.7)
    calls = []

    def metric_fn(scores, lq, ld):
        calls.append((lq, ld))
        return -float((scores - target).abs().sum())

    lq, ld = torch.arange(5), torch.arange(7)
    best, values = choose_weight(q.features, q.mask, d.features, d.mask, lq, ld, metric_fn)
    assert best == pytest.approx(0.7) and len(values) == 11 and calls[0][0] is lq
    best, _ = choose_weight(q.features, q.mask, d.features, d.mask, lq, ld, lambda *a: 1.0, grid=[0.4, 0.2])
    assert best == 0.2  # ties: the smallest weight


# ------------------------------------------------------------------------- CCA
def _cca_data(mask: torch.Tensor | None = None) -> MultimodalDataset:
    x, y = two_view()
    n = x.shape[0]
    if mask is not None:
        x, y = x * mask[:, :1].numpy(), y * mask[:, 1:].numpy()
    return MultimodalDataset({"a": x, "b": y}, mask, splits={"train": np.arange(n - 100),
                                                            "test": np.arange(n - 100, n)})


def test_cca_matches_sklearn_and_generalised_eigenproblem():
    from sklearn.cross_decomposition import CCA

    data = _cca_data()
    m = create("cca", DIMS, n_components=2, reg=0.0)
    assert not m.trainable
    m.fit_closed_form(data, "train")
    x = data.features["a"][:500].double().numpy()
    y = data.features["b"][:500].double().numpy()
    ours = m.corr.double().numpy()
    sk = CCA(n_components=2, max_iter=5000, tol=1e-10).fit(x, y)
    xs, ys = sk.transform(x, y)
    sk_corr = [np.corrcoef(xs[:, i], ys[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(ours, sk_corr, atol=1e-3)
    # independent: Cxy Cyy^-1 Cyx a = rho^2 Cxx a
    xc, yc = x - x.mean(0), y - y.mean(0)
    cxx, cyy, cxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    rho2 = scipy.linalg.eigh(cxy @ np.linalg.solve(cyy, cxy.T), cxx, eigvals_only=True)[::-1]
    np.testing.assert_allclose(ours, np.sqrt(rho2[:2]), atol=1e-5)
    # the fitted variates really have these correlations and are whitened
    enc = m.encode_dataset(data, "train")
    u, v = enc["a"].double().numpy(), enc["b"].double().numpy()
    np.testing.assert_allclose([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(2)], ours, atol=1e-4)
    np.testing.assert_allclose(np.cov(u.T), np.eye(2), atol=1e-3)


def test_cca_defaults_buffers_embed():
    data = _cca_data()
    m = create("cca", DIMS)
    assert m.config == {"dims": {"a": [6], "b": [5]}, "n_components": None, "reg": 1e-3,
                        "scale_by_corr": False}
    assert set(m.state_dict()) == {"mean1", "mean2", "proj1", "proj2", "corr", "fitted"}
    assert m.proj1.shape == (6, 5) and m.proj2.shape == (5, 5) and m.corr.shape == (5,)
    with pytest.raises(DataError):
        m.embed(batch(2))
    m.fit_closed_form(data)
    assert bool(m.fitted) and torch.all(m.corr[:-1] >= m.corr[1:]) and m.corr.max() < 1
    b = batch(4, mask=MASK4, garbage=True)
    e, enc = m.embed(b), m.encode(batch(4))
    assert e.shape == (4, 10)
    torch.testing.assert_close(e[0], torch.cat([enc["a"][0], enc["b"][0]]))
    torch.testing.assert_close(e[1], torch.cat([enc["a"][1], enc["a"][1]]))
    torch.testing.assert_close(e[2], torch.cat([enc["b"][2], enc["b"][2]]))
    assert torch.equal(e[3], torch.zeros(10))
    # state round-trips through a rebuilt model (buffers only)
    clone = model_class("cca")(**m.config)
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone.embed(b), e)
    scaled = create("cca", DIMS, scale_by_corr=True)
    scaled.load_state_dict(m.state_dict())
    torch.testing.assert_close(scaled.encode(batch(4))["a"], enc["a"] * m.corr)
    with pytest.raises(DataError):
        create("cca", {"a": 3, "b": 4, "c": 2})
    with pytest.raises(DataError):
        create("cca", DIMS, n_components=6)


def test_cca_fits_complete_pairs_only():
    mask = torch.ones(600, 2, dtype=torch.bool)
    mask[:50, 1] = False
    m = create("cca", DIMS, n_components=2)
    m.fit_closed_form(_cca_data(mask), "train")
    ref = create("cca", DIMS, n_components=2)
    ref.fit_closed_form(_cca_data().subset(np.arange(50, 500)), None)
    torch.testing.assert_close(m.corr, ref.corr)
    torch.testing.assert_close(m.proj1, ref.proj1)
