"""Cross-modal contrastive losses: CLIP's symmetric InfoNCE and its supervised variant (SupCon).

CLIP (Radford et al. 2021, Sec. 2.3 and the pseudo-code of Fig. 3): for L2-normalised embeddings ``a_i``, ``b_j``
of N paired samples the logits are ``s_ij = exp(t) a_i . b_j`` with a learnable log inverse temperature ``t``
(initialised to ``log(1 / 0.07)``, the scale ``exp(t)`` clipped at 100), and the loss is the mean of the two
cross-entropies, over rows (a -> b) and over columns (b -> a), with the paired sample as the target:

    L_ab = 1/2 [ -1/N sum_i log softmax_j(s_ij)[i]  -  1/N sum_j log softmax_i(s_ij)[j] ]

SupCon (Khosla et al. 2020, Eq. 2, ``L_out``) makes every candidate that shares a label with the anchor a
positive: ``-1/|P(i)| sum_{p in P(i)} log softmax_j(s_ij)[p]``, averaged over the anchors with at least one
positive, here across modalities (the candidates of an anchor in ``a`` are all rows of ``b``) and in both
directions. "Shares a label" is the relevance rule of the metrics (:mod:`commonspace.data.labels`).

Masks: a pair of modalities uses only the rows where both are present, as anchors and as candidates; with fewer
than 2 such rows (no negative to contrast with) the pair contributes nothing. :func:`contrastive_loss` averages
the pair terms over every unordered pair of modalities that has at least 2 such rows (docs/methods.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from commonspace.data.dataset import DataError
from commonspace.data.labels import canonical_labels, pair_relevance

__all__ = ["LOG_SCALE_INIT", "MAX_SCALE", "contrastive_loss", "info_nce", "logit_scale", "sup_con"]

#: CLIP's initial temperature 0.07, as a log inverse temperature
LOG_SCALE_INIT = math.log(1 / 0.07)
#: CLIP clips the logit scale at 100 "to prevent scaling the logits by more than 100" (Sec. 2.5)
MAX_SCALE = 100.0


def logit_scale(log_scale: Tensor, max_scale: float = MAX_SCALE) -> Tensor:
    """``exp(t)`` with ``t`` clipped at ``log(max_scale)``; beyond the clip ``t`` gets no gradient."""
    return log_scale.clamp(max=math.log(max_scale)).exp()


def _as_log_scale(log_scale: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(log_scale, Tensor):
        if log_scale.numel() != 1:
            raise DataError(f"log_scale must be a single number, got shape {tuple(log_scale.shape)}")
        return log_scale.reshape(())
    return torch.tensor(float(log_scale), dtype=like.dtype, device=like.device)


def _valid_rows(a: Tensor, b: Tensor, valid: Tensor | None) -> Tensor:
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"contrastive losses need two (B, d) batches of the same shape, got {tuple(a.shape)} and "
                        f"{tuple(b.shape)}; encode both modalities of the same rows into one space")
    if valid is None:
        return torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    if valid.shape != (a.shape[0],):
        raise DataError(f"valid must be a (B,) = ({a.shape[0]},) bool mask of the rows where both modalities are "
                        f"present, got shape {tuple(valid.shape)}")
    return valid.to(torch.bool)


def _zero(*tensors: Tensor) -> Tensor:
    """0 on the graph of ``tensors``, so ``backward`` works on a term that contributes nothing."""
    return sum(t.sum() for t in tensors) * 0.0


def info_nce(a: Tensor, b: Tensor, log_scale: Tensor | float, valid: Tensor | None = None,
             max_scale: float = MAX_SCALE) -> Tensor:
    """CLIP's symmetric InfoNCE between L2-normalised ``a``, ``b`` (B, d) over the rows where ``valid`` (B,) holds.

    Fewer than 2 valid rows: 0 (on the graph). ``log_scale`` is ``t`` of ``s_ij = exp(t) a_i . b_j``.
    """
    valid = _valid_rows(a, b, valid)
    t = _as_log_scale(log_scale, a)
    av, bv = a[valid], b[valid]
    n = av.shape[0]
    if n < 2:
        return _zero(a, b, t)
    logits = logit_scale(t, max_scale) * (av @ bv.T)
    target = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _sup_direction(logits: Tensor, pos: Tensor) -> Tensor:
    """Mean over anchors (rows) with >= 1 positive of ``-1/|P(i)| sum_{p in P(i)} log softmax(logits_i)[p]``."""
    logp = logits.log_softmax(dim=1)
    w = pos.to(logp.dtype)
    count = w.sum(1)
    per = -(w * logp).sum(1) / count.clamp_min(1.0)
    has = (count > 0).to(logp.dtype)
    # no anchor with a positive (multi-label rows without labels): the sum is 0 and stays on the graph
    return (per * has).sum() / has.sum().clamp_min(1.0)


def sup_con(a: Tensor, b: Tensor, labels: Tensor, log_scale: Tensor | float, valid: Tensor | None = None,
            max_scale: float = MAX_SCALE) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2) between two modalities of the same rows.

    ``labels`` (B,) class ids or (B, C) 0/1 rows belong to the rows (both modalities share them); ``j`` is a
    positive of anchor ``i`` when they share a label. Symmetric: the mean of the a -> b and b -> a terms. Fewer
    than 2 valid rows: 0 (on the graph).
    """
    valid = _valid_rows(a, b, valid)
    y = canonical_labels(labels, "labels")
    if y.shape[0] != a.shape[0]:
        raise DataError(f"labels have {y.shape[0]} rows but the embeddings {a.shape[0]}; give one label (row) per "
                        "sample")
    t = _as_log_scale(log_scale, a)
    av, bv, yv = a[valid], b[valid], y.to(a.device)[valid]
    if av.shape[0] < 2:
        return _zero(a, b, t)
    logits = logit_scale(t, max_scale) * (av @ bv.T)
    pos = pair_relevance(yv, yv)
    return 0.5 * (_sup_direction(logits, pos) + _sup_direction(logits.T, pos.T))


