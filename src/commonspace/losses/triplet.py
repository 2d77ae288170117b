"""Triplet loss with in-batch semi-hard negative mining (CVS thesis Sec. 2.5 and Eq. 3.1.6).

Distances are squared Euclidean (Eq. 3.1.2). For every anchor-positive pair the negative is the hardest
*semi-hard* one, ``d(a,p) < d(a,n) < d(a,p) + margin``: the semi-hard negative closest to the anchor, the most
informative of those that neither give zero loss (easy) nor destabilise training (hard). When the band is empty
the hardest negative (smallest ``d(a,n)``) is used instead, so every anchor-positive pair with any negative
contributes a triplet.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from commonspace.data.labels import label_pair, pair_relevance

__all__ = ["same_label", "semihard_negatives", "squared_distances", "triplet_loss"]


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """(A, B) squared Euclidean distances ``|a_k - b_l|^2`` (Eq. 3.1.2), clamped at 0 against round-off."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1).unsqueeze(0)
    return d.clamp_min(0.0)


def same_label(y_a: Tensor, y_b: Tensor) -> Tensor:
    """(A, B) True where two samples share a class: equal ids, or for 0/1 multi-label rows any common label
    (the relevance rule of the metrics, :mod:`commonspace.data.labels`)."""
    return pair_relevance(*label_pair(y_a, y_b, "anchor labels", "other labels")[:2])


def semihard_negatives(d_ap: Tensor, d_an: Tensor, neg_mask: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Choose a negative for every anchor-positive pair.

    ``d_ap`` (A, P) anchor-positive distances, ``d_an`` (A, N) anchor-candidate distances, ``neg_mask`` (A, N)
    which candidates are negatives of each anchor. Returns ``(index, semihard)``, both (A, P): the chosen column
    of ``d_an`` and whether it came from the semi-hard band (else the fallback, the anchor's hardest negative).
    Ties go to the lowest column. Anchors without any negative get index 0 and ``semihard`` False; callers drop
    them.

    Each anchor's negatives are sorted once and every positive's band start found by binary search: O(A N log N)
    instead of the O(A P N) band tensor, and no autograd graph (only indices leave this function). float32 CPU
    tensors go through a compiled kernel of the same rule (:mod:`commonspace.losses._mining_kernel`, about 1.3x
    faster), others through torch's ``sort`` and ``searchsorted``.
    """
    if d_an.device.type == d_ap.device.type == "cpu" and d_an.dtype == d_ap.dtype == torch.float32 \
            and d_an.shape[1] > 0:
        from commonspace.losses._mining_kernel import semihard_rows32  # numba: imported on first use

        dp, dn = d_ap.detach().contiguous().numpy(), d_an.detach().contiguous().numpy()
        idx = np.empty(dp.shape, dtype=np.int64)
        semi = np.empty(dp.shape, dtype=np.bool_)
        semihard_rows32(dp, dn, neg_mask.contiguous().numpy(), np.array([margin], dtype=np.float32), idx, semi)
        return torch.from_numpy(idx), torch.from_numpy(semi)
    return _semihard_torch(d_ap, d_an, neg_mask, margin)


def _semihard_torch(d_ap: Tensor, d_an: Tensor, neg_mask: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """:func:`semihard_negatives` in torch ops, for any device."""
    with torch.no_grad():
        n = d_an.shape[1]
        inf = torch.tensor(float("inf"), dtype=d_an.dtype, device=d_an.device)
        dn, order = torch.where(neg_mask, d_an, inf).sort(dim=1, stable=True)
        dp = d_ap.detach().contiguous()
        first = torch.searchsorted(dn, dp, right=True)  # first negative strictly farther than the positive
        at = first.clamp_max(n - 1)
        cand = dn.gather(1, at)
        semihard = (first < n) & (cand < dp + margin) & torch.isfinite(cand)
        hard = order[:, :1].expand_as(at)
        return torch.where(semihard, order.gather(1, at), hard), semihard


def triplet_loss(anchors: Tensor, others: Tensor, y_a: Tensor, y_o: Tensor, margin: float,
                 anchor_mask: Tensor | None = None, other_mask: Tensor | None = None,
                 same: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean ``max(0, |f_a - f_p|^2 - |f_a - f_n|^2 + margin)`` over all in-batch triplets (one term of Eq. 3.1.6).

    Anchors are rows of ``anchors`` (modality x); positives and negatives are rows of ``others`` (modality y):
    a positive shares the anchor's class, a negative shares none. ``anchor_mask`` / ``other_mask`` (B,) say which
    rows exist (the modality is present); absent rows are never anchors, positives or negatives. ``same=True``
    (intra-modal term, ``others is anchors``) stops a sample from being its own positive. Every valid
    anchor-positive pair gives one triplet with its semi-hard (else hardest) negative; the mean is over those
    triplets, zero-loss ones included. Returns ``(loss, stats)`` with ``stats["triplets"]`` (count) and
    ``stats["semihard"]`` (fraction mined from the band).
    """
    na, no = anchors.shape[0], others.shape[0]
    am = torch.ones(na, dtype=torch.bool, device=anchors.device) if anchor_mask is None else anchor_mask.bool()
    om = torch.ones(no, dtype=torch.bool, device=anchors.device) if other_mask is None else other_mask.bool()
    d = squared_distances(anchors, others)
    match = same_label(y_a, y_o)
    valid = am.reshape(-1, 1) & om.reshape(1, -1)
    pos = match & valid
    if same:
        pos = pos & ~torch.eye(na, no, dtype=torch.bool, device=anchors.device)
    neg = ~match & valid
    idx, semi = semihard_negatives(d, d, neg, margin)
    d_an = d.gather(1, idx)
    use = pos & neg.any(1, keepdim=True)
    count = use.sum()
    per = torch.relu(d - d_an + margin)
    # the zero-triplet case still returns a tensor on the graph, so a total made only of it can be backpropagated
    loss = torch.where(use, per, torch.zeros_like(per)).sum() / count.clamp_min(1).to(per.dtype)
    stats = {"triplets": count.detach(),
             "semihard": (semi & use).sum().detach().to(per.dtype) / count.clamp_min(1).to(per.dtype)}
    return loss, stats
