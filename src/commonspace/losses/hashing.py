"""Supervised hashing losses: the triplet ranking loss of modal-aware multimodal hashing and the unimodal
baselines of its experiments (DPSH, DSH, HashNet, DTH, CSQ). Equations in docs/methods_hashing.md.

Relevance is the rule the metrics use (:mod:`commonspace.data.labels`): equal class ids for (B,) labels or an
integer (B, 1) column, at least one shared label for bool (B, C) or 0/1 (B, C >= 2) indicators.
Codes are (B, K) with K bits; ``u`` is a head's real output, ``b = tanh(u)`` its relaxed code, ``sign(u)`` the
binary code. Everything is vectorised over the batch (pairs are (B, B) matrices, triplets a (B, B, B) tensor).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from commonspace.data.dataset import DataError
from commonspace.data.labels import canonical_labels
from commonspace.data.labels import relevance as shared_relevance

__all__ = [
    "TRIPLET_AVERAGES", "csq_loss", "csq_targets", "dpsh_loss", "dsh_loss", "hadamard", "hash_centres", "hashnet_loss",
    "quantization_penalty", "relaxed_hamming", "relevance", "sign_codes", "triplet_quant_loss",
    "triplet_ranking_loss",
]


#: how :func:`triplet_ranking_loss` averages its hinges: over the margin violators, or over every triplet
TRIPLET_AVERAGES = ("active", "all")


def _labels(labels: Tensor | None) -> Tensor:
    """Canonical batch labels (int64 ids or bool indicators) by the shared rule of :mod:`commonspace.data.labels`."""
    if labels is None:
        raise DataError("supervised hashing needs labels (batch.labels is None); give the dataset labels")
    return canonical_labels(labels, "labels")


def relevance(labels: Tensor, other: Tensor | None = None) -> Tensor:
    """Bool (B, B'): ``S_ij = 1`` when samples i and j are relevant by the rule the metrics use
    (:mod:`commonspace.data.labels`): equal class ids, or a shared label (an all-False row shares none)."""
    return shared_relevance(_labels(labels), other, "labels")


def sign_codes(u: Tensor) -> Tensor:
    """Binary codes in {-1, +1} as int8 (``sign(0)`` is read as +1, so every bit is set)."""
    return torch.where(u >= 0, 1, -1).to(torch.int8)


def relaxed_hamming(a: Tensor, b: Tensor | None = None) -> Tensor:
    """``d_ij = ||a_i - b_j||^2 / 4`` (B, B'): the Hamming distance when the codes are in {-1, +1}."""
    b = a if b is None else b
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1).reshape(1, -1) - 2 * a @ b.T
    return sq.clamp_min(0) / 4


def quantization_penalty(b: Tensor) -> Tensor:
    """``mean_i ||b_i - sign(b_i)||^2 / K``: per-bit squared distance to the nearest vertex of the hypercube."""
    return (b - torch.where(b >= 0, 1.0, -1.0).to(b.dtype)).pow(2).mean()


def _offdiag(n: int, device: torch.device) -> Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def _zero(x: Tensor) -> Tensor:
    """A zero that keeps the graph (a batch without usable pairs still backpropagates)."""
    return x.sum() * 0


def triplet_ranking_loss(b: Tensor, labels: Tensor, margin: float = 0.25, average: str = "active") -> Tensor:
    """``max(0, m K + d_ij - d_ik) / K`` over the in-batch triplets with j relevant to i (j != i) and k
    irrelevant; ``d`` = :func:`relaxed_hamming`, ``m`` = ``margin`` as a fraction of the K bits.

    ``average="active"`` (default) means over the triplets that violate the margin (hinge > 0): every satisfied
    triplet would otherwise dilute the gradient of the few that still teach, which shrinks as training goes on;
    ``"all"`` means over every valid triplet. No active triplet gives a graph-keeping 0.
    """
    if average not in TRIPLET_AVERAGES:
        raise DataError(f"average={average!r}; choose 'active' or 'all'")
    k_bits = b.shape[1]
    rel = relevance(labels)
    pos = rel & _offdiag(b.shape[0], b.device)
    neg = ~rel
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)  # (anchor, positive, negative)
    if not bool(valid.any()):
        return _zero(b)
    d = relaxed_hamming(b)
    hinge = F.relu(margin * k_bits + d.unsqueeze(2) - d.unsqueeze(1))
    if average == "active":
        valid = valid & (hinge > 0)
        if not bool(valid.any()):
            return _zero(b)
    return hinge[valid].mean() / k_bits


