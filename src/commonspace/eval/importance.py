"""Importance detection scores: how well learnt importances ``y`` separate noise from signal (IMA Sec. 5.2, Fig. 6).

The noise class is the positive class (the IMA paper's Figure 6: "positive indicates presence of noise"): a
sample is predicted noise when its importance is below ``threshold`` (0.5 by default, the sigmoid's middle).
Eq. 4 fixes only the batch mean of ``y`` (through rho), so 0.5 is not a property of the model: besides the
threshold-free :func:`noise_detection_auc`, two label-free thresholds are fitted on held-out importances,
:func:`two_means_threshold` (the gap between two groups) and :func:`prior_quantile_threshold` (the lowest
``1 - rho`` share, Sec. 5.1's "rho ... control[s] the proportion of samples detected as uncorrelated noise").
Everything is vectorised over samples, modalities (columns) and thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from commonspace.data.dataset import DataError
from commonspace.eval.probe import _np

__all__ = ["noise_detection_auc", "noise_detection_scores", "prior_quantile_threshold", "two_means_threshold"]


def _checked(importance: object, is_noise: object, mask: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, truth, keep)`` as float64 / bool / bool arrays of one (N,) or (N, M) shape, or a DataError."""
    y = _np(importance, "importance").astype(np.float64, copy=False)
    truth = _np(is_noise, "is_noise")
    if truth.dtype != np.bool_:
        if not np.isin(truth, (0, 1)).all():
            raise DataError("is_noise must be boolean (or 0/1): True where the sample is noise")
        truth = truth.astype(bool)
    if y.ndim not in (1, 2) or truth.shape != y.shape:
        raise DataError(f"importance {y.shape} and is_noise {truth.shape} must have the same (N,) or (N, M) shape")
    if np.isnan(y).any():
        raise DataError("importance contains NaN")
    keep = np.ones_like(truth) if mask is None else _np(mask, "mask").astype(bool)
    if keep.shape != y.shape:
        raise DataError(f"mask {keep.shape} must have the shape of importance {y.shape}")
    return y, truth, keep


