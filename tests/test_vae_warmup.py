"""KL warm-up of MVAE and JMVAE-KL (issue 12): the schedule, resuming mid-warm-up, and the posterior collapse it
prevents (docs/methods.md, "KL weight")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from commonspace.data import builtin
from commonspace.data.dataset import Batch, MultimodalDataset
from commonspace.models.vae import JMVAE, KL_WARMUP_STEPS, MVAE, kl_standard_normal
from commonspace.train import TrainConfig, Trainer
from commonspace.train import checkpoint as ck
from helpers_train import final_state, fit_or_interrupt, make_data

SMALL = {"latent": 3, "hidden": [8]}
DIMS = {"a": 6, "b": 5, "c": 4}


def _batch(n: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    return Batch(feats, torch.ones(n, len(DIMS), dtype=torch.bool), tuple(DIMS))


def _used_weight(model: MVAE | JMVAE, out: dict[str, torch.Tensor]) -> float:
    """The KL weight a loss() call applied, read back from its terms (``rec + w kl``; rec_weight is 1)."""
    rec = sum(out[f"rec_{m}"] for m in model.modalities)
    joint = out["total"] if isinstance(model, MVAE) else out["elbo_joint"]
    return float(((joint - rec) / out["kl"]).detach())


@pytest.mark.parametrize("cls", [MVAE, JMVAE])
def test_warmup_is_on_by_default(cls):
    model = cls({"a": 4, "b": 3}, **SMALL)
    assert KL_WARMUP_STEPS == 300
    assert model.anneal_steps == KL_WARMUP_STEPS and model.config["anneal_steps"] == KL_WARMUP_STEPS
    assert int(model.anneal_step) == 0 and "anneal_step" in model.state_dict()


@pytest.mark.parametrize("cls", [MVAE, JMVAE])
def test_kl_weight_is_linear_in_training_steps_and_full_in_eval(cls):
    """beta = 2 over 4 steps: training calls 0..5 weigh the KL by 0, 0.5, 1, 1.5, 2, 2; eval always by 2."""
    torch.manual_seed(0)
    model = cls(DIMS, beta=2.0, anneal_steps=4, **SMALL)
    batch = _batch()
    used, evals = [], []
    for step in range(6):
        model.train()
        assert float(model.kl_weight()) == pytest.approx(2.0 * min(1.0, step / 4))  # reading does not advance
        assert int(model.anneal_step) == step
        used.append(_used_weight(model, model.loss(batch)))
        model.eval()
        with torch.no_grad():
            evals.append(_used_weight(model, model.loss(batch)))  # validation: the full negative ELBO
        assert float(model.kl_weight()) == 2.0 and int(model.anneal_step) == step + 1  # eval does not advance
    assert used == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0], abs=1e-4)
    assert evals == pytest.approx([2.0] * 6, abs=1e-4)
    off = cls(DIMS, beta=2.0, anneal_steps=0, **SMALL)  # 0 = no warm-up: the full weight from the first step
    assert _used_weight(off, off.loss(batch)) == pytest.approx(2.0, abs=1e-4)


@pytest.mark.parametrize("cls", [MVAE, JMVAE])
def test_trainer_steps_the_warmup_once_per_batch(cls, one_thread):
    data = make_data(n=96, val=32)  # 64 training rows, batch 16: 4 steps per epoch; validation never advances
    torch.manual_seed(0)
    model = cls({"a": 6, "b": 4}, anneal_steps=6, **SMALL)
    # restore_best would bring back the best epoch's buffers too, step counter included
    cfg = TrainConfig.for_model(model, epochs=3, batch_size=16, restore_best=False, progress=False)
    hist = Trainer(model, cfg).fit(data)
    assert int(model.anneal_step) == 12 == hist[-1]["step"]
    assert all(r["val_loss"] is not None for r in hist)


@pytest.mark.parametrize("cls", [MVAE, JMVAE])
def test_resume_mid_warmup_reproduces_the_uninterrupted_run(cls, tmp_path: Path, one_thread):
    """Killed after epoch 1 (step 4 of a 10-step warm-up) and resumed: the same weights, bit for bit."""
    data = make_data(n=96, val=32)

    def run(out: Path, stop: bool) -> MVAE | JMVAE | None:
        torch.manual_seed(0)
        model = cls({"a": 6, "b": 4}, anneal_steps=10, **SMALL)
        cfg = TrainConfig.for_model(model, epochs=3, batch_size=16, seed=3, out_dir=out, progress=False)
        return fit_or_interrupt(model, cfg, data, stop)

    whole = run(tmp_path / "whole", False)
    assert run(tmp_path / "cut", True) is None
    saved = ck.read_training_checkpoint(tmp_path / "cut" / "checkpoint")
    assert int(saved.weights["anneal_step"]) == 4  # the cut fell inside the warm-up
    resumed = run(tmp_path / "cut", False)
    a, b = final_state(whole), final_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(b["anneal_step"]) == 12


# ------------------------------------------------------------------ the collapse the warm-up prevents
def _digits_pairs(n: int = 1580, speech_dim: int = 696) -> MultimodalDataset:
    """MNIST-5k images with a Gaussian "speech" made of a per-digit prototype plus as much noise, standardised,
    paired by class like the IMA bench's noisy digits (784 Bernoulli pixels + 696-d standardised MFCCs)."""
    d = builtin.load("mnist5k")
    g = torch.Generator().manual_seed(0)
    rows = d.split("train")[torch.randperm(d.split("train").numel(), generator=g)[:n]]
    image = d.features["image"][rows].reshape(n, -1)
    y = d.labels[rows]
    speech = torch.randn(10, speech_dim, generator=g)[y] + torch.randn(n, speech_dim, generator=g)
    speech = (speech - speech.mean(0)) / speech.std(0)
    return MultimodalDataset({"image": image, "speech": speech}, labels=y,
                             splits={"train": torch.arange(1280), "test": torch.arange(1280, n)}, name="pairs")


