"""IMA: pooling and importance losses by hand (Eq. 1-4), mask semantics, two-stage training, bags, config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.importance import bernoulli_kl_prior, importance_pool, weighted_cross_covariance_loss
from commonspace.models.base import model_class
from commonspace.models.ima import IMA, bag_embed
from commonspace.train import TrainConfig, Trainer

MODS = ("a", "b", "c")
DIMS = {"a": 5, "b": (1, 2, 3), "c": 4}


def tiny(**kw) -> IMA:
    torch.manual_seed(0)
    return IMA(DIMS, **{"latent": 3, "hidden": (8,), "imp_hidden": (6,), **kw})


def rand_batch(n: int = 8, seed: int = 1, mask: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    feats = {"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 1, 2, 3, generator=g),
             "c": torch.rand(n, 4, generator=g)}
    if mask is None:
        mask = torch.ones(n, 3, dtype=torch.bool)
    feats = {m: torch.where(mask[:, j].reshape(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))
             for j, (m, x) in enumerate(feats.items())}
    return Batch(feats, mask, MODS)


def with_importance(model: IMA, seed: int = 3) -> IMA:
    """Random importance output layers, so y differs per sample and modality (the init is y = 0.5 everywhere)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in model.importance_nets.values():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return model


# ------------------------------------------------------------------ Eq. 1 pooling
def test_importance_pool_by_hand():
    u = torch.tensor([[[1.0, 2.0], [3.0, -2.0]],      # y = (0.25, 0.75): 0.25*u1 + 0.75*u2
                      [[4.0, 4.0], [float("nan"), 9.0]],  # modality 2 missing (garbage): z = u1
                      [[1.0, 1.0], [2.0, 2.0]],       # nothing present: z = 0
                      [[2.0, 0.0], [0.0, 4.0]]])      # all y = 0: eps guard -> plain mean (1, 2)
    y = torch.tensor([[0.25, 0.75], [0.5, 0.3], [0.4, 0.4], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    z = importance_pool(u, y, mask)
    want = torch.tensor([[2.5, -1.0], [4.0, 4.0], [0.0, 0.0], [1.0, 2.0]])
    assert torch.allclose(z, want, atol=1e-5)
    z0 = importance_pool(u, y, mask, eps=0.0)  # Eq. 1 exactly; 0/0 guarded to 0
    assert torch.allclose(z0[:3], want[:3], atol=1e-7) and torch.equal(z0[3], torch.zeros(2))


# ------------------------------------------------------------------ Eq. 3
def test_weighted_cross_covariance_by_hand_scalar():
    # d = 1: ybar = (0.5, 1, 0.25), w = (2, 4, 1)/7, mu_z = 13/7, mu_u = 8/7,
    # sum_i w_i (z_i - mu_z)(u_i - mu_u) = (2*(-6)*6 + 4*1*(-8) + 1*8*20) / 7^3 = 56/343 = 8/49 -> loss (8/49)^2
    z = torch.tensor([[1.0], [2.0], [3.0]])
    u = torch.tensor([[2.0], [0.0], [4.0]])
    y = torch.tensor([0.5, 0.0, 0.75])
    loss = weighted_cross_covariance_loss(z, u, y)
    assert loss.shape == () and math.isclose(float(loss), (8 / 49) ** 2, rel_tol=1e-6)


def test_weighted_cross_covariance_by_hand_matrix_and_mask():
    # y = 0 -> w = (1/2, 1/2); zc = (-1,-1), (1,1); uc = (-1,2), (1,-2);
    # C = 1/2 (zc0 uc0^T + zc1 uc1^T) = [[1,-2],[1,-2]], ||C||_F^2 = 10. A third, masked row holds garbage.
    z = torch.tensor([[1.0, 0.0], [3.0, 2.0], [7.0, 7.0]])
    u = torch.tensor([[0.0, 4.0], [2.0, 0.0], [float("nan"), 1e6]])
    y = torch.tensor([0.0, 0.0, 0.3])
    mask = torch.tensor([True, True, False])
    assert math.isclose(float(weighted_cross_covariance_loss(z, u, y, mask)), 10.0, rel_tol=1e-6)
    # batched over modalities: column 0 as above, column 1 absent from the batch -> 0
    ub = torch.stack([u, torch.randn(3, 2)], 1)
    yb = torch.stack([y, torch.rand(3)], 1)
    mb = torch.stack([mask, torch.zeros(3, dtype=torch.bool)], 1)
    out = weighted_cross_covariance_loss(z, ub, yb, mb)
    assert out.shape == (2,) and math.isclose(float(out[0]), 10.0, rel_tol=1e-6) and float(out[1]) == 0.0
    # all y = 1 (no complement weight): loss 0, not NaN
    assert float(weighted_cross_covariance_loss(z[:2], u[:2], torch.ones(2))) == 0.0


def test_weighted_cross_covariance_gradient_reaches_y_only_through_w():
    z = torch.tensor([[1.0], [2.0], [3.0]])
    u = torch.tensor([[2.0], [0.0], [4.0]])
    y = torch.tensor([0.5, 0.0, 0.75], requires_grad=True)
    weighted_cross_covariance_loss(z, u, y).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# ------------------------------------------------------------------ Eq. 4
def test_bernoulli_kl_prior_by_hand():
    y = torch.tensor([0.2, 0.4, 0.9])
    # mean 0.5 vs rho 0.25: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    assert math.isclose(float(bernoulli_kl_prior(y, 0.25)), 0.5 * math.log(4 / 3), rel_tol=1e-5)
    # the masked 0.9 leaves mean 0.3: 0.3 ln(0.3/0.25) + 0.7 ln(0.7/0.75)
    want = 0.3 * math.log(0.3 / 0.25) + 0.7 * math.log(0.7 / 0.75)
    got = bernoulli_kl_prior(y, 0.25, torch.tensor([True, True, False]))
    assert math.isclose(float(got), want, rel_tol=1e-4)
    # (B, M) with one rho per modality; an absent modality gives 0
    yy = torch.stack([y, y, y], 1)
    mm = torch.tensor([[True, True, False]] * 3)
    out = bernoulli_kl_prior(yy, [0.25, 0.5, 0.9], mm)
    assert out.shape == (3,)
    assert math.isclose(float(out[0]), 0.5 * math.log(4 / 3), rel_tol=1e-5)
    assert abs(float(out[1])) < 1e-7 and float(out[2]) == 0.0
    assert torch.isfinite(bernoulli_kl_prior(y, 0.0))  # rho at the boundary stays finite (clamped)


# ------------------------------------------------------------------ model terms by hand
def test_model_terms_match_hand_computation():
    model = with_importance(tiny(recon={"a": "sse", "b": "sse", "c": "bce"}))
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    batch = rand_batch(6, mask=mask)
    enc, y = model.encode(batch), model.importance(batch)
    u = torch.stack([enc[m] for m in MODS], 1)
    z = model.embed(batch)
    w = (y + 1e-6) * mask
    assert torch.allclose(z, (w.unsqueeze(-1) * u).sum(1) / w.sum(1, keepdim=True), atol=1e-6)
    model.set_stage("autoencoder")
    out = model.loss(batch)
    for j, m in enumerate(MODS):
        x = batch.features[m].reshape(6, -1)
        logits = model.decoders[m](z)
        if m == "c":
            per = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        else:
            per = (logits - x).pow(2).sum(1)
        assert torch.allclose(out[f"rec_{m}"], (per * mask[:, j]).sum() / 6, atol=1e-5)
        align = ((z - u[:, j]).pow(2).sum(1) * mask[:, j]).sum() / 6
        assert torch.allclose(out[f"align_{m}"], align, atol=1e-6)
    assert torch.allclose(out["glob"], z.pow(2).sum(1).mean(), atol=1e-6)
    total = sum(out[f"rec_{m}"] + out[f"align_{m}"] for m in MODS) + out["glob"]
    assert torch.allclose(out["total"], total)
    model.set_stage("importance")
    out = model.loss(batch)
    corr = weighted_cross_covariance_loss(z, u, y, mask)
    local = bernoulli_kl_prior(y, 0.5, mask)
    for j, m in enumerate(MODS):
        assert torch.allclose(out[f"corr_{m}"], corr[j], atol=1e-6)
        assert torch.allclose(out[f"local_{m}"], local[j], atol=1e-6)
    assert set(out) == {"total"} | {f"{k}_{m}" for k in ("corr", "local") for m in MODS}


def test_lambdas_weight_the_terms():
    batch = rand_batch()
    base = with_importance(tiny())
    scaled = with_importance(tiny(lambda_rec=2.0, lambda_align=[0.0, 1.0, 1.0], lambda_glob=3.0, lambda_corr=0.5,
                                  lambda_local={"a": 1.0, "b": 1.0, "c": 4.0}))
    for stage in ("autoencoder", "importance"):
        base.set_stage(stage)
        scaled.set_stage(stage)
        o, s = base.loss(batch), scaled.loss(batch)
        if stage == "autoencoder":
            want = 2 * sum(o[f"rec_{m}"] for m in MODS) + o["align_b"] + o["align_c"] + 3 * o["glob"]
        else:
            want = 0.5 * sum(o[f"corr_{m}"] for m in MODS) + o["local_a"] + o["local_b"] + 4 * o["local_c"]
        assert torch.allclose(s["total"], want, atol=1e-5)


# ------------------------------------------------------------------ missing modalities
def test_missing_modality_only_changes_its_own_terms():
    model = with_importance(tiny())
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:, 2] = False  # "c" missing everywhere
    clean = rand_batch(mask=mask)
    garbage = Batch(dict(clean.features), mask, MODS)
    garbage.features["c"] = torch.full((8, 4), float("nan"))
    garbage.features["c"][::2] = 1e6
    for stage in ("autoencoder", "importance", None):
        model.set_stage(stage)
        lc, lg = model.loss(clean), model.loss(garbage)
        assert lc.keys() == lg.keys()
        for k in lc:
            assert torch.allclose(lc[k], lg[k]), k
        for k in ("rec_c", "align_c", "corr_c", "local_c"):
            if k in lc:
                assert float(lc[k].detach()) == 0.0, k
    # z equals the pooling over the present modalities alone
    enc, y = model.encode(garbage), model.importance(garbage)
    assert torch.equal(y[:, 2], torch.zeros(8)) and torch.equal(enc["c"], torch.zeros(8, 3))
    u2 = torch.stack([enc["a"], enc["b"]], 1)
    assert torch.allclose(model.embed(garbage), importance_pool(u2, y[:, :2], mask[:, :2]), atol=1e-6)
    two = IMA({"a": 5, "b": (1, 2, 3)}, latent=3, hidden=(8,), imp_hidden=(6,))
    two.load_state_dict({k: v for k, v in model.state_dict().items() if ".c." not in k})
    ab = Batch({"a": clean.features["a"], "b": clean.features["b"]}, mask[:, :2], ("a", "b"))
    assert torch.allclose(model.embed(garbage), two.embed(ab), atol=1e-6)
    # gradients stay finite with garbage in masked rows
    model.set_stage(None)
    model.loss(garbage)["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_partially_missing_rows_pool_over_the_others():
    model = with_importance(tiny())
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    batch = rand_batch(4, mask=mask)
    z, enc, y = model.embed(batch), model.encode(batch), model.importance(batch)
    assert torch.equal(y == 0, ~mask)
    assert torch.allclose(z[2], enc["b"][2], atol=1e-6)  # one modality: z = u_b
    wa, wc = y[1, 0] + 1e-6, y[1, 2] + 1e-6
    assert torch.allclose(z[1], (wa * enc["a"][1] + wc * enc["c"][1]) / (wa + wc), atol=1e-6)
    assert torch.equal(z[3], torch.zeros(3))
    unw = model.embed_unweighted(batch)
    assert torch.allclose(unw[1], (enc["a"][1] + enc["c"][1]) / 2, atol=1e-6)
    assert torch.allclose(unw, model.embed(batch, weighted=False))


# ------------------------------------------------------------------ stages
def test_stages_names_epochs_and_parameter_split():
    model = tiny(rounds=2, ae_epochs=3, imp_epochs=1)
    stages = model.stages()
    assert [s.name for s in stages] == ["autoencoder_1", "importance_1", "autoencoder_2", "importance_2"]
    assert [s.epochs for s in stages] == [3, 1, 3, 1]
    ae, imp = {id(p) for p in stages[0].parameters}, {id(p) for p in stages[1].parameters}
    assert not ae & imp and ae | imp == {id(p) for p in model.parameters()}
    assert [s.name for s in tiny().stages()] == ["autoencoder", "importance"]
    with pytest.raises(ValueError):
        model.set_stage("main")


def test_frozen_parts_do_not_move_in_a_plain_loop():
    model = tiny()
    batch = rand_batch(16)
    for stage in model.stages():
        model.set_stage(stage.name)
        own = {id(p) for p in stage.parameters}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.Adam(stage.parameters, lr=1e-2)
        model.zero_grad(set_to_none=True)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            model.loss(batch)["total"].backward()  # nothing frozen by hand: the loss itself must not reach them
            for p in model.parameters():
                if id(p) not in own:
                    assert p.grad is None
            opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        expect = {n for n, p in model.named_parameters() if id(p) in own}
        assert moved == expect, expect - moved


@pytest.mark.parametrize("z_grad", [True, False])
def test_importance_gradient_through_z_matches_autograd_of_eq1(z_grad: bool):
    """z_grad=True: d L_corr / d y includes the path through z (Eq. 1); False: only Eq. 3's weights."""
    model = with_importance(tiny(z_grad=z_grad))
    batch = rand_batch(10)
    model.set_stage("importance")
    params = list(model.importance_nets.parameters())
    got = torch.autograd.grad(model.loss(batch)["total"], params)
    with torch.no_grad():
        enc = model.encode(batch)
    u = torch.stack([enc[m] for m in MODS], 1)
    y = model.importance(batch)
    z = importance_pool(u, y if z_grad else y.detach(), batch.mask)
    ref = weighted_cross_covariance_loss(z, u, y, batch.mask).sum() + bernoulli_kl_prior(y, 0.5, batch.mask).sum()
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-6)
    other = with_importance(tiny(z_grad=not z_grad))
    other.set_stage("importance")
    flipped = torch.autograd.grad(other.loss(batch)["total"], list(other.importance_nets.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(got, flipped, strict=True))


def test_trainer_runs_both_stages_and_freezes_the_other():
    model = tiny()
    batch = rand_batch(48, seed=5)
    data = MultimodalDataset(batch.features, batch.mask, splits={"train": torch.arange(48)})
    snaps: list[tuple[str, dict[str, torch.Tensor]]] = []

    def snap(trainer: Trainer, record: dict) -> None:
        snaps.append((record["stage"], {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))

    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = Trainer(model, TrainConfig(epochs=1, progress=False, batch_size=16), callbacks=[snap]).fit(data)
    assert [r["stage"] for r in hist] == ["autoencoder", "importance"]
    assert set(hist[0]["train"]) == {"total", "glob"} | {f"{k}_{m}" for k in ("rec", "align") for m in MODS}
    assert set(hist[1]["train"]) == {"total"} | {f"{k}_{m}" for k in ("corr", "local") for m in MODS}
    (_, after_ae), (_, after_imp) = snaps
    for n in start:
        if n.startswith("importance_nets"):
            assert torch.equal(start[n], after_ae[n])  # frozen during the autoencoder stage
        else:
            assert torch.equal(after_ae[n], after_imp[n])  # frozen during the importance stage
    assert any(not torch.equal(start[n], after_ae[n]) for n in start if n.startswith("encoders"))
    assert any(not torch.equal(after_ae[n], after_imp[n]) for n in start if n.startswith("importance_nets"))
    assert model.stage is None and all(p.requires_grad for p in model.parameters())


def _importance_stage_mean(rho: float) -> torch.Tensor:
    """Train only the importance stage (the frozen AE is the random init) and return the mean y per modality."""
    torch.manual_seed(0)
    n, k = 256, 4
    cls = torch.randint(k, (n,))
    xa = torch.randn(k, 5)[cls] + 0.3 * torch.randn(n, 5)
    xb = torch.randn(k, 4)[cls] + 0.3 * torch.randn(n, 4)
    batch = Batch({"a": xa, "b": xb}, torch.ones(n, 2, dtype=torch.bool), ("a", "b"))
    model = IMA({"a": 5, "b": 4}, latent=2, hidden=(16,), imp_hidden=(8,), rho=rho)
    stage = model.stages()[1]
    model.set_stage(stage.name)
    opt = torch.optim.Adam(stage.parameters, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        idx = torch.randint(n, (64,), generator=g)
        sub = Batch({m: x[idx] for m, x in batch.features.items()}, batch.mask[idx], batch.modalities)
        opt.zero_grad()
        model.loss(sub)["total"].backward()
        opt.step()
    with torch.no_grad():
        return model.importance(batch).mean(0)


def test_rho_steers_the_mean_importance():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add contention on a busy machine
    try:
        low, high = _importance_stage_mean(0.2), _importance_stage_mean(0.8)
    finally:
        torch.set_num_threads(threads)
    assert (low < 0.35).all() and (high > 0.65).all(), (low, high)


# ------------------------------------------------------------------ API
def test_shapes_and_translate():
    model = tiny(recon="bce")
    mask = torch.tensor([[1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    batch = rand_batch(3, mask=mask)
    assert model.importance(batch).shape == (3, 3)
    enc = model.encode(batch)
    assert list(enc) == list(MODS) and all(v.shape == (3, 3) for v in enc.values())
    assert model.embed(batch).shape == (3, 3) and model.embed_unweighted(batch).shape == (3, 3)
    rec = model.reconstruct(batch)
    assert {m: tuple(v.shape) for m, v in rec.items()} == {"a": (3, 5), "b": (3, 1, 2, 3), "c": (3, 4)}
    assert all(((v >= 0) & (v <= 1)).all() for v in rec.values())  # bce -> probabilities
    t = model.translate(batch, "b")
    assert t.shape == (3, 1, 2, 3) and torch.equal(t[1], torch.zeros(1, 2, 3))  # row 1 has only "b" itself
    assert torch.allclose(t[2], model.reconstruct(batch.only(["a"]))["b"][2])
    with pytest.raises(DataError):
        model.translate(batch, "zzz")


def test_defaults_validation_and_config_rebuild():
    m = IMA({"x": 10, "y": 7})
    cfg = m.config
    assert (cfg["latent"], cfg["hidden"], cfg["imp_hidden"]) == (50, {"x": [500, 500], "y": [500, 500]},
                                                                 {"x": [100], "y": [100]})
    assert cfg["rho"] == {"x": 0.5, "y": 0.5} and cfg["recon"] == {"x": "sse", "y": "sse"}
    assert all(cfg[k] == {"x": 1.0, "y": 1.0} for k in ("lambda_rec", "lambda_align", "lambda_corr", "lambda_local"))
    assert cfg["lambda_glob"] == 1.0 and cfg["rounds"] == 1 and cfg["ae_epochs"] is None
    assert torch.allclose(m.importance(Batch({"x": torch.randn(4, 10), "y": torch.randn(4, 7)},
                                             torch.ones(4, 2, dtype=torch.bool), ("x", "y"))), torch.full((4, 2), .5))
    for bad in ({"rho": 1.5}, {"recon": "mse"}, {"rho": [0.1]}, {"rounds": 0}, {"latent": 0},
                {"hidden": {"x": [4]}}, {"activation": "gelu"}):
        with pytest.raises(DataError):
            IMA({"x": 10, "y": 7}, **bad)
    with pytest.raises(DataError):
        IMA({"x": 10})
    model = with_importance(tiny(rho=[0.2, 0.5, 0.9], recon=["sse", "sse", "bce"], hidden={"a": [8], "b": [6, 4],
                                                                                          "c": [5]}, rounds=2))
    again = model_class("ima")(**json.loads(json.dumps(model.config)))
    assert again.config == json.loads(json.dumps(model.config))
    again.load_state_dict(model.state_dict())
    batch = rand_batch()
    assert torch.allclose(again.embed(batch), model.embed(batch))
    again.set_stage("importance_2")
    model.set_stage("importance_2")
    assert torch.allclose(again.loss(batch)["total"], model.loss(batch)["total"])


def test_bce_needs_unit_interval_data():
    model = tiny(recon={"a": "sse", "b": "sse", "c": "bce"})
    ok = rand_batch(6)
    model.check_data(MultimodalDataset(ok.features))
    bad = dict(ok.features)
    bad["c"] = bad["c"] + 1.0
    with pytest.raises(DataError, match="bce"):
        model.check_data(MultimodalDataset(bad))


# ------------------------------------------------------------------ bags (Sec. 5.3)
def test_bag_embed_equals_a_hand_loop():
    model = with_importance(tiny())
    mask = torch.ones(9, 3, dtype=torch.bool)
    mask[1, 0] = mask[4, 1] = mask[4, 2] = mask[7, 2] = False
    items = rand_batch(9, seed=7, mask=mask)
    bag_index = torch.tensor([2, 0, 0, 2, 1, 0, 2, 1, 0])
    n_bags = 4  # bag 3 is empty
    y, enc = model.importance(items), model.encode(items)
    u = torch.stack([enc[m] for m in MODS], 1)
    z = model.embed(items)
    for weighted in (True, False):
        got = bag_embed(model, items, bag_index, n_bags, weighted=weighted)
        assert got.shape == (n_bags, 3)
        w = (y + 1e-6) * mask if weighted else mask.float() * (1 + 1e-6)
        for b in range(n_bags):
            sel = bag_index == b
            if not sel.any():
                assert torch.equal(got[b], torch.zeros(3))
                continue
            # the paper's s_b: sum over items and modalities of y u, over the sum of y ...
            want = (w[sel].unsqueeze(-1) * u[sel]).sum((0, 1)) / w[sel].sum()
            assert torch.allclose(got[b], want, atol=1e-5)
            # ... equals the items' z averaged with weights sum_j y_ij
            iw = w[sel].sum(1, keepdim=True)
            zz = z if weighted else model.embed_unweighted(items)
            assert torch.allclose(got[b], (iw * zz[sel]).sum(0) / iw.sum(), atol=1e-5)
    one = bag_embed(model, items, torch.arange(9), 9)  # one item per bag -> its z
    assert torch.allclose(one, z, atol=1e-5)
    with pytest.raises(DataError):
        bag_embed(model, items, torch.tensor([0, 1]), 2)
    with pytest.raises(DataError):
        bag_embed(model, items, torch.full((9,), 5), 4)
