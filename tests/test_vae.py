"""MVAE and JMVAE-KL: product of experts, masks, subset networks, KL terms, training, config rebuild."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import model_class
from commonspace.models.vae import (
    JMVAE,
    MVAE,
    kl_normal,
    kl_standard_normal,
    product_of_experts,
)
from commonspace.train import TrainConfig, Trainer
from commonspace.train.checkpoint import load_model, save_model

SMALL = {"latent": 3, "hidden": [16]}


def synthetic(n: int = 256, dims: dict[str, int] | None = None, seed: int = 0, unit: bool = False) -> Batch:
    """Modalities generated from one shared 2-d factor (binary 0/1 when ``unit``)."""
    dims = dims or {"a": 6, "b": 5}
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 2, generator=g)
    feats = {}
    for m, d in dims.items():
        x = t @ torch.randn(2, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)
        feats[m] = (x > 0).float() if unit else x
    mask = torch.ones(n, len(dims), dtype=torch.bool)
    return Batch(feats, mask, tuple(dims))


def with_missing(batch: Batch, rows: torch.Tensor, modality: str, garbage: bool = True) -> Batch:
    """Mark ``modality`` missing on ``rows``; fill them with garbage (a hand-built batch may) or zeros."""
    feats = {m: x.clone() for m, x in batch.features.items()}
    mask = batch.mask.clone()
    j = batch.modalities.index(modality)
    mask[rows, j] = False
    feats[modality][rows] = 1e3 if garbage else 0.0
    return Batch(feats, mask, batch.modalities)


# ------------------------------------------------------------------------------------------ Gaussians
def test_poe_matches_hand_formula_with_prior_expert():
    mu = torch.tensor([[[1.0, -2.0], [3.0, 0.5]]])  # (B=1, E=2, D=2)
    var = torch.tensor([[[0.5, 2.0], [0.25, 1.0]]])
    present = torch.tensor([[True, True]])
    mean, logvar = product_of_experts(mu, var.log(), present)
    # by hand: precisions 1 (prior), 1/0.5, 1/0.25 in dim 0 and 1, 1/2, 1/1 in dim 1; prior mean 0
    t0 = torch.tensor([1.0 + 2.0 + 4.0, 1.0 + 0.5 + 1.0])
    m0 = torch.tensor([(2.0 * 1.0 + 4.0 * 3.0) / t0[0], (0.5 * -2.0 + 1.0 * 0.5) / t0[1]])
    assert torch.allclose(mean[0], m0)
    assert torch.allclose(logvar[0].exp(), 1.0 / t0)
    # an absent expert is left out entirely (even with extreme values)
    mu2 = mu.clone()
    mu2[0, 1] = 1e6
    mean2, logvar2 = product_of_experts(mu2, var.log(), torch.tensor([[True, False]]))
    assert torch.allclose(mean2[0], torch.tensor([2.0 * 1.0 / 3.0, 0.5 * -2.0 / 1.5]))
    assert torch.allclose(logvar2[0].exp(), torch.tensor([1 / 3.0, 1 / 1.5]))
    # no expert: the prior
    mean3, logvar3 = product_of_experts(mu, var.log(), torch.tensor([[False, False]]))
    assert torch.equal(mean3, torch.zeros_like(mean3)) and torch.equal(logvar3, torch.zeros_like(logvar3))


def test_kl_closed_forms_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mq, mp = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    lq, lp = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    ref = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)
    assert torch.allclose(kl_normal(mq, lq, mp, lp), ref, atol=1e-5)
    ref0 = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(torch.zeros(4), torch.ones(4))).sum(-1)
    assert torch.allclose(kl_standard_normal(mq, lq), ref0, atol=1e-5)
    assert torch.allclose(kl_normal(mq, lq, mq, lq), torch.zeros(7), atol=1e-6)


# ----------------------------------------------------------------------------------------------- MVAE
def test_mvae_embed_is_poe_of_present_experts_and_encode_is_expert_with_prior():
    torch.manual_seed(0)
    model = MVAE({"a": 6, "b": 5}, **SMALL).eval()
    batch = synthetic(8)
    mu_e, lv_e = model.experts(batch)
    emb = model.embed(batch)
    assert torch.allclose(emb, product_of_experts(mu_e, lv_e, batch.mask)[0])
    enc = model.encode(batch)
    for j, m in enumerate(model.modalities):
        var = lv_e[:, j].exp()
        assert torch.allclose(enc[m], mu_e[:, j] / var / (1.0 + 1.0 / var), atol=1e-6)


def test_mvae_missing_modality_is_not_an_expert_nor_reconstructed():
    torch.manual_seed(0)
    model = MVAE({"a": 6, "b": 5}, **SMALL).eval()
    batch = synthetic(8)
    rows = torch.tensor([1, 4])
    garbage, zeros = with_missing(batch, rows, "b"), with_missing(batch, rows, "b", garbage=False)
    emb = model.embed(garbage)
    assert torch.allclose(emb, model.embed(zeros))
    a_only = model.encode(batch)["a"]
    assert torch.allclose(emb[rows], a_only[rows], atol=1e-6)  # p(z) q(z|a) alone
    assert not torch.allclose(emb[0], a_only[0])
    torch.manual_seed(3)
    l1 = model.loss(garbage)
    torch.manual_seed(3)
    l2 = model.loss(zeros)
    for k in l1:
        assert torch.allclose(l1[k], l2[k]), k
    # every row missing b: b is never reconstructed and its decoder gets no gradient
    model.train()
    none_b = with_missing(batch, torch.arange(8), "b")
    out = model.loss(none_b)
    assert out["rec_b"] == 0 and out["elbo_b"] == 0 and out["elbo_joint"] == 0
    out["total"].backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.decoders["b"].parameters())
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.encoders["b"].parameters())


def test_mvae_loss_terms_add_up_and_random_subsets():
    torch.manual_seed(0)
    dims = {"a": 4, "b": 3, "c": 5}
    model = MVAE(dims, subsets=2, rec_weight={"a": 1.0, "b": 2.0, "c": 0.5}, anneal_steps=0, **SMALL)
    out = model.loss(synthetic(32, dims))
    assert {"total", "elbo_joint", "elbo_a", "elbo_b", "elbo_c", "elbo_random", "kl", "rec_a", "rec_b",
            "rec_c"} == set(out)
    parts = out["elbo_joint"] + out["elbo_a"] + out["elbo_b"] + out["elbo_c"] + out["elbo_random"]
    assert torch.allclose(out["total"], parts)
    assert torch.allclose(out["total"], out["rec_a"] + 2.0 * out["rec_b"] + 0.5 * out["rec_c"] + out["kl"])
    names, member = model._term_subsets(torch.device("cpu"))
    assert names == ["joint", "a", "b", "c", "random", "random"]
    assert member[0].all() and torch.equal(member[1:4], torch.eye(3, dtype=torch.bool))
    assert set(member[4:].sum(1).tolist()) == {2}  # random subsets have 2..M-1 members
    two = MVAE({"a": 4, "b": 3}, subsets=3, **SMALL)
    assert "elbo_random" not in two.loss(synthetic(8, {"a": 4, "b": 3}))  # M = 2: no such subset


def test_mvae_single_modality_sample_counts_once():
    """A sample with one modality contributes its unimodal ELBO only (the joint term would repeat it)."""
    torch.manual_seed(0)
    model = MVAE({"a": 6, "b": 5}, **SMALL)
    batch = with_missing(synthetic(4), torch.arange(4), "b")
    out = model.loss(batch)
    assert out["elbo_joint"] == 0 and out["elbo_a"] > 0
    assert torch.allclose(out["total"], out["elbo_a"])


def test_kl_warmup_buffer():
    model = MVAE({"a": 6, "b": 5}, anneal_steps=4, beta=2.0, **SMALL)
    assert float(model._kl_weight()) == 0.0 and int(model.anneal_step) == 1
    model.eval()
    assert float(model._kl_weight()) == 2.0 and int(model.anneal_step) == 1  # eval: full beta, no advance
    model.train()
    for _ in range(5):
        model._kl_weight()
    assert float(model._kl_weight()) == 2.0
    assert "anneal_step" in model.state_dict()


# ------------------------------------------------------------------------------------------- JMVAE-KL
@pytest.mark.parametrize("m", [2, 3, 4])
def test_jmvae_has_2_pow_m_minus_1_networks(m):
    dims = {f"m{i}": 3 + i for i in range(m)}
    hidden, latent = 8, 2
    model = JMVAE(dims, latent=latent, hidden=[hidden])
    assert model.n_inference_networks == 2 ** m - 1 == len(model.networks)
    # each subset network: (sum of its input dims) -> |S| * hidden -> (mu, logvar)
    expected = 0
    for code in range(1, 2 ** m):
        members = model.members(code)
        d, h = sum(dims[x] for x in members), hidden * len(members)
        expected += d * h + h + 2 * (h * latent + latent)
    assert sum(p.numel() for p in model.networks.parameters()) == expected


def test_jmvae_parameter_count_grows_with_modalities():
    counts = [sum(p.numel() for p in JMVAE({f"m{i}": 4 for i in range(m)}, latent=2, hidden=[8]).parameters())
              for m in (2, 3, 4)]
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] - counts[1] > counts[1] - counts[0]  # exponential, not linear, growth


def test_jmvae_embed_uses_the_network_of_each_samples_mask():
    torch.manual_seed(0)
    dims = {"a": 4, "b": 3, "c": 5}
    model = JMVAE(dims, **SMALL).eval()
    full = synthetic(64, dims, seed=2)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(64, 3, generator=g) < 0.6
    mask[:8] = torch.tensor([[(c >> j) & 1 for j in range(3)] for c in range(8)], dtype=torch.bool)  # all patterns
    feats = {m: torch.where(mask[:, j:j + 1], x, torch.full_like(x, 7.0)) for j, (m, x) in
             enumerate(full.features.items())}  # garbage where missing
    batch = Batch(feats, mask, full.modalities)
    emb = model.embed(batch)
    for i in range(64):
        code = sum(1 << j for j in range(3) if mask[i, j])
        if code == 0:
            assert torch.equal(emb[i], torch.zeros(3))
            continue
        x = torch.cat([full.features[m][i:i + 1] for m in model.members(code)], 1)
        direct = model.networks[model.subset_keys[code]](x)[0][0]
        assert torch.allclose(emb[i], direct, atol=1e-6), (i, code)
    enc = model.encode(full)
    assert torch.allclose(enc["b"], model.networks["b"](full.features["b"])[0])


def test_jmvae_kl_terms_match_closed_form():
    torch.manual_seed(0)
    dims = {"a": 4, "b": 3, "c": 5}
    model = JMVAE(dims, alpha=0.5, anneal_steps=0, **SMALL)
    batch = synthetic(16, dims)
    out = model.loss(batch)
    mu, lv = model.networks["a+b+c"](torch.cat([batch.features[m] for m in dims], 1))
    total = 0.0
    for key, members in (("a", "a"), ("b+c", "bc"), ("a+c", "ac")):
        ms, ls = model.networks[key](torch.cat([batch.features[m] for m in members], 1))
        ref = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(ms, (0.5 * ls).exp())).sum(-1).mean()
        assert torch.allclose(out[f"kl_{key}"], ref, atol=1e-5)
    for key in ("a", "b", "c", "a+b", "a+c", "b+c"):
        total = total + out[f"kl_{key}"]
    assert torch.allclose(out["kl_subsets"], total)
    assert torch.allclose(out["kl"], kl_standard_normal(mu, lv).mean(), atol=1e-6)
    assert torch.allclose(out["total"], out["elbo_joint"] + 0.5 * out["kl_subsets"])
    assert torch.allclose(out["elbo_joint"], out["rec_a"] + out["rec_b"] + out["rec_c"] + out["kl"])


# ------------------------------------------------------------------------------------- shared behaviour
def adam_steps(model, batch: Batch, n: int = 200, lr: float = 1e-2) -> tuple[float, float]:
    """Mean total loss over the first and the last 20 of ``n`` full-batch Adam steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: extra threads only contend (tens of times slower on a busy host)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        hist = []
        for _ in range(n):
            opt.zero_grad()
            loss = model.loss(batch)["total"]
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return sum(hist[:20]) / 20, sum(hist[-20:]) / 20


