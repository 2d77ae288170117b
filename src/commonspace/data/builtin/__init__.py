"""Builtin datasets by name: ``load("uci-mfeat")``, ``available()``, ``describe(name)``.

Each has fixed train/val/test splits (stratified, seed 0, val carved from train). MNIST-5k and UCI
Multiple Features ship with the package; Wikipedia and FSDD need a local copy (see :func:`describe`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from commonspace.data.builtin import digits, fsdd, mfeat, mnist, noisy_digits, wikipedia
from commonspace.data.builtin._common import DatasetUnavailable, Info, find_shared
from commonspace.data.builtin.mnist import mnist5k
from commonspace.data.dataset import DataError, MultimodalDataset

__all__ = ["DatasetUnavailable", "available", "describe", "find_shared", "load", "mnist5k"]

_REGISTRY: dict[str, Info] = {
    i.name: i for i in (digits.INFO, mnist.HALVES, mnist.MNIST5K, mfeat.INFO, wikipedia.INFO, fsdd.SPECTROGRAM,
                        fsdd.FSDD_MNIST, noisy_digits.NOISY, noisy_digits.NOISY_FSDD)
}


def _info(name: str) -> Info:
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise DataError(f"no builtin dataset {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[key]


def load(name: str, root: str | os.PathLike | Path | None = None, **kw: Any) -> MultimodalDataset:
    """Load a builtin dataset; ``root`` points at a local copy of its files (ignored by shipped datasets).

    Extra keywords go to the dataset's loader (``views=`` for ``uci-mfeat``).
    """
    info = _info(name)
    # callers such as the CLI pass one data root for every dataset; shipped ones need none, so ignore it
    if root is not None and "root" in info.options:
        kw["root"] = root
    bad = sorted(set(kw) - set(info.options))
    if bad:
        raise DataError(f"{info.name!r} takes no option(s) {bad}; options: {info.options or 'none'}")
    return info.loader(**kw)


def _row(info: Info) -> dict[str, Any]:
    here = True if info.locate is None else info.locate() is not None
    return {
        "name": info.name,
        "description": info.description,
        "samples": info.samples,
        "modalities": dict(info.modalities),
        "classes": info.classes,
        "splits": dict(info.splits),
        "split_protocol": info.split_protocol,
        "external": info.external,
        "needs": info.needs,
        "available": here,
        "source": info.source,
        "license": info.license,
        "citation": info.citation,
        "options": dict(info.options),
    }


def available() -> list[dict[str, Any]]:
    """One dict per builtin dataset: name, description, sizes, splits, whether it needs (and has) external
    data, source, license and citation."""
    return [_row(i) for i in _REGISTRY.values()]


def describe(name: str) -> str:
    """A readable paragraph about one dataset: sizes, splits, source, license, where its files come from."""
    r = _row(_info(name))
    mods = ", ".join(f"{m} ({d})" for m, d in r["modalities"].items())
    lines = [
        f"{r['name']}: {r['description']}",
        f"  samples: {r['samples']}, classes: {r['classes']}, modalities: {mods}",
        f"  splits: {r['splits']} ({r['split_protocol']})",
        f"  source: {r['source']}",
        f"  license: {r['license']}",
        f"  citation: {r['citation']}",
    ]
    if r["options"]:
        lines.append("  options: " + "; ".join(f"{k}: {v}" for k, v in r["options"].items()))
    if r["external"]:
        lines.append("  local copy: " + ("found" if r["available"] else "NOT found; pass root=<folder>"))
    return "\n".join(lines)