def triplet_quant_loss(b: Tensor, labels: Tensor, margin: float, quant_weight: float,
                       average: str = "active") -> dict[str, Tensor]:
    """``triplet + quant_weight * quant`` on relaxed codes ``b`` (modal-aware hashing, DTH, TextHash): the
    :func:`triplet_ranking_loss` plus the :func:`quantization_penalty` (a graph-keeping zero on an empty batch)."""
    tri = triplet_ranking_loss(b, labels, margin, average)
    quant = quantization_penalty(b) if b.numel() else _zero(b)
    return {"total": tri + quant_weight * quant, "triplet": tri, "quant": quant}


def dpsh_loss(u: Tensor, labels: Tensor, eta: float = 0.1) -> dict[str, Tensor]:
    """DPSH (Li et al. 2016): ``Theta_ij = u_i.u_j / 2``,
    ``L = mean_{i!=j} [log(1 + e^Theta_ij) - S_ij Theta_ij] + eta mean_i ||b_i - u_i||^2 / K``, ``b = sign(u)``."""
    n = u.shape[0]
    s = relevance(labels).to(u.dtype)
    theta = u @ u.T / 2
    off = _offdiag(n, u.device)
    lik = (F.softplus(theta) - s * theta)[off].mean() if n > 1 else _zero(u)
    quant = quantization_penalty(u)  # ||b_i - u_i||^2 / K with b = sign(u), for unbounded u too
    return {"total": lik + eta * quant, "likelihood": lik, "quant": quant}


def dsh_loss(u: Tensor, labels: Tensor, margin: float | None = None, alpha: float = 0.01) -> dict[str, Tensor]:
    """DSH (Liu et al. 2016): over pairs i < j, ``1/2 S_ij ||u_i - u_j||^2 + 1/2 (1 - S_ij) max(m - ||u_i - u_j||^2,
    0)`` with ``m = 2K``, plus ``alpha mean_i || |u_i| - 1 ||_1`` (the regulariser towards +-1)."""
    n, k_bits = u.shape
    m = 2.0 * k_bits if margin is None else float(margin)
    s = relevance(labels).to(u.dtype)
    d2 = relaxed_hamming(u) * 4
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=u.device), diagonal=1)
    per = 0.5 * s * d2 + 0.5 * (1 - s) * F.relu(m - d2)
    pair = per[upper].mean() if n > 1 else _zero(u)
    reg = (u.abs() - 1).abs().sum(1).mean()
    return {"total": pair + alpha * reg, "pairwise": pair, "reg": reg}


def hashnet_loss(z: Tensor, labels: Tensor, alpha: float | None = None) -> dict[str, Tensor]:
    """HashNet (Cao et al. 2017) weighted pairwise cross-entropy on ``z = tanh(beta u)``:
    ``l_ij = log(1 + exp(alpha z_i.z_j)) - alpha S_ij z_i.z_j``, weights ``|S|/|S_1|`` (similar) and
    ``|S|/|S_0|`` (dissimilar), i.e. the mean of the similar-pair mean and the dissimilar-pair mean.
    ``alpha`` = 10 / K by default (so ``alpha z_i.z_j`` lies in [-10, 10])."""
    n, k_bits = z.shape
    a = 10.0 / k_bits if alpha is None else float(alpha)
    s = relevance(labels)
    off = _offdiag(n, z.device)
    ip = a * (z @ z.T)
    per = F.softplus(ip) - s.to(z.dtype) * ip
    terms = []
    for part in (s & off, ~s & off):  # two masks, not a per-sample loop
        if bool(part.any()):
            terms.append(per[part].mean())
    loss = torch.stack(terms).mean() if terms else _zero(z)
    return {"total": loss, "pairwise": loss}