@pytest.mark.parametrize("name,likelihood", [("mvae", "gaussian"), ("mvae", "bernoulli"), ("jmvae", "gaussian"),
                                             ("jmvae", "bernoulli")])
def test_loss_decreases(name, likelihood):
    torch.manual_seed(0)
    dims = {"a": 6, "b": 5, "c": 4}
    batch = synthetic(64, dims, unit=likelihood == "bernoulli")
    if name == "mvae":
        batch = with_missing(batch, torch.arange(0, 64, 4), "c", garbage=False)
    model = model_class(name)(dims, likelihood=likelihood, **SMALL)
    first, last = adam_steps(model, batch)
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("name", ["mvae", "jmvae"])
def test_config_rebuild_gives_identical_state(name):
    dims = {"img": (1, 2, 3), "snd": 5, "txt": 4}
    hp = {"latent": 2, "hidden": {"img": [8, 4], "snd": [6, 3], "txt": [5, 2]},
          "likelihood": {"img": "bernoulli", "snd": "gaussian", "txt": "sse"}, "anneal_steps": 10}
    model = model_class(name)(dims, **hp)
    json.dumps(model.config)  # checkpoints store the config as JSON
    rebuilt = model_class(name)(**json.loads(json.dumps(model.config)))
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert rebuilt.config == model.config
    batch = Batch({"img": torch.rand(3, 1, 2, 3), "snd": torch.randn(3, 5), "txt": torch.randn(3, 4)},
                  torch.ones(3, 3, dtype=torch.bool), ("img", "snd", "txt"))
    with torch.no_grad():
        out = model.reconstruct(batch)
        assert out["img"].shape == (3, 1, 2, 3) and out["snd"].shape == (3, 5)
        assert 0 <= float(out["img"].min()) and float(out["img"].max()) <= 1  # Bernoulli means
        assert model.translate(batch, "txt").shape == (3, 4)


