"""How labels are read, and when two items are relevant to each other: the ONE rule shared by the metrics
(:mod:`commonspace.eval.retrieval`, :mod:`commonspace.eval.hamming`) and the supervised losses
(:mod:`commonspace.losses.hashing`, :mod:`commonspace.losses.triplet`). Written out in ``docs/metrics.md``,
section "Labels and relevance".

* ``(N,)`` labels are class ids; two items are relevant when their ids are equal.
* ``(N, C)`` **bool** labels are multi-label indicators for any ``C >= 1`` (``C = 1`` included); two items are
  relevant when they share at least one label, so a row of all False is relevant to nothing.
* ``(N, C)`` integer/float labels with ``C >= 2`` are multi-label indicators too and must be 0/1.
* ``(N, 1)`` integer/float labels are a column of class ids (how MATLAB stores a label vector): squeezed to
  ``(N,)``, as :class:`~commonspace.data.dataset.MultimodalDataset` does.

The canonical forms are int64 ``(N,)`` ids and bool ``(N, C)`` indicators; they read back as themselves, so
labels can be checked once and passed on. The dimension alone then tells the kind.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import DataError

__all__ = ["canonical_labels", "check_class_ids", "label_pair", "pair_relevance", "relevance", "single_class"]

#: class ids up to this bound are always accepted; above it the id range may be at most
#: :data:`SPARSE_IDS_FACTOR` times the number of distinct classes (see :func:`check_class_ids`)
SMALL_ID_RANGE = 1024
SPARSE_IDS_FACTOR = 4


def _as_tensor(x: object, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        a = np.asarray(x)
        if a.dtype == object:
            raise TypeError(f"dtype {a.dtype}")
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc}); pass class ids or 0/1 indicators as a "
                        "numpy array or tensor") from exc


def canonical_labels(labels: object, what: str = "labels") -> Tensor:
    """int64 ``(N,)`` class ids or bool ``(N, C)`` indicators, by the rule of this module; else a DataError."""
    y = _as_tensor(labels, what)
    if y.ndim == 2 and y.shape[1] == 1 and y.dtype != torch.bool:
        y = y[:, 0]  # a column of class ids; a bool column stays one multi-label indicator
    if y.ndim == 1:
        if y.dtype == torch.int64:
            return y
        if y.is_complex() or (y.is_floating_point() and not bool(torch.all(torch.isfinite(y) & (y == y.round())))):
            raise DataError(f"{what}: (N,) labels are class ids and must be integers, got non-integer values; "
                            "round or map them to integer ids")
        return y.to(torch.int64)
    if y.ndim == 2:
        if y.shape[1] == 0:
            raise DataError(f"{what} has shape {tuple(y.shape)}: no label columns; give (N, C) indicators with "
                            "C >= 1 or (N,) class ids")
        if y.dtype == torch.bool:
            return y
        if y.is_complex() or not bool(torch.all((y == 0) | (y == 1))):
            raise DataError(f"{what}: (N, {y.shape[1]}) labels are multi-label indicators and must be 0/1 "
                            "(or bool); for class ids pass an (N,) vector or an (N, 1) column")
        return y.to(torch.bool)
    raise DataError(f"{what} has shape {tuple(y.shape)}; expected (N,) class ids or (N, C) 0/1 multi-label "
                    "indicators")


def _kind(y: Tensor) -> str:
    return "(N,) class ids" if y.ndim == 1 else f"(N, {y.shape[1]}) multi-label indicators"


def label_pair(query: object, database: object, what_q: str = "query_labels",
               what_d: str = "db_labels") -> tuple[Tensor, Tensor, bool]:
    """Canonical query and database labels of one kind (both class ids, or both indicators with the same C),
    and ``multi``; mixed kinds are a DataError."""
    q = canonical_labels(query, what_q)
    d = canonical_labels(database, what_d)
    if q.ndim != d.ndim or (q.ndim == 2 and q.shape[1] != d.shape[1]):
        raise DataError(f"{what_q} are {_kind(q)} but {what_d} are {_kind(d)}; give both the same kind "
                        "(bool (N, 1) is multi-label, an integer (N, 1) column is class ids)")
    return q, d, q.ndim == 2


def pair_relevance(q: Tensor, d: Tensor, out: Tensor | None = None, work: Tensor | None = None) -> Tensor:
    """Bool (Q, D) relevance of canonical labels (from :func:`label_pair`): equal ids, or >= 1 shared label.

    Indicators may also be passed as 0/1 float32 (converted once by the caller); ``work`` is an optional
    float32 (Q, D) scratch buffer for the shared-label counts, ``out`` an optional bool (Q, D) result.
    """
    if q.ndim == 1:
        return torch.eq(q[:, None], d[None, :], out=out) if out is not None else q[:, None] == d[None, :]
    # float32 counts shared labels exactly up to 2^24 labels; > 0 means relevant
    qf, df = q.to(torch.float32), d.to(torch.float32)
    counts = torch.mm(qf, df.T, out=work) if work is not None else qf @ df.T
    return torch.gt(counts, 0, out=out) if out is not None else counts > 0


def relevance(labels: object, other: object | None = None, what: str = "labels") -> Tensor:
    """Bool (N, N') relevance between ``labels`` and ``other`` (default: ``labels`` itself) by the shared rule."""
    if other is None:
        q = canonical_labels(labels, what)
        return pair_relevance(q, q)
    q, d, _ = label_pair(labels, other, what, f"other {what}")
    return pair_relevance(q, d)


def check_class_ids(labels: object, what: str = "labels") -> int:
    """The class count ``max id + 1`` of (N,) class ids, refusing ids far beyond the number of distinct classes.

    A model sized by the class count (a classifier head, CSQ centres) allocates one row per id up to the
    largest, so one outlier id (``10**9``) would ask for gigabytes. Ids are refused, not remapped: a remap would
    silently change what the saved model's outputs mean. Accepted: ids below :data:`SMALL_ID_RANGE`, or a range
    of at most :data:`SPARSE_IDS_FACTOR` times the distinct classes.
    """
    y = canonical_labels(labels, what)
    if y.ndim != 1:
        return int(y.shape[1])
    if y.numel() == 0:
        return 0
    top = int(y.max())
    distinct = int(torch.unique(y).numel())
    if top + 1 > max(SMALL_ID_RANGE, SPARSE_IDS_FACTOR * distinct):
        raise DataError(f"{what}: class ids go up to {top} but there are only {distinct} distinct classes, so a "
                        f"model would be sized for {top + 1} classes; map the ids to 0..{distinct - 1} first "
                        "(names, y = numpy.unique(labels, return_inverse=True))")
    return top + 1


def single_class(labels: object, what: str = "labels") -> str | None:
    """A warning when every item is relevant to every other (one class only), else None.

    Supervised losses are then zero and every relevance metric (P@k, mAP) is 1.0, which looks like success.
    """
    if labels is None:
        return None
    y = canonical_labels(labels, what)
    if y.shape[0] < 2:
        return None
    if y.ndim == 1:
        if not bool((y == y[0]).all()):
            return None
        kind = f"one class only (id {int(y[0])})"
    else:
        shared = torch.nonzero(y.all(0)).flatten()
        if shared.numel() == 0:
            return None
        kind = f"label {int(shared[0])} on every row"
    return (f"the {what} hold {kind}: supervised losses are zero and every relevance metric (P@k, mAP) is 1.0; "
            "give labels of at least two classes for a meaningful run")
