"""SSL models (MRBM, MDBN, MDAE): hyper-parameters, MJLL equivalence at lambda = 0, Algorithm 1 substeps,
the weights-only rule, mask semantics, MDBN stages, training and checkpoints."""

from __future__ import annotations

import pytest
import torch

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.similarity import similarity
from commonspace.models import available_models, create
from commonspace.models.base import model_class
from commonspace.models.ssl import MDAE, MDBN, MRBM
from commonspace.train import TrainConfig, Trainer
from commonspace.train.checkpoint import load_model, save_model, state_for_saving
from helpers_train import fit_or_interrupt

DIMS = {"a": 12, "b": 10}
SMALL = {
    "mrbm": {"hidden": 16},
    "mdbn": {"layers_x": (10, 8), "layers_y": (9,), "shared": 14},
    "mdae": {"layers_x": (10,), "layers_y": (9,), "shared": 8},
}


def paired(n: int = 96, seed: int = 0, unit: bool = True) -> MultimodalDataset:
    """Four latent classes; each modality is a noisy class prototype (in [0, 1] when ``unit``)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(4, (n,), generator=g)
    px, py = torch.rand(4, 12, generator=g), torch.rand(4, 10, generator=g)
    x = (px[z] + 0.15 * torch.randn(n, 12, generator=g)).clamp(0, 1)
    y = (py[z] + 0.15 * torch.randn(n, 10, generator=g)).clamp(0, 1)
    if not unit:
        x, y = (x - 0.5) * 3, (y - 0.5) * 3
    return MultimodalDataset({"a": x, "b": y}, labels=z, splits={"train": torch.arange(n)}, name="paired")


def build(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    if name == "mdbn":  # the synthetic features lie in [0, 1]
        kw.setdefault("visible", ("bernoulli", "bernoulli"))
    return create(name, DIMS, **{**SMALL[name], **kw})


def batch_of(data: MultimodalDataset, n: int = 32) -> Batch:
    return data.batch(torch.arange(n))


def train(model, data: MultimodalDataset, epochs: int = 2, seed: int = 0, callbacks=(), **cfg) -> list[dict]:
    config = TrainConfig.for_model(model, epochs=epochs, seed=seed, progress=False, batch_size=32, **cfg)
    return Trainer(model, config, callbacks=callbacks).fit(data, val=None, resume=False)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state_for_saving(model)[0].items()}


# ---------------------------------------------------------------------------- construction
def test_registered_with_documented_defaults():
    assert {"mrbm", "mdbn", "mdae"} <= set(available_models())
    m = create("mrbm", {"l": 392, "r": 392})
    assert isinstance(m, MRBM) and m.requires_complete
    assert (m.config["hidden"], m.config["visible"], m.config["sim"], m.config["lam"]) == \
        (512, ["bernoulli", "bernoulli"], "none", 0.1)
    assert (m.config["schedule"], m.config["cd_k"], m.config["persistent"]) == ("alternate", 1, False)
    assert m.train_defaults["optimizer"] == "sgd" and m.train_defaults["momentum"] == 0.9
    d = create("mdbn", {"i": 20, "t": 10})
    assert isinstance(d, MDBN)
    assert (d.config["layers_x"], d.config["layers_y"], d.config["shared"]) == ([1024, 1024], [1024, 1024], 2048)
    assert d.config["visible"] == ["gaussian", "gaussian"]
    assert [r.visible for r in d.stack_x] == ["gaussian", "bernoulli"] and d.top.visible == ("bernoulli",) * 2
    e = create("mdae", {"a": 5, "v": 6})
    assert isinstance(e, MDAE) and e.train_defaults["optimizer"] == "adam"
    assert e.config["p_zero"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
def test_config_rebuild_round_trips(name, tmp_path):
    m = build(name, sim="cca", lam=0.3, schedule="joint")
    again = model_class(name)(**m.config)
    assert again.config == m.config
    again.load_state_dict(m.state_dict())
    save_model(tmp_path / name, m)
    loaded = load_model(tmp_path / name).model
    b = batch_of(paired())
    with torch.no_grad():
        m.eval()
        loaded.eval()
        assert torch.equal(m.embed(b), loaded.embed(b))


@pytest.mark.parametrize("bad", [{"sim": "kl"}, {"schedule": "both"}, {"lam": -1.0}, {"cd_k": 0},
                                 {"visible": ("bernoulli", "poisson")}])
def test_bad_hyper_parameters(bad):
    with pytest.raises(DataError):
        create("mrbm", DIMS, **bad)


def test_two_modalities_and_bernoulli_range():
    with pytest.raises(DataError):
        create("mdae", {"a": 3})
    with pytest.raises(DataError, match="Bernoulli"):
        train(build("mrbm"), paired(unit=False), epochs=1)
    train(build("mrbm", visible="gaussian"), paired(unit=False), epochs=1)  # Gaussian takes any real data


# ------------------------------------------------------------------------------- SSL machinery
@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
def test_substeps(name):
    main = "recon" if name == "mdae" else "cd"
    assert build(name).substeps() is None
    assert build(name, sim="cca", lam=0.0).substeps() is None
    assert build(name, sim="ce_xy", schedule="joint").substeps() is None
    m = build(name, sim="ce_yx")
    assert m.substeps() == (main, "sim")
    if name == "mdbn":
        m.set_stage("pretrain_a_1")
        assert m.substeps() is None
        m.set_stage("joint")
        assert m.substeps() == ("cd", "sim")


@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
@pytest.mark.parametrize("schedule", ["alternate", "joint"])
def test_lambda_zero_is_mjll_bit_for_bit(name, schedule):
    data = paired()
    mjll, zero = build(name), build(name, sim="cca", lam=0.0, schedule=schedule)
    train(mjll, data)
    hist = train(zero, data)
    assert "sim" in hist[-1]["train"]  # monitored, yet it moved nothing
    a, b = weights(mjll), weights(zero)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ce_grad", ["fitted", "both"])
@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
def test_sim_term_reaches_shared_weights_only_scaled_by_lambda(name, ce_grad):
    m = build(name, sim="ce_xy", lam=0.25, ce_grad=ce_grad)
    m.set_stage("joint" if name == "mdbn" else None)
    b = batch_of(paired())
    out = m.loss(b)
    hx, hy = m._shared_pair(b)
    raw = similarity(hx, hy, "ce_xy", grad=ce_grad)
    torch.testing.assert_close(out["sim"], raw)  # the reported value is the raw similarity
    m.zero_grad(set_to_none=True)
    out["sim"].backward()
    wx, wy = {"mrbm": ("rbm.weight_x", "rbm.weight_y"), "mdbn": ("top.weight_x", "top.weight_y"),
              "mdae": ("shared_x.weight", "shared_y.weight")}[name]
    # H(H^x || H^y) with the target H^x detached moves W^y alone: y fits x's expectation
    shared = (wx, wy) if ce_grad == "both" else (wy,)
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert {n for n, g in grads.items() if g is not None} == set(shared)
    ref = torch.autograd.grad(raw, [dict(m.named_parameters())[n] for n in shared])
    for n, r in zip(shared, ref, strict=True):
        torch.testing.assert_close(grads[n], 0.25 * r)
    torch.testing.assert_close(out["total"], out["cd" if name != "mdae" else "recon"] + 0.25 * raw)


@pytest.mark.parametrize("persistent", [False, True])
def test_second_substep_forward_reuses_the_negative_phase(persistent):
    """The trainer's "sim" forward of the same batch draws no random numbers and leaves PCD chains alone."""
    m = build("mrbm", sim="ce_xy", persistent=persistent, n_chains=8).train()
    b = batch_of(paired())
    first = m.loss(b)
    chains = [c.clone() for c in m.rbm.get_chains()]
    rng = torch.get_rng_state()
    second = m.loss(b)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(second["cd"], first["cd"].detach())
    assert all(torch.equal(c, d) for c, d in zip(chains, m.rbm.get_chains(), strict=True))
    third = m.loss(b)  # the next batch's first forward samples again
    assert not torch.equal(torch.get_rng_state(), rng)
    assert third["cd"].requires_grad