def test_bad_hyperparameters_and_bernoulli_range():
    with pytest.raises(DataError):
        MVAE({"a": 3})
    with pytest.raises(DataError):
        MVAE({"a": 3, "b": 2}, likelihood="poisson")
    with pytest.raises(DataError):
        JMVAE({"a": 3, "b": 2}, hidden={"a": [4], "b": [4, 4]})
    data = MultimodalDataset({"a": torch.randn(10, 3), "b": torch.rand(10, 2)})
    with pytest.raises(DataError, match="bernoulli"):
        MVAE({"a": 3, "b": 2}, likelihood="bernoulli", **SMALL).check_data(data)
    MVAE({"a": 3, "b": 2}, likelihood={"a": "gaussian", "b": "bernoulli"}, **SMALL).check_data(data)


def test_trainer_runs_both_models_with_missing_modalities(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 96
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[::5, 1] = False
    b[::5] = 0
    data = MultimodalDataset({"a": a, "b": b}, mask, splits={"train": torch.arange(64), "val": torch.arange(64, n)})
    for cls in (MVAE, JMVAE):
        torch.manual_seed(0)
        model = cls({"a": 4, "b": 3}, anneal_steps=5, **SMALL)
        cfg = TrainConfig.for_model(model, epochs=2, batch_size=16, progress=False)
        hist = Trainer(model, cfg).fit(data)
        assert len(hist) == 2
        emb = model.embed_dataset(data)
        assert emb.shape == (n, 3) and torch.isfinite(emb).all()
        save_model(tmp_path / cls.name, model)
        loaded = load_model(tmp_path / cls.name).model
        assert torch.allclose(loaded.embed_dataset(data), emb)