def hadamard(n: int) -> Tensor:
    """Sylvester's Hadamard matrix (n x n, n a power of 2) with entries +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of 2, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hash_centres(bits: int, n: int, seed: int = 0) -> Tensor:
    """CSQ hash centres (Yuan et al. 2020, Sec. 3.2): the first ``n`` rows of ``[H_K; -H_K]`` when K is a power of 2
    and ``n <= 2K`` (mutual Hamming distance >= K/2); otherwise Bernoulli(0.5) random +-1 centres from ``seed``.
    Returns float (n, K)."""
    if bits >= 1 and not bits & (bits - 1) and n <= 2 * bits:
        h = hadamard(bits)
        return torch.cat([h, -h], 0)[:n]
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(2, (n, bits), generator=g).float() * 2 - 1


def _tie_breaker(bits: int, seed: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) + 1)
    return (torch.randint(2, (bits,), generator=g).float() * 2 - 1).to(device)


def csq_targets(labels: Tensor, bits: int, num_classes: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sample centres (B, K) in {-1, +1} and a bool (B,) "has a centre".

    Single-label: the class's centre. Multi-label: ``sign(sum of the sample's labels' centres)``, ties broken by
    a fixed random +-1 vector (CSQ's rule); a sample without labels has no centre.
    """
    labels = _labels(labels)  # an integer (B, 1) column is class ids here too
    dev = labels.device
    if labels.ndim == 1:
        top = int(labels.max()) + 1 if labels.numel() else 1
        if num_classes is None:
            # the Hadamard rows do not depend on the class count up to 2K: batches agree without num_classes
            if top > 2 * bits or bits & (bits - 1):
                raise DataError(f"CSQ with {bits} bits and class ids up to {top - 1} needs num_classes (random "
                                "centres depend on it); pass num_classes=<number of classes>")
            n = min(2 * bits, max(top, 1))
        else:
            if top > int(num_classes):
                raise DataError(f"class id {top - 1} >= num_classes={num_classes}")
            n = int(num_classes)
        centres = hash_centres(bits, n, seed).to(dev)
        return centres[labels], torch.ones(labels.shape[0], dtype=torch.bool, device=dev)
    centres = hash_centres(bits, labels.shape[1], seed).to(dev)
    summed = labels.to(centres.dtype) @ centres
    target = torch.where(summed > 0, 1.0, -1.0)
    target = torch.where(summed == 0, _tie_breaker(bits, seed, dev).expand_as(target), target)
    return target, labels.any(1)


def csq_loss(u: Tensor, labels: Tensor, num_classes: int | None = None, lam: float = 1e-4,
             seed: int = 0) -> dict[str, Tensor]:
    """CSQ (Yuan et al. 2020): ``L_C = mean_{i,k} BCE((h_ik + 1)/2, (c_ik + 1)/2)`` with ``h = tanh(u)`` (computed
    as BCE-with-logits on ``2u``, since ``(tanh u + 1)/2 = sigmoid(2u)``), plus
    ``lam * mean_{i,k} log cosh(|h_ik| - 1)``."""
    target, has = csq_targets(labels, u.shape[1], num_classes, seed)
    if not bool(has.any()):
        central = _zero(u)
    else:
        bce = F.binary_cross_entropy_with_logits(2 * u, (target + 1) / 2, reduction="none").mean(1)
        central = bce[has].mean()
    h = torch.tanh(u)
    x = h.abs() - 1
    # log cosh(x) = x + softplus(-2x) - log 2, stable for any x
    quant = (x + F.softplus(-2 * x) - math.log(2.0)).mean()
    return {"total": central + lam * quant, "central": central, "quant": quant}