def test_alternating_step_updates_biases_only_in_the_cd_step():
    m = build("mrbm", sim="cca", lam=0.5)
    data = paired(n=32)
    before = weights(m)
    train(m, data, epochs=1, optimizer="sgd", momentum=0.0, nesterov=False, lr=0.1)
    after = weights(m)
    # replay by hand: CD step on everything, then the lambda-weighted similarity step on W^x, W^y only
    ref = build("mrbm", sim="cca", lam=0.5)
    ref.load_state_dict(before)
    ref.train()
    torch.manual_seed(0)
    b = data.batch(data.split("train")[torch.randperm(32, generator=_shuffle())])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for term in ("cd", "sim"):
        out = ref.loss(b)
        opt.zero_grad(set_to_none=True)
        out[term].backward()
        opt.step()
    for k, v in weights(ref).items():
        torch.testing.assert_close(after[k], v)


def _shuffle() -> torch.Generator:
    from commonspace.train.seed import shuffle_generator

    return shuffle_generator(0, 0, 0)


# ------------------------------------------------------------------------------ mask semantics
@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
def test_missing_modality_changes_only_its_own_contribution(name):
    m = build(name).eval()
    b = batch_of(paired(), 6)
    enc = m.encode(b)
    full = m.embed(b)
    mask = b.mask.clone()
    mask[:2, 0] = False  # rows 0, 1 lose a; rows 2, 3 lose b; garbage stays in the features
    mask[2:4, 1] = False
    feats = {"a": b.features["a"] + 50.0 * (~mask[:, :1]), "b": b.features["b"] - 50.0 * (~mask[:, 1:])}
    garbage, clean = Batch(feats, mask, b.modalities), Batch(b.features, mask, b.modalities)
    # RBM models infer a missing modality; with 0 rounds they use the present one alone, like the MDAE
    drop = (lambda x: m.embed_with(x, 0)) if name != "mdae" else m.embed
    part = drop(garbage)
    with torch.no_grad():
        torch.testing.assert_close(part[:2], enc["b"][:2])
        torch.testing.assert_close(part[2:4], enc["a"][2:4])
        torch.testing.assert_close(part[4:], full[4:])
        torch.testing.assert_close(drop(b.only(["a"])), enc["a"])
        # the default embedding (inference for RBM models) never reads an absent modality's features either
        torch.testing.assert_close(m.embed(garbage), m.embed(clean))
        torch.testing.assert_close(m.embed(garbage)[4:], full[4:])
        n_out = part.shape[1]
    assert enc["a"].shape == enc["b"].shape == full.shape == (6, n_out)
    assert n_out == {"mrbm": 16, "mdbn": 14, "mdae": 8}[name]


