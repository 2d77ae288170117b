"""Seeding and RNG state capture, so a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["get_rng_state", "seed_everything", "set_rng_state", "shuffle_generator"]

_MASK63 = (1 << 63) - 1


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def shuffle_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, stage, epoch).

    Shuffling never touches the global RNG, so the order of an epoch does not depend on how many random
    numbers the model drew before it, and a resumed run (or every DDP rank) gets the same order.
    """
    # odd 64-bit multipliers spread nearby tuples apart; the exact mixing only has to be fixed forever
    mixed = (seed * 0x9E3779B97F4A7C15 + (stage + 1) * 0xBF58476D1CE4E5B9 + (epoch + 1) * 0x94D049BB133111EB)
    return torch.Generator().manual_seed(mixed & _MASK63)


def get_rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every global RNG state as (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.cpu()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python.state"] = torch.tensor(internal, dtype=torch.int64)
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "gauss_next": gauss_next},
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA states only where the devices exist)."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        for k in cuda:
            i = int(k.split(".")[1])
            if i < n:
                torch.cuda.set_rng_state(tensors[k].to(torch.uint8).cpu(), i)
    if "numpy.keys" in tensors and "numpy" in meta:
        m = meta["numpy"]
        keys = tensors["numpy.keys"].numpy().astype(np.uint32)
        np.random.set_state((m["kind"], keys, m["pos"], m["has_gauss"], m["cached_gaussian"]))
    if "python.state" in tensors and "python" in meta:
        p = meta["python"]
        random.setstate((p["version"], tuple(int(v) for v in tensors["python.state"].tolist()), p["gauss_next"]))
