"""Linear CCA baseline, closed form (whitened cross-covariance SVD in float64)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel, register
from commonspace.models.bidnn import duplicate_missing, two_modalities
from commonspace.nn.mlp import flat_dim, masked_flat

__all__ = ["LinearCCA", "fit_cca"]


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    """C^{-1/2} of a symmetric positive definite matrix via its eigendecomposition."""
    vals, vecs = np.linalg.eigh(c)
    if vals.min() <= 0:
        raise DataError(f"a covariance matrix is not positive definite (smallest eigenvalue {vals.min():.3g}); "
                        "increase reg or remove constant / duplicated features")
    return (vecs / np.sqrt(vals)) @ vecs.T


def fit_cca(x: np.ndarray, y: np.ndarray, k: int, reg: float) -> tuple[np.ndarray, ...]:
    """Regularised linear CCA of paired rows ``x`` (n, p) and ``y`` (n, q), keeping ``k`` components.

    With ``Cxx = cov(x) + reg I``, ``Cyy = cov(y) + reg I``, ``Cxy = cov(x, y)``:
    ``T = Cxx^{-1/2} Cxy Cyy^{-1/2} = U S V^T``, ``A = Cxx^{-1/2} U_k``, ``B = Cyy^{-1/2} V_k``, correlations
    ``S_k``. Returns ``(mean_x, mean_y, A, B, corr)``; ``(x - mean_x) A`` has unit (regularised) variance.
    This direct solution is exact and non-iterative, unlike scikit-learn's ``CCA`` (NIPALS with deflation),
    which is slow for many components and less stable on ill-conditioned data.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise DataError(f"CCA needs at least 2 complete training pairs, got {n}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cxx = xc.T @ xc / (n - 1) + reg * np.eye(x.shape[1])
    cyy = yc.T @ yc / (n - 1) + reg * np.eye(y.shape[1])
    cxy = xc.T @ yc / (n - 1)
    wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(wx @ cxy @ wy, full_matrices=False)
    a = wx @ u[:, :k]
    b = wy @ vt[:k].T
    # Fix each pair's sign (the SVD's is arbitrary) so refits give the same projections.
    flip = np.where(a[np.abs(a).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
    return mx, my, a * flip, b * flip, s[:k]


@register("cca")
class LinearCCA(MultimodalModel):
    """Linear CCA between exactly two modalities, fitted on the complete training pairs.

    Hyper-parameters: ``n_components`` (None = min(d1, d2)), ``reg`` (1e-3, added to both covariance
    diagonals; the features are standardised so an absolute value is meaningful), ``scale_by_corr`` (False;
    if True each canonical variate is multiplied by its correlation, which down-weights weakly shared
    directions). State (means, projections, correlations, a fitted flag) lives in buffers, so checkpoints hold
    it. ``encode`` = per-modality canonical variates; ``embed`` = their concatenation with the BiDNN rule (a
    missing modality's half duplicates the present one).
    """

    trainable = False

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], n_components: int | None = None,
                 reg: float = 1e-3, scale_by_corr: bool = False) -> None:
        super().__init__(dims)
        two_modalities(self.dims, "CCA")
        self.m1, self.m2 = self.modalities
        d1, d2 = flat_dim(self.dims[self.m1]), flat_dim(self.dims[self.m2])
        k = min(d1, d2) if n_components is None else int(n_components)
        if not 1 <= k <= min(d1, d2):
            raise DataError(f"n_components must be in [1, {min(d1, d2)}] (the smaller dimension), got {k}")
        if float(reg) < 0:
            raise DataError(f"reg must be >= 0, got {reg}")
        self.save_config(n_components=None if n_components is None else k, reg=float(reg),
                         scale_by_corr=bool(scale_by_corr))
        self.k = k
        self.register_buffer("mean1", torch.zeros(d1))
        self.register_buffer("mean2", torch.zeros(d2))
        self.register_buffer("proj1", torch.zeros(d1, k))
        self.register_buffer("proj2", torch.zeros(d2, k))
        self.register_buffer("corr", torch.zeros(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit_closed_form(self, data: MultimodalDataset, split: str = "train") -> None:
        """Fit on the samples of ``split`` that have both modalities (``split=None``: all rows)."""
        self.check_data(data)
        idx = data.split(split) if split else torch.arange(data.n)
        j1, j2 = data.modalities.index(self.m1), data.modalities.index(self.m2)
        rows = idx[data.mask[idx, j1] & data.mask[idx, j2]]
        x = data.features[self.m1].index_select(0, rows).reshape(rows.numel(), -1).double().numpy()
        y = data.features[self.m2].index_select(0, rows).reshape(rows.numel(), -1).double().numpy()
        mx, my, a, b, s = fit_cca(x, y, self.k, float(self.config["reg"]))
        for name, val in (("mean1", mx), ("mean2", my), ("proj1", a), ("proj2", b), ("corr", s)):
            buf = getattr(self, name)
            buf.copy_(torch.from_numpy(np.ascontiguousarray(val)).to(buf.dtype))
        self.fitted.fill_(True)

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise DataError("this CCA model is not fitted; call fit_closed_form(data) first")

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Canonical variates ``(x1 - mean1) A`` and ``(x2 - mean2) B`` (times the correlations if scaled)."""
        self._check_fitted()
        p1, p2 = batch.present(self.m1), batch.present(self.m2)
        z1 = (masked_flat(batch.features[self.m1], p1) - self.mean1) @ self.proj1
        z2 = (masked_flat(batch.features[self.m2], p2) - self.mean2) @ self.proj2
        if self.config["scale_by_corr"]:
            z1, z2 = z1 * self.corr, z2 * self.corr
        return {self.m1: z1, self.m2: z2}

    def embed(self, batch: Batch) -> Tensor:
        """[z1, z2] with a missing modality's half duplicated from the present one (zeros if neither)."""
        z = self.encode(batch)
        return duplicate_missing(z[self.m1], z[self.m2], batch.present(self.m1), batch.present(self.m2))