def test_incomplete_rows_do_not_enter_the_cd_loss():
    m = build("mrbm").train()
    b = batch_of(paired(), 8)
    mask = b.mask.clone()
    mask[:3, 1] = False
    torch.manual_seed(0)
    got = m.loss(Batch({"a": b.features["a"], "b": b.features["b"] * mask[:, 1:]}, mask, b.modalities))["cd"]
    torch.manual_seed(0)
    ref = m.rbm.cd_loss(b.features["a"], b.features["b"], 1, weight=mask.all(1))[0]
    torch.testing.assert_close(got, ref)


# ---------------------------------------------------------------------------------- MDBN stages
def test_mdbn_stages_and_layerwise_pretraining():
    m = build("mdbn", pretrain_epochs=3, joint_epochs=5)
    stages = m.stages()
    assert [s.name for s in stages] == ["pretrain_a_1", "pretrain_a_2", "pretrain_b_1", "joint"]
    assert [s.epochs for s in stages] == [3, 3, 3, 5]
    owned = [m.stack_x[0], m.stack_x[1], m.stack_y[0], m.top]
    for s, mod in zip(stages, owned, strict=True):
        assert [id(p) for p in s.parameters] == [id(p) for p in mod.parameters()]
    with pytest.raises(ValueError):
        m.set_stage("pretrain_c_1")
    # one pre-training step moves that RBM alone; its input is the mean-field pass of the layer below
    m.set_stage("pretrain_a_2")
    out = m.loss(batch_of(paired()))
    assert set(out) == {"total", "cd"}
    out["total"].backward()
    moved = {n for n, p in m.named_parameters() if p.grad is not None}
    assert moved == {f"stack_x.1.{n}" for n in ("weight", "v_bias", "h_bias")}


