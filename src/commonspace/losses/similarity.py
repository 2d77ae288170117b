"""Similarity penalties of Semantic Similarity Learning (SSL paper Sec. 3.2, Eq. 1-3).

``hx`` and ``hy`` are the shared-layer activations computed from modality x alone and modality y alone, each a
``(B, m)`` tensor whose rows are the samples of a mini-batch (the paper's ``H^x``, ``H^y`` are ``m x n``, i.e.
transposed). Every function returns a scalar where *lower means more similar*: it is the penalty added with
weight ``lambda`` to the training loss (Eq. 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CE_GRADS", "SIMILARITIES", "canonical_correlations", "cca_sim", "cross_entropy_sim", "similarity"]

#: kinds accepted by :func:`similarity`: H(H^x || H^y), H(H^y || H^x) (Eq. 2) and -||T||_tr (Eq. 3)
SIMILARITIES = ("ce_xy", "ce_yx", "cca")
#: where the cross-entropy's gradient goes: "fitted" (the second argument only; the first, the target, is
#: detached) or "both"
CE_GRADS = ("fitted", "both")


def _check_pair(hx: Tensor, hy: Tensor, *, same_width: bool) -> None:
    if hx.dim() != 2 or hy.dim() != 2:
        raise ValueError(f"activations must be (B, m) matrices, got shapes {tuple(hx.shape)} and {tuple(hy.shape)}")
    if hx.shape[0] != hy.shape[0]:
        raise ValueError(f"hx and hy must hold the same samples, got {hx.shape[0]} and {hy.shape[0]} rows")
    if same_width and hx.shape[1] != hy.shape[1]:
        raise ValueError(f"hx and hy must have the same hidden units, got shapes {tuple(hx.shape)}, {tuple(hy.shape)}")


def cross_entropy_sim(hx: Tensor, hy: Tensor, eps: float = 1e-6, grad: str = "both") -> Tensor:
    """Eq. 2: H(H^x || H^y) = -sum_k [H^x log H^y + (1 - H^x) log(1 - H^y)], averaged over the batch.

    Summed over hidden units and *averaged* over samples (the paper sums over the whole training set; the batch
    mean is an unbiased estimate of the per-sample sum and keeps ``lambda`` independent of the batch size).
    ``hy`` is clamped to ``[eps, 1 - eps]`` so a saturated sigmoid cannot produce ``log(0)``. Not symmetric.
    ``grad="both"`` differentiates both arguments; ``grad="fitted"`` detaches the target ``hx`` so only ``hy``
    moves towards it (the paper's Sec. 4.3 reading: one modality fits the other's expectation).
    """
    _check_pair(hx, hy, same_width=True)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    if grad not in CE_GRADS:
        raise ValueError(f"grad={grad!r}; choose one of {list(CE_GRADS)}")
    if grad == "fitted":
        hx = hx.detach()
    hy = hy.clamp(eps, 1.0 - eps)
    per_sample = -(hx * torch.log(hy) + (1.0 - hx) * torch.log1p(-hy)).sum(dim=1)
    return per_sample.mean()


def _shrunk(s: Tensor, shrink: float, reg: float) -> Tensor:
    """``(1 - shrink) S + shrink diag(S) + reg I``: shrinkage towards the diagonal (per-unit scale invariant)."""
    eye = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    if shrink > 0.0:
        s = (1.0 - shrink) * s + shrink * (s * eye)
    return s + reg * eye


def _covariances(hx: Tensor, hy: Tensor, reg: float, shrink: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Batch covariances S_xx, S_yy (shrunk towards their diagonals by ``shrink``, plus reg I) and S_xy
    (centred, divided by B - 1), in float64."""
    if hx.shape[0] < 2:
        raise ValueError(f"CCA needs at least 2 samples in the batch, got {hx.shape[0]}")
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink must lie in [0, 1], got {shrink}")
    # float64 throughout: whitening squares the condition number, float32 loses the small correlations.
    x = hx.to(torch.float64)
    y = hy.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    denom = x.shape[0] - 1
    sxx = _shrunk(x.T @ x / denom, shrink, reg)
    syy = _shrunk(y.T @ y / denom, shrink, reg)
    sxy = x.T @ y / denom
    return sxx, syy, sxy


def _cholesky(s: Tensor, name: str) -> Tensor:
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) != 0:
        raise ValueError(f"{name} is singular (a constant or collinear unit?); use reg > 0")
    return chol


