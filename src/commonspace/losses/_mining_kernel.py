"""Compiled semi-hard negative mining for :func:`commonspace.losses.triplet.semihard_negatives` (CPU tensors).

The same rule as the torch path, row by row: each anchor's candidate distances, non-negatives set to +inf, are
sorted stably (mergesort: ties keep the lowest column first); every positive's band start is the first negative
strictly farther than it (a binary search); the negative there is semi-hard when it lies within the margin. On the
2-core reference machine torch's ``sort`` plus ``searchsorted`` over a 1024 x 1024 batch cost about 113 ms, and
this kernel about 45 (docs/benchmarks.md, "Training steps against the machine's floor").
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def semihard_rows(d_ap, d_an, neg, margin, idx, semi):  # pragma: no cover - compiled
    """``idx`` / ``semi`` (A, P): the chosen column of ``d_an`` and whether it is semi-hard, for every pair.

    ``margin`` is a one-element array of the distances' dtype, so ``d(a,p) + margin`` rounds as torch rounds it.
    """
    a_n, n = d_an.shape
    p_n = d_ap.shape[1]
    m = margin[0]
    dn = np.empty(n, d_an.dtype)
    for a in range(a_n):
        for j in range(n):
            dn[j] = d_an[a, j] if neg[a, j] else np.inf
        order = np.argsort(dn, kind="mergesort")
        sd = dn[order]
        first = np.searchsorted(sd, d_ap[a], side="right")
        for p in range(p_n):
            f = first[p]
            at = min(f, n - 1)
            c = sd[at]
            s = f < n and c < d_ap[a, p] + m and np.isfinite(c)
            semi[a, p] = s
            idx[a, p] = order[at] if s else order[0]
