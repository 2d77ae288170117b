"""Multimodal denoising autoencoder: masking noise, masks, training, config rebuild."""

from __future__ import annotations

import json

import pytest
import torch

from commonspace.data.dataset import Batch, DataError
from commonspace.models.base import model_class
from commonspace.models.dae import DenoisingAutoencoder
from test_vae import adam_steps

SMALL = {"latent": 3, "hidden": [16]}


def synthetic(n: int = 128, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 2, generator=g)
    feats = {m: t @ torch.randn(2, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)
             for m, d in (("a", 6), ("b", 5), ("c", 4))}
    return Batch(feats, torch.ones(n, 3, dtype=torch.bool), ("a", "b", "c"))


def test_corruption_only_in_training_and_at_the_rate():
    torch.manual_seed(0)
    model = DenoisingAutoencoder({"a": 6, "b": 5}, **SMALL)
    x = torch.ones(1000, 1000)
    zeroed = float((model.corrupt(x) == 0).float().mean())
    assert abs(zeroed - 0.3) < 0.003
    model.eval()
    assert torch.equal(model.corrupt(x), x)
    model.train()
    other = DenoisingAutoencoder({"a": 6, "b": 5}, noise_rate=0.0, **SMALL)
    assert torch.equal(other.corrupt(x), x)
    # embed never corrupts, even in training mode
    batch = synthetic(16)
    batch = Batch({m: batch.features[m] for m in ("a", "b")}, batch.mask[:, :2], ("a", "b"))
    assert torch.equal(model.embed(batch), model.embed(batch))


def test_missing_modality_block_is_zero_and_not_reconstructed():
    torch.manual_seed(0)
    model = DenoisingAutoencoder({"a": 6, "b": 5, "c": 4}, **SMALL).eval()
    batch = synthetic(8)
    mask = batch.mask.clone()
    mask[2:5, 1] = False
    feats = dict(batch.features)
    feats["b"] = torch.where(mask[:, 1:2], feats["b"], torch.full_like(feats["b"], 1e3))  # garbage
    bad = Batch(feats, mask, batch.modalities)
    emb = model.embed(bad)
    hs = [model.encoders[m](bad.features[m]) * mask[:, j:j + 1] for j, m in enumerate(model.modalities)]
    hs[1] = torch.where(mask[:, 1:2], model.encoders["b"](batch.features["b"]), torch.zeros_like(hs[1]))
    assert torch.allclose(emb, model.fuse(torch.cat(hs, 1)), atol=1e-5)
    enc = model.encode(bad)
    alone = model.fuse(torch.cat([hs[0], torch.zeros_like(hs[1]), torch.zeros_like(hs[2])], 1))
    assert torch.allclose(enc["a"], alone, atol=1e-5)
    nob = Batch(dict(feats), mask.clone(), batch.modalities)
    nob.mask[:, 1] = False
    out = model.loss(nob)
    assert out["rec_b"] == 0 and torch.allclose(out["total"], out["rec_a"] + out["rec_c"])


def test_modality_drop_only_in_training_and_keeps_one():
    torch.manual_seed(0)
    model = DenoisingAutoencoder({"a": 6, "b": 5}, modality_drop=1.0, **SMALL)
    mask = torch.ones(1000, 2, dtype=torch.bool)
    mask[:100, 1] = False
    dropped = model.drop_modalities(mask)
    assert torch.equal(dropped[:100], mask[:100])  # single-modality samples keep it
    assert torch.all(dropped[100:].sum(1) == 1)
    assert not (dropped & ~mask).any()
    model.eval()
    assert torch.equal(model.drop_modalities(mask), mask)


def test_loss_decreases():
    torch.manual_seed(0)
    batch = synthetic(64)
    model = DenoisingAutoencoder({"a": 6, "b": 5, "c": 4}, **SMALL)
    first, last = adam_steps(model, batch)
    assert last < 0.5 * first, (first, last)


def test_config_rebuild_and_reconstruct_shapes():
    dims = {"img": (1, 2, 3), "snd": 5}
    model = model_class("dae")(dims, latent=2, hidden={"img": [8, 4], "snd": [6]},
                               likelihood={"img": "bernoulli", "snd": "gaussian"}, noise_rate=0.2)
    rebuilt = model_class("dae")(**json.loads(json.dumps(model.config)))  # checkpoints store JSON
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    batch = Batch({"img": torch.rand(3, 1, 2, 3), "snd": torch.randn(3, 5)}, torch.ones(3, 2, dtype=torch.bool),
                  ("img", "snd"))
    out = model.reconstruct(batch)
    assert out["img"].shape == (3, 1, 2, 3) and out["snd"].shape == (3, 5)
    assert model.translate(batch, "snd").shape == (3, 5)


def test_bad_hyperparameters():
    with pytest.raises(DataError):
        DenoisingAutoencoder({"a": 3}, **SMALL)
    with pytest.raises(DataError):
        DenoisingAutoencoder({"a": 3, "b": 2}, noise_rate=1.5)
    with pytest.raises(DataError):
        DenoisingAutoencoder({"a": 3, "b": 2}, hidden=[])