def _sqrt_floor(lam: Tensor, eps: float) -> Tensor:
    """sqrt(lam) for lam >= eps, linear lam / sqrt(eps) below: exact at 0, continuous, finite slope."""
    # d sqrt(lam)/d lam is infinite at 0 (a vanishing canonical correlation); the linear piece caps it at
    # 1/sqrt(eps) while changing the value by at most sqrt(eps)/4.
    safe = lam.clamp(min=eps)
    return torch.where(lam >= eps, safe.sqrt(), lam.clamp(min=0.0) / math.sqrt(eps))


def cca_sim(hx: Tensor, hy: Tensor, reg: float = 1e-4, eps: float = 1e-8, shrink: float = 0.0) -> Tensor:
    """Eq. 3: -||T||_tr with T = S_xx^{-1/2} S_xy S_yy^{-1/2}, i.e. minus the sum of the canonical correlations.

    Covariances are taken over the batch (centred, divided by B - 1) with ``reg`` added to the diagonals of S_xx
    and S_yy. ``shrink`` in [0, 1] shrinks S_xx and S_yy towards their diagonals first: with as many units as
    samples the raw batch estimate is near singular and its correlation sum mostly chance (independent views
    score high), shrinkage keeps it well conditioned. Computed in float64 and cast back to the input dtype.
    ``hx`` and ``hy`` may differ in width.

    Stable gradient: whitening uses Cholesky factors (S = L L^T), giving T' = L_x^{-1} S_xy L_y^{-T}, which equals
    U_x^T T U_y for orthogonal U_x, U_y and therefore has the same singular values as T; unlike an eigh-based
    S^{-1/2}, its derivative has no 1/(lambda_i - lambda_j) terms, which are NaN for repeated eigenvalues. The
    trace norm is sum_i sqrt(lambda_i(G)) with G the smaller of T'^T T', T' T'^T; the eigenvalue-only derivative
    of eigvalsh (V diag(g) V^T) is finite for repeated eigenvalues, and eigenvalues below ``eps`` use a linear
    floor instead of the square root so a vanishing correlation does not give an infinite gradient.
    """
    _check_pair(hx, hy, same_width=False)
    sxx, syy, sxy = _covariances(hx, hy, reg, shrink)
    lx = _cholesky(sxx, "S_xx")
    ly = _cholesky(syy, "S_yy")
    a = torch.linalg.solve_triangular(lx, sxy, upper=False)  # L_x^{-1} S_xy
    t = torch.linalg.solve_triangular(ly, a.T, upper=False).T  # L_x^{-1} S_xy L_y^{-T}
    gram = t.T @ t if t.shape[0] >= t.shape[1] else t @ t.T
    gram = 0.5 * (gram + gram.T)  # exact symmetry for eigvalsh
    lam = torch.linalg.eigvalsh(gram)
    out_dtype = torch.promote_types(hx.dtype, hy.dtype)
    return -_sqrt_floor(lam, eps).sum().to(out_dtype)


def _inv_sqrt(s: Tensor, eps: float) -> Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=eps).rsqrt()) @ v.T


@torch.no_grad()
def canonical_correlations(hx: Tensor, hy: Tensor, reg: float = 1e-4, eps: float = 1e-12,
                           shrink: float = 0.0) -> Tensor:
    """The singular values of T = S_xx^{-1/2} S_xy S_yy^{-1/2} (Eq. 3), descending, ``min(m_x, m_y)`` of them.

    For tests and reporting, no gradient. Builds T literally (eigh inverse square roots, eigenvalues clamped at
    ``eps``), an independent route from the Cholesky one of :func:`cca_sim`; ``sum`` equals ``-cca_sim``.
    """
    _check_pair(hx, hy, same_width=False)
    sxx, syy, sxy = _covariances(hx, hy, reg, shrink)
    t = _inv_sqrt(sxx, eps) @ sxy @ _inv_sqrt(syy, eps)
    return torch.linalg.svdvals(t).to(torch.promote_types(hx.dtype, hy.dtype))


def similarity(hx: Tensor, hy: Tensor, kind: str, **kw: float) -> Tensor:
    """The SSL penalty ``sim(H^x, H^y)`` of Eq. 1 by name: ``"ce_xy"`` = H(H^x || H^y), ``"ce_yx"`` =
    H(H^y || H^x) (Eq. 2, both directions compared in the paper), ``"cca"`` = -||T||_tr (Eq. 3).

    Lower is more similar for every kind; ``kw`` goes to the underlying function (``eps``, ``grad``; ``reg``,
    ``eps``, ``shrink``).
    """
    if kind == "ce_xy":
        return cross_entropy_sim(hx, hy, **kw)
    if kind == "ce_yx":
        return cross_entropy_sim(hy, hx, **kw)
    if kind == "cca":
        return cca_sim(hx, hy, **kw)
    raise ValueError(f"unknown similarity {kind!r}; choose one of {list(SIMILARITIES)}")
