"""The IMA model's pooling and importance losses (Importance-based Multimodal Autoencoder, Sec. 3).

Three small pieces, each usable on its own and vectorised over modalities (no per-sample loops):

* :func:`importance_pool`: the importance-weighted mean of the unimodal codes (Eq. 1).
* :func:`weighted_cross_covariance_loss`: ``L_corr``, the squared Frobenius norm of the cross-covariance of
  ``z`` and ``u_j`` with sample weights from the complement ``1 - y`` (Eq. 3).
* :func:`bernoulli_kl_prior`: ``L_local = KL(Bernoulli(mean_i y_ij) || Bernoulli(rho_j))`` (Eq. 4).

Shapes: ``B`` samples, ``M`` modalities, ``d`` latent size. ``mask`` is the batch presence mask; a missing
modality never contributes, whatever numbers sit in its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["bernoulli_kl_prior", "importance_pool", "weighted_cross_covariance_loss"]


def _mask_like(y: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones_like(y, dtype=torch.bool)
    if mask.shape != y.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the importances have {tuple(y.shape)}")
    return mask.to(torch.bool)


def importance_pool(u: Tensor, y: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Eq. 1: ``z_i = sum_j w_ij u_ij / sum_j w_ij`` with ``w_ij = p_ij (y_ij + eps)``.

    ``u`` (B, M, d) unimodal codes, ``y`` (B, M) importances in [0, 1], ``mask`` (B, M) presence ``p``.
    A missing modality has weight 0 (the paper sets ``y_j = 0``). ``eps`` (added to every *present*
    modality's weight) keeps the division defined when all present importances are ~0: ``z`` then tends to
    the plain mean of the present codes instead of 0/0. With ``eps=0`` this is Eq. 1 exactly. A sample with
    no modality present gets ``z = 0``. Rows of ``u`` for missing modalities may hold anything (even NaN).
    """
    if u.ndim != 3 or y.shape != u.shape[:2]:
        raise ValueError(f"importance_pool needs u (B, M, d) and y (B, M); got {tuple(u.shape)} and {tuple(y.shape)}")
    p = _mask_like(y, mask)
    w = torch.where(p, y + eps, torch.zeros_like(y))
    # where(), not multiplication: 0 * NaN garbage in a missing row would still be NaN
    num = torch.where(p.unsqueeze(-1), w.unsqueeze(-1) * u, torch.zeros_like(u)).sum(1)
    den = w.sum(1, keepdim=True)
    return num / den.clamp_min(torch.finfo(u.dtype).tiny)


def weighted_cross_covariance_loss(z: Tensor, u: Tensor, y: Tensor, mask: Tensor | None = None,
                                   eps: float = 1e-12) -> Tensor:
    """Eq. 3: ``L_corr^(j) = || sum_i w_ij (z_i - mu_z)(u_ij - mu_u)^T ||_F^2`` over the mini-batch.

    ``ybar_ij = 1 - y_ij``, ``w_ij = ybar_ij / sum_i ybar_ij`` (only samples where modality j is present),
    ``mu_z = sum_i w_ij z_i``, ``mu_u = sum_i w_ij u_ij``. ``z`` (B, d); ``u`` (B, d) with ``y``, ``mask``
    (B,) for one modality (returns a scalar), or ``u`` (B, M, d) with ``y``, ``mask`` (B, M) (returns (M,)).
    Minimising it gives high ``ybar`` (low importance) to the samples whose ``u_j`` is uncorrelated with ``z``.
    When no present sample has ``ybar > 0`` (all ``y = 1``, or modality absent) the weights are 0 and so is
    the loss; ``eps`` only guards that division.
    """
    single = u.ndim == 2
    if single:
        u, y = u.unsqueeze(1), y.unsqueeze(1)
        mask = None if mask is None else mask.reshape(-1, 1)
    if z.ndim != 2 or u.ndim != 3 or u.shape[0] != z.shape[0] or y.shape != u.shape[:2]:
        raise ValueError(f"weighted_cross_covariance_loss needs z (B, d), u (B, [M,] d), y (B, [M]); got "
                         f"{tuple(z.shape)}, {tuple(u.shape)}, {tuple(y.shape)}")
    p = _mask_like(y, mask)
    ybar = torch.where(p, 1.0 - y, torch.zeros_like(y))
    w = ybar / ybar.sum(0, keepdim=True).clamp_min(eps)  # (B, M), columns sum to 1 (or 0)
    u = torch.where(p.unsqueeze(-1), u, torch.zeros_like(u))  # garbage in missing rows must not reach the sums
    mu_z = torch.einsum("bm,bd->md", w, z)
    mu_u = torch.einsum("bm,bmd->md", w, u)
    zc = z.unsqueeze(1) - mu_z  # (B, M, d): z centred with modality j's weights
    uc = u - mu_u
    cov = torch.einsum("bm,bmd,bme->mde", w, zc, uc)  # (M, d_z, d_u)
    out = cov.pow(2).sum((-2, -1))
    return out[0] if single else out


def bernoulli_kl_prior(y: Tensor, rho: float | Sequence[float] | Tensor, mask: Tensor | None = None,
                       eps: float = 1e-6) -> Tensor:
    """Eq. 4's ``L_local^(j) = KL(Bernoulli(ybar_j) || Bernoulli(rho_j))``, ``ybar_j = mean_i y_ij``.

    The mean runs over the mini-batch samples where modality j is present (a batch-level prior, so single
    samples stay free to be 0 or 1). ``y`` (B,) with a float ``rho`` returns a scalar; ``y`` (B, M) with
    ``rho`` a float or M values returns (M,). A modality absent from the whole batch gives 0. Both
    probabilities are clamped to ``[eps, 1 - eps]`` so ``rho`` = 0 or 1 stays finite.
    """
    single = y.ndim == 1
    if single:
        y = y.unsqueeze(1)
        mask = None if mask is None else mask.reshape(-1, 1)
    p = _mask_like(y, mask)
    r = torch.as_tensor(rho, dtype=y.dtype, device=y.device).reshape(-1)
    if r.numel() not in (1, y.shape[1]):
        raise ValueError(f"rho has {r.numel()} values for {y.shape[1]} modalities")
    r = r.clamp(eps, 1 - eps)
    n = p.sum(0)
    mean = torch.where(p, y, torch.zeros_like(y)).sum(0) / n.clamp_min(1)
    q = mean.clamp(eps, 1 - eps)
    kl = q * torch.log(q / r) + (1 - q) * torch.log((1 - q) / (1 - r))
    kl = torch.where(n > 0, kl, torch.zeros_like(kl))
    return kl[0] if single else kl
