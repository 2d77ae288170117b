"""Seeded, stratified train / val / test splits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.model_selection import train_test_split

from commonspace.data.dataset import DataError

__all__ = ["stratified_splits"]


def _counts(n: int, fractions: Mapping[str, float | int]) -> dict[str, int]:
    """Turn fractions (floats) or counts (ints) into sample counts; ``train`` takes the remainder."""
    if "train" not in fractions:
        raise DataError(f"split fractions need a 'train' entry, got {sorted(fractions)}")
    counts: dict[str, int] = {}
    for name, f in fractions.items():
        if name == "train":
            continue
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)):
            raise DataError(f"split {name!r}: expected a fraction or a count, got {f!r}")
        if isinstance(f, (int, np.integer)):
            c = int(f)
        elif 0.0 < f < 1.0:
            c = int(round(float(f) * n))
        else:
            raise DataError(f"split {name!r}: fraction {f} must be in (0, 1), or give an integer count")
        if c < 1:
            raise DataError(f"split {name!r} would be empty ({f} of {n} samples); make it larger")
        counts[name] = c
    floats = [float(v) for v in fractions.values() if isinstance(v, float)]
    if len(floats) == len(fractions) and not np.isclose(sum(floats), 1.0, atol=1e-6):
        raise DataError(f"split fractions {dict(fractions)} must sum to 1")
    rest = n - sum(counts.values())
    if rest < 1:
        raise DataError(f"splits {counts} leave no training samples out of {n}")
    counts["train"] = rest
    return counts


def stratified_splits(
    labels: np.ndarray | None,
    fractions: Mapping[str, float | int],
    seed: int = 0,
    n: int | None = None,
) -> dict[str, np.ndarray]:
    """Disjoint, seeded splits stratified by single-label ``labels``; sorted index arrays.

    ``fractions`` maps split names to fractions of all samples (floats, summing to 1) or sample counts
    (ints); ``train`` takes what is left. ``test`` is carved from all samples first, then every other split
    (``val``) from what remains, so val is always carved from the training pool. Each carve is
    ``train_test_split(pool, test_size=count, stratify=labels[pool], random_state=seed)``: with
    ``{"train": .., "test": 400}`` this reproduces the common "stratified split with seed 0" protocol.
    Multi-label (2-D) or absent labels give plain seeded random splits (pass ``n`` when labels is None).
    """
    y = None if labels is None else np.asarray(labels)
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y is None:
        if n is None:
            raise DataError("stratified_splits needs labels or the number of samples n")
    else:
        n = int(y.shape[0])
        if y.ndim != 1:
            y = None  # multi-label: stratification is undefined, fall back to random
    counts = _counts(int(n), fractions)
    order = sorted((k for k in counts if k != "train"), key=lambda k: (k != "test", list(fractions).index(k)))
    pool = np.arange(n)
    out: dict[str, np.ndarray] = {}
    for name in order:
        strat = None if y is None else y[pool]
        try:
            pool, part = train_test_split(pool, test_size=counts[name], stratify=strat, random_state=seed)
        except ValueError as exc:
            raise DataError(
                f"cannot carve a stratified {name!r} split of {counts[name]} samples: {exc}; use larger "
                "fractions, fewer splits, or merge rare classes"
            ) from exc
        out[name] = np.sort(part).astype(np.int64)
    out["train"] = np.sort(pool).astype(np.int64)
    return {k: out[k] for k in fractions if k in out}