def noise_detection_scores(importance: object, is_noise: object, threshold: float | Sequence[float] = 0.5,
                           mask: object | None = None) -> dict[str, np.ndarray | float]:
    """Precision, recall and F1 of the noise class, predicted as ``importance < threshold``.

    ``importance``: (N,) or (N, M) scores in [0, 1] (M modalities as columns, e.g. ``IMA.importance``);
    ``is_noise``: bool of the same shape, the ground truth; ``mask`` (same shape, optional): which entries
    count (e.g. present modalities; a missing modality's importance is 0 and would count as "noise").
    ``threshold``: a scalar, or a 1-D sequence of T thresholds (a leading axis of length T in the results).

    Returns numpy arrays (floats for a scalar threshold and (N,) inputs) of shape ``[T,] [M]``: ``precision``
    = TP / (TP + FP), ``recall`` = TP / (TP + FN), ``f1`` = 2 P R / (P + R), ``accuracy`` (both classes),
    ``misclassified`` = 1 - accuracy, and the counts ``tp``, ``fp``, ``fn``, ``tn``. A ratio whose
    denominator is 0 (nothing predicted noise, no noise present) is 0, scikit-learn's ``zero_division=0``.
    """
    y, truth, keep = _checked(importance, is_noise, mask)
    th = np.asarray(threshold, dtype=np.float64)
    if th.ndim > 1:
        raise DataError(f"threshold must be a scalar or a 1-D sequence, got shape {th.shape}")
    t = th.reshape(-1, *([1] * y.ndim))  # (T, 1[, 1]) broadcasts against (N[, M])
    pred = y[None] < t  # (T, N[, M])
    pos, kept = truth[None] & keep[None], keep[None]
    tp = (pred & pos).sum(1)
    fp = (pred & ~truth[None] & kept).sum(1)
    fn = (~pred & pos).sum(1)
    tn = (~pred & ~truth[None] & kept).sum(1)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * precision * recall, precision + recall)
    accuracy = ratio(tp + tn, tp + fp + fn + tn)
    out = {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy, "misclassified": 1 - accuracy,
           "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    if th.ndim == 0:
        out = {k: v[0] for k, v in out.items()}
    return {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in out.items()}


def noise_detection_auc(importance: object, is_noise: object, mask: object | None = None) -> float | np.ndarray:
    """Threshold-free detection quality: ROC AUC of ``-importance`` as a score for the noise class.

    1.0 when every noise sample has a lower importance than every clean one, 0.5 for a random ranking, whatever
    the scale of ``y`` (the 0.5 threshold of :func:`noise_detection_scores` can miss a ranking that is right).
    Shapes as in :func:`noise_detection_scores`; returns a float for (N,) inputs, else (M,). A column with only
    one class among its kept entries has no AUC and gives NaN.
    """
    y, truth, keep = _checked(importance, is_noise, mask)
    cols = [(y, truth, keep)] if y.ndim == 1 else [(y[:, j], truth[:, j], keep[:, j]) for j in range(y.shape[1])]
    out = np.array([roc_auc_score(t[k], -s[k]) if 0 < t[k].sum() < k.sum() else np.nan for s, t, k in cols])
    return float(out[0]) if y.ndim == 1 else out


def _columns(importance: object) -> tuple[np.ndarray, bool]:
    """((N, M) float64 importances, whether the input was (N,)) of a non-empty array without NaN, or a DataError."""
    y = _np(importance, "importance").astype(np.float64, copy=False)
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise DataError(f"importance must be a non-empty (N,) or (N, M) array, got shape {y.shape}")
    if np.isnan(y).any():
        raise DataError("importance contains NaN")
    return y.reshape(y.shape[0], -1), y.ndim == 1


def prior_quantile_threshold(importance: object, rho: float | Sequence[float]) -> float | np.ndarray:
    """A label-free threshold from the prior: the cut below which the lowest ``round((1 - rho) N)`` values fall.

    Sec. 5.1: "rho_j ... can be adjusted to control the proportion of samples detected as uncorrelated noise";
    this rule detects exactly that proportion of the importances it is fitted on (the validation split),
    whatever their scale. The cut lies midway between the last value inside and the first outside (ties may move
    a few items); with nothing to detect it is the minimum (``y < cut`` holds for none), with everything just
    above the maximum. ``rho``: one value or one per column. (N,) gives a float, (N, M) one threshold per column.
    """
    cols, flat = _columns(importance)
    n, m = cols.shape
    r = np.asarray(rho, dtype=np.float64).reshape(-1)
    r = np.full(m, r[0]) if r.size == 1 else r
    if r.shape != (m,) or np.isnan(r).any() or ((r < 0) | (r > 1)).any():
        raise DataError(f"rho must be in [0, 1], one value or one per column ({m}); got {rho!r}")
    v = np.sort(cols, axis=0)
    k = np.clip(np.floor((1.0 - r) * n + 0.5).astype(np.int64), 0, n)  # rounded half up, as the pairing's N*R
    j = np.arange(m)
    inside, outside = v[np.clip(k - 1, 0, n - 1), j], v[np.clip(k, 0, n - 1), j]
    out = np.where(k == 0, v[0], np.where(k == n, np.nextafter(v[-1], np.inf), 0.5 * (inside + outside)))
    return float(out[0]) if flat else out


def two_means_threshold(importance: object) -> float | np.ndarray:
    """A label-free threshold: the cut that splits the importances into two groups with the least within-group
    variance (Otsu's rule, exact 1-D 2-means), placed midway between the two values either side of the cut.

    Eq. 4's prior fixes only the batch *mean* of ``y``, not where noise and signal sit, so a network can rank
    noise perfectly below signal with every ``y`` above 0.5; this threshold follows the gap wherever it is.
    Fit it on held-out (validation) importances, no labels needed, and pass it to
    :func:`noise_detection_scores`. (N,) gives a float, (N, M) one threshold per column. Fewer than two distinct
    values give 0.5. Otsu's cut leans toward the larger group when the groups differ much in size or spread.
    """
    cols, flat = _columns(importance)
    n, m = cols.shape
    out = np.full(m, 0.5)
    if n > 1:
        v = np.sort(cols, axis=0)
        k = np.arange(1, n, dtype=np.float64)[:, None]  # the first k sorted values form the low group
        c = np.cumsum(v, axis=0)[:-1]
        between = (c / k - (v.sum(0) - c) / (n - k)) ** 2 * k * (n - k)  # n^2 x between-group variance
        between[v[1:] == v[:-1]] = -1.0  # a cut must fall between two different values
        i = np.argmax(between, axis=0)
        j = np.arange(m)
        out = np.where(v[0] == v[-1], 0.5, 0.5 * (v[i, j] + v[i + 1, j]))
    return float(out[0]) if flat else out
