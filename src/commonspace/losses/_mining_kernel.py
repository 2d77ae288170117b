"""Compiled semi-hard negative mining for :func:`commonspace.losses.triplet.semihard_negatives` (float32, CPU).

The same rule as the torch path, row by row: each anchor's candidate distances, non-negatives set to +inf, are
sorted with ties in column order; every positive's band start is the first negative strictly farther than it (a
binary search); the negative there is semi-hard when it lies within the margin. One thread, idle machine
(2026-12-02): 90 ms against torch's 118 ms (``sort`` + ``searchsorted``) for a 1024 x 1024 batch, 1.00 against
1.28 ms for 128 x 128.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _ordered(x):  # pragma: no cover - compiled
    """float32 bits -> uint32 in the floats' order (-0.0 as +0.0, so the two zeros tie)."""
    sign = np.uint32(0x80000000)
    x = np.uint32(0) if x == sign else x
    return x ^ (sign if x < sign else np.uint32(0xFFFFFFFF))


@njit(nogil=True, cache=True)
def semihard_rows32(d_ap, d_an, neg, margin, idx, semi):  # pragma: no cover - compiled
    """``idx`` / ``semi`` (A, P): the chosen column of ``d_an`` and whether it is semi-hard, for every pair.

    One sort of uint64 keys per row (ordered distance bits, then the column): the keys are distinct, so a plain
    sort keeps ties in column order, and a search for a positive's bits with every column bit set counts the
    negatives not farther than it. ``margin`` is a one-element float32 array, so ``d(a,p) + margin`` rounds as
    torch rounds it.
    """
    a_n, n = d_an.shape
    p_n = d_ap.shape[1]
    m = margin[0]
    inf_key = np.uint64(_ordered(np.float32(np.inf).view(np.uint32))) << np.uint64(32)
    keys = np.empty(n, np.uint64)
    q = np.empty(p_n, np.uint64)
    low = np.uint64(0xFFFFFFFF)
    an = d_an.view(np.uint32)
    ap = d_ap.view(np.uint32)
    for a in range(a_n):
        for j in range(n):
            k = (np.uint64(_ordered(an[a, j])) << np.uint64(32)) if neg[a, j] else inf_key
            keys[j] = k | np.uint64(j)
        keys.sort()
        for p in range(p_n):
            q[p] = (np.uint64(_ordered(ap[a, p])) << np.uint64(32)) | low
        first = np.searchsorted(keys, q, side="right")
        for p in range(p_n):
            f = first[p]
            at = min(f, n - 1)
            col = np.int64(keys[at] & low)
            c = d_an[a, col] if neg[a, col] else np.float32(np.inf)
            s = f < n and c < d_ap[a, p] + m and np.isfinite(c)
            semi[a, p] = s
            idx[a, p] = col if s else np.int64(keys[0] & low)