def _short_run(cls: type[MVAE | JMVAE], data: MultimodalDataset, anneal_steps: int) -> MVAE | JMVAE:
    """The IMA bench's baseline (widths, latent 50, likelihoods, Adam 1e-3, batch 128) for 100 steps."""
    torch.manual_seed(0)
    model = cls(dict(data.dims), latent=50, hidden={"image": [500, 500], "speech": [100, 100]},
                likelihood={"image": "bernoulli", "speech": "gaussian"}, anneal_steps=anneal_steps)
    Trainer(model, TrainConfig.for_model(model, epochs=10, seed=0, progress=False)).fit(data, val=None)
    assert int(model.anneal_step) == 100
    return model


def _spread(model: MVAE | JMVAE, data: MultimodalDataset, modality: str) -> tuple[float, float]:
    """From ``modality`` alone, on held-out rows: the per-dimension std over samples of the posterior mean
    (averaged over dimensions) and the mean KL to the prior per latent unit; ~0 and ~0 = collapsed."""
    with torch.no_grad():
        model.eval()
        mu, logvar = model.posterior(data.batch(data.split("test")).only([modality]))
    return float(mu.std(0).mean()), float(kl_standard_normal(mu, logvar).mean() / model.latent)


def test_mvae_image_expert_collapses_without_warmup_and_not_with_it(one_thread):
    """The IMA bench's collapse in miniature: without a warm-up the image-only PoE posterior stays near the prior
    (its mean varies a third as much over the samples); a 50-step warm-up keeps both experts informative."""
    data = _digits_pairs()
    warm = _short_run(MVAE, data, anneal_steps=50)
    for m in ("image", "speech"):
        sd, kl = _spread(warm, data, m)
        assert sd > 0.2 and kl > 0.08, (m, sd, kl)
    # seeds 0-2 give a posterior-mean spread of 0.09-0.10 without the warm-up, 0.27-0.33 with it
    sd, _ = _spread(_short_run(MVAE, data, anneal_steps=0), data, "image")
    assert sd < 0.15, sd


def test_jmvae_unimodal_posteriors_are_informative_after_a_short_warm_run(one_thread):
    data = _digits_pairs()
    model = _short_run(JMVAE, data, anneal_steps=50)
    for m in ("image", "speech"):
        sd, kl = _spread(model, data, m)
        assert sd > 0.2 and kl > 0.08, (m, sd, kl)
