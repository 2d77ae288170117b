"""RBM building blocks: energies against brute force, CD as a loss against the textbook update, PCD chains."""

from __future__ import annotations

import itertools

import pytest
import torch

from commonspace.models import create
from commonspace.nn.rbm import RBM, MultimodalRBM
from commonspace.train.checkpoint import load_model, save_model

torch.set_default_dtype(torch.float32)


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    """Non-zero biases and larger weights, so a mixed-up term would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def _energy(v: torch.Tensor, h: torch.Tensor, rbm: RBM) -> torch.Tensor:
    """E(v, h) for every (v row, h row) pair: (B, S), straight from the definitions in the module docstring."""
    w, a, b, s = rbm.weight, rbm.v_bias, rbm.h_bias, rbm.sigma
    vis = ((v - a) ** 2).sum(1) / (2 * s * s) if rbm.visible == "gaussian" else -(v @ a)
    vs = v / s if rbm.visible == "gaussian" else v
    return vis[:, None] - (h @ b)[None, :] - vs @ w.T @ h.T


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_minus_log_sum_over_hidden_states(visible):
    rbm = RBM(5, 4, visible=visible, sigma=0.7).double()
    _randomise(rbm)
    v = torch.rand(6, 5, dtype=torch.float64) if visible == "bernoulli" else torch.randn(6, 5, dtype=torch.float64)
    h = _all_states(4)
    with torch.no_grad():
        e = _energy(v, h, rbm)
        brute = -torch.logsumexp(-e, dim=1)
        torch.testing.assert_close(rbm.free_energy(v), brute)
        # p(h_j = 1 | v) from the same enumeration
        post = torch.softmax(-e, dim=1) @ h
        torch.testing.assert_close(rbm.hidden_prob(v), post)


def test_bernoulli_visible_conditional_by_enumeration():
    rbm = RBM(3, 4).double()
    _randomise(rbm, seed=3)
    vs, h = _all_states(3), _all_states(4)
    with torch.no_grad():
        joint = torch.softmax(-_energy(vs, h, rbm).T, dim=1)  # p(v | h) per hidden state (rows)
        torch.testing.assert_close(rbm.visible_mean(h), joint @ vs)


def test_gaussian_visible_mean_and_sample_scale():
    rbm = RBM(3, 2, visible="gaussian", sigma=2.0).double()
    _randomise(rbm)
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(rbm.visible_mean(h)[0], rbm.v_bias + 2.0 * rbm.weight[0])
        torch.manual_seed(0)
        draws = rbm.sample_visible(h.expand(20000, -1))
    assert torch.allclose(draws.std(0), torch.full((3,), 2.0, dtype=torch.float64), atol=0.05)


def _textbook(rbm: RBM, v: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """<v h>_data - <v h>_model (and the bias statistics) with h replaced by p(h = 1 | v)."""
    s = rbm.sigma if rbm.visible == "gaussian" else 1.0
    with torch.no_grad():
        hd, hn = rbm.hidden_prob(v), rbm.hidden_prob(neg)
        n = v.shape[0]
        dw = (hd.T @ (v / s) - hn.T @ (neg / s)) / n
        if rbm.visible == "gaussian":
            da = ((v - rbm.v_bias).mean(0) - (neg - rbm.v_bias).mean(0)) / (s * s)
        else:
            da = v.mean(0) - neg.mean(0)
        db = hd.mean(0) - hn.mean(0)
    return {"weight": dw, "v_bias": da, "h_bias": db}


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("k", [1, 3])
def test_cd_loss_gradient_is_the_textbook_update(visible, k):
    rbm = RBM(6, 4, visible=visible, sigma=0.8).double()
    _randomise(rbm, seed=1)
    g = torch.Generator().manual_seed(2)
    v = torch.rand(8, 6, generator=g, dtype=torch.float64)
    if visible == "bernoulli":
        v = torch.bernoulli(v, generator=g)
    torch.manual_seed(5)
    loss, neg = rbm.cd_loss(v, k=k)
    assert not neg.requires_grad
    loss.backward()
    expected = _textbook(rbm, v, neg)
    for name, p in rbm.named_parameters():
        torch.testing.assert_close(-p.grad, expected[name])
    # the negative sample is k Gibbs steps from the data under the same random numbers
    torch.manual_seed(5)
    torch.testing.assert_close(neg, rbm.gibbs(v, k))


def test_cd_loss_from_given_chains_and_row_weights():
    rbm = RBM(4, 3).double()
    _randomise(rbm)
    v = torch.rand(5, 4, dtype=torch.float64)
    chains = torch.bernoulli(torch.full((7, 4), 0.5, dtype=torch.float64))
    torch.manual_seed(0)
    loss, neg = rbm.cd_loss(v, 2, chains, weight=torch.tensor([1, 1, 0, 1, 0]))
    torch.manual_seed(0)
    torch.testing.assert_close(neg, rbm.gibbs(chains, 2))
    with torch.no_grad():
        expect = rbm.free_energy(v[[0, 1, 3]]).mean() - rbm.free_energy(neg).mean()
    torch.testing.assert_close(loss.detach(), expect)


def test_pcd_chains_continue_across_batches_and_stay_put_in_eval():
    rbm = RBM(4, 3, n_chains=6)
    _randomise(rbm)
    v1, v2 = torch.rand(4, 4), torch.rand(5, 4)
    assert int(rbm.chains_ready) == 0
    torch.manual_seed(1)
    rbm.pcd_loss(v1, k=2)
    c1 = rbm.chains.clone()
    torch.manual_seed(1)  # first batch: chains seeded from the data rows (cycled), then k Gibbs steps
    torch.testing.assert_close(c1, rbm.gibbs(v1[torch.arange(6) % 4], 2))
    torch.manual_seed(2)
    rbm.pcd_loss(v2, k=2)
    torch.manual_seed(2)  # second batch: the chains continue from batch 1, the data does not restart them
    torch.testing.assert_close(rbm.chains, rbm.gibbs(c1, 2))
    before = rbm.chains.clone()
    rbm.eval()
    rbm.pcd_loss(v1, k=2)
    assert torch.equal(rbm.chains, before)


def test_pcd_needs_chains():
    with pytest.raises(RuntimeError, match="n_chains"):
        RBM(3, 2).pcd_loss(torch.rand(2, 3))


def test_eval_before_training_does_not_seed_chains():
    rbm = RBM(3, 2, n_chains=4).eval()
    rbm.pcd_loss(torch.rand(2, 3))
    assert int(rbm.chains_ready) == 0 and torch.count_nonzero(rbm.chains) == 0


# ------------------------------------------------------------------------------ multimodal RBM
def _mrbm_energy(x, y, h, m: MultimodalRBM) -> torch.Tensor:
    (kx, ky), (sx, sy) = m.visible, m.sigma
    ex = ((x - m.bias_x) ** 2).sum(1) / (2 * sx * sx) if kx == "gaussian" else -(x @ m.bias_x)
    ey = ((y - m.bias_y) ** 2).sum(1) / (2 * sy * sy) if ky == "gaussian" else -(y @ m.bias_y)
    xs = x / sx if kx == "gaussian" else x
    ys = y / sy if ky == "gaussian" else y
    return (ex + ey)[:, None] - (h @ m.bias_h)[None, :] - xs @ m.weight_x.T @ h.T - ys @ m.weight_y.T @ h.T


def _mrbm(visible=("bernoulli", "gaussian"), **kw) -> MultimodalRBM:
    m = MultimodalRBM(4, 3, 5, visible=visible, sigma=(1.0, 0.6), **kw).double()
    _randomise(m, seed=4)
    return m


def test_multimodal_free_energy_by_enumeration():
    m = _mrbm()
    x = torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64))
    y = torch.randn(5, 3, dtype=torch.float64)
    h = _all_states(5)
    with torch.no_grad():
        e = _mrbm_energy(x, y, h, m)
        torch.testing.assert_close(m.free_energy(x, y), -torch.logsumexp(-e, 1))
        torch.testing.assert_close(m.hidden_prob(x, y), torch.softmax(-e, 1) @ h)


def test_multimodal_missing_group_contributes_nothing():
    m = _mrbm()
    x, y = torch.rand(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    garbage = x + 100.0
    px = torch.tensor([True, False, True, False])
    with torch.no_grad():
        got = m.hidden_prob(torch.where(px[:, None], x, garbage), y, px, None)
        torch.testing.assert_close(got[~px], m.hidden_from(y=y)[~px])
        torch.testing.assert_close(got[px], m.hidden_prob(x, y)[px])
        torch.testing.assert_close(m.hidden_from(x=x), torch.sigmoid(x @ m.weight_x.T + m.bias_h))
        torch.testing.assert_close(m.hidden_from(x=x, y=y), m.hidden_prob(x, y))
        # the free energy of a sample without x is that of y alone under the same hidden layer
        f = m.free_energy(garbage, y, torch.zeros(4, dtype=torch.bool), None)
        ey = ((y - m.bias_y) ** 2).sum(1) / (2 * 0.36)
        torch.testing.assert_close(f, ey - torch.nn.functional.softplus(y / 0.6 @ m.weight_y.T + m.bias_h).sum(1))


def test_multimodal_cd_gradient_is_the_textbook_update():
    m = _mrbm()
    x = torch.bernoulli(torch.full((6, 4), 0.5, dtype=torch.float64))
    y = torch.randn(6, 3, dtype=torch.float64)
    torch.manual_seed(3)
    loss, (nx, ny) = m.cd_loss(x, y, k=1)
    loss.backward()
    with torch.no_grad():
        hd, hn = m.hidden_prob(x, y), m.hidden_prob(nx, ny)
        s = 0.6
        expect = {
            "weight_x": (hd.T @ x - hn.T @ nx) / 6,
            "weight_y": (hd.T @ (y / s) - hn.T @ (ny / s)) / 6,
            "bias_x": x.mean(0) - nx.mean(0),
            "bias_y": ((y - m.bias_y).mean(0) - (ny - m.bias_y).mean(0)) / (s * s),
            "bias_h": hd.mean(0) - hn.mean(0),
        }
    for name, p in m.named_parameters():
        torch.testing.assert_close(-p.grad, expect[name])
    torch.manual_seed(3)
    gx, gy = m.gibbs(x, y, 1)
    assert torch.equal(gx, nx) and torch.equal(gy, ny)
    assert set(torch.unique(nx).tolist()) <= {0.0, 1.0}


def test_multimodal_pcd_keeps_both_chain_groups():
    m = _mrbm(n_chains=3)
    x, y = torch.rand(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.manual_seed(0)
    m.pcd_loss(x, y)
    cx, cy = (c.clone() for c in m.get_chains())
    x2, y2 = torch.rand(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    m.pcd_loss(x2, y2)
    torch.manual_seed(1)
    ex, ey = m.gibbs(cx, cy, 1)
    assert torch.equal(m.chains_x, ex) and torch.equal(m.chains_y, ey)
    assert {"chains_x", "chains_y", "chains_ready"} <= set(m.state_dict())


def test_persistent_chains_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = create("mrbm", {"a": 4, "b": 3}, hidden=5, persistent=True, n_chains=6)
    from commonspace.data.dataset import Batch

    batch = Batch({"a": torch.rand(8, 4), "b": torch.rand(8, 3)}, torch.ones(8, 2, dtype=torch.bool), ("a", "b"))
    model.train()
    model.loss(batch)
    model.loss(batch.only(["a", "b"]))
    save_model(tmp_path / "m", model)
    loaded = load_model(tmp_path / "m").model
    assert int(loaded.rbm.chains_ready) == 1
    assert torch.equal(loaded.rbm.chains_x, model.rbm.chains_x) and torch.equal(loaded.rbm.chains_y, model.rbm.chains_y)
    # both continue identically: the loaded model does not re-seed its chains from the data
    loaded.train()
    torch.manual_seed(7)
    a = model.loss(batch)["cd"]
    torch.manual_seed(7)
    b = loaded.loss(batch)["cd"]
    assert torch.equal(a, b) and torch.equal(loaded.rbm.chains_x, model.rbm.chains_x)


def test_bad_arguments():
    with pytest.raises(ValueError):
        RBM(3, 2, visible="poisson")
    with pytest.raises(ValueError):
        RBM(3, 2, visible="gaussian", sigma=0.0)
    with pytest.raises(ValueError):
        RBM(3, 2).cd_loss(torch.rand(2, 3), k=0)
    with pytest.raises(ValueError):
        MultimodalRBM(3, 2, 4, visible=("bernoulli",))
    with pytest.raises(ValueError):
        MultimodalRBM(3, 2, 4).hidden_from()