def test_mdbn_trainer_runs_stages_in_order():
    m = build("mdbn", pretrain_epochs=1, joint_epochs=0)
    init = weights(m)
    hist = train(m, paired())
    assert [r["stage"] for r in hist] == ["pretrain_a_1", "pretrain_a_2", "pretrain_b_1"]
    now = weights(m)
    assert all(torch.equal(now[k], init[k]) for k in init if k.startswith("top."))
    assert all(not torch.equal(now[k], init[k]) for k in init if k.startswith("stack_") and "weight" in k)


# ------------------------------------------------------------------------------------ training
def _recon_error(m, data: MultimodalDataset) -> float:
    b = data.batch()
    with torch.no_grad():
        if isinstance(m, MDAE):
            m.eval()
            r = m.reconstruct(b)
            return float(sum(((r[k] - b.features[k]) ** 2).mean() for k in r))
        x, y = b.features["a"], b.features["b"]
        rbm = m.rbm if isinstance(m, MRBM) else m.top
        if isinstance(m, MDBN):
            x, y = m.up(x, 0), m.up(y, 1)
        mx, my = rbm.visible_mean(rbm.hidden_prob(x, y))
        return float(((mx - x) ** 2).mean() + ((my - y) ** 2).mean())


@pytest.mark.parametrize("name", ["mrbm", "mdbn", "mdae"])
@pytest.mark.parametrize("sim", ["none", "ce_xy", "cca"])
def test_models_train_and_reduce_their_loss(name, sim):
    data = paired()
    m = build(name, sim=sim, pretrain_epochs=30) if name == "mdbn" else build(name, sim=sim)
    start = {"error": _recon_error(m, data)}

    def before_joint(trainer, record):  # the MDBN's top layer starts once its stacks are trained
        if record["stage"].startswith("pretrain_"):
            start["error"] = _recon_error(m, data)

    # RBMs start from N(0, 0.01^2) weights and need a few dozen steps to break the symmetry
    hist = train(m, data, epochs=10 if name == "mdae" else 30, callbacks=[before_joint],
                 lr=1e-2 if name == "mdae" else 0.3)
    assert all(torch.isfinite(torch.tensor(list(r["train"].values()))).all() for r in hist)
    assert _recon_error(m, data) < 0.8 * start["error"]


def test_persistent_training_resumes_with_its_chains(tmp_path):
    data = paired(n=64)

    def run(out, stop: bool):
        m = build("mrbm", sim="ce_xy", persistent=True, n_chains=16)
        cfg = TrainConfig.for_model(m, epochs=3, seed=0, progress=False, batch_size=32, out_dir=out)
        return fit_or_interrupt(m, cfg, data, stop)

    whole = run(tmp_path / "whole", False)
    assert run(tmp_path / "cut", True) is None
    resumed = run(tmp_path / "cut", False)
    a, b = weights(whole), weights(resumed)
    assert int(b["rbm.chains_ready"]) == 1
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pcd_trains_without_momentum_and_does_not_kill_the_hidden_units():
    """With momentum 0.9 PCD's chains lag the model and every hidden unit dies (issue 11 item 4; the MNIST
    bench's settings: 256 hidden units, batch 256, lr 0.05; by the second epoch)."""
    from commonspace.data import builtin
    from commonspace.eval.probe import logistic_probe

    data = builtin.load("mnist5k-halves")
    tr, te = data.split("train"), data.split("test")
    errors, dead = {}, {}
    for momentum in (None, 0.9):
        m = create("mrbm", data.dims, init_seed=0, hidden=256, persistent=True)
        extra = {} if momentum is None else {"momentum": momentum}
        cfg = TrainConfig.for_model(m, seed=0, progress=False, epochs=3, batch_size=256, **extra)
        assert cfg.momentum == (0.0 if momentum is None else momentum)
        Trainer(m, cfg).fit(data, train="train", val=None, resume=False)
        with torch.no_grad():
            h = m.eval().embed(data.batch(tr))
            dead[momentum] = float((h.max(0).values < 0.01).float().mean())
            errors[momentum] = logistic_probe(h.numpy(), data.labels[tr].numpy(), m.embed(data.batch(te)).numpy(),
                                              data.labels[te].numpy())["error"]
    assert dead[None] < 0.05 < 0.9 < dead[0.9], dead
    assert errors[None] < 0.15 < 0.5 < errors[0.9], errors