def contrastive_loss(z: Mapping[str, Tensor], present: Mapping[str, Tensor] | None, log_scale: Tensor | float,
                     labels: Tensor | None = None,
                     max_scale: float = MAX_SCALE) -> tuple[Tensor, dict[tuple[str, str], Tensor]]:
    """Mean pair term over every unordered pair of modalities of ``z`` with >= 2 rows where both are present.

    ``z[m]`` (B, d) L2-normalised, ``present[m]`` (B,) bool (None: all present). ``labels`` None: InfoNCE
    (:func:`info_nce`); else SupCon (:func:`sup_con`). Returns ``(total, {(m, o): term})`` with only the pairs
    that took part; with none the total is 0 on the graph.
    """
    mods = list(z)
    if len(mods) < 2:
        raise DataError(f"a contrastive loss needs at least 2 modalities, got {mods}; add another modality")
    first = z[mods[0]]
    t = _as_log_scale(log_scale, first)
    if present is None:
        present = {m: torch.ones(first.shape[0], dtype=torch.bool, device=first.device) for m in mods}
    y = None if labels is None else canonical_labels(labels, "labels")
    terms: dict[tuple[str, str], Tensor] = {}
    for i, m in enumerate(mods):
        for o in mods[i + 1:]:
            valid = present[m] & present[o]
            if int(valid.sum()) < 2:
                continue
            if y is None:
                terms[(m, o)] = info_nce(z[m], z[o], t, valid, max_scale)
            else:
                terms[(m, o)] = sup_con(z[m], z[o], y, t, valid, max_scale)
    if not terms:
        return _zero(*z.values(), t), terms
    return torch.stack(list(terms.values())).mean(), terms
