"""Linear CCA baseline, closed form (whitened cross-covariance SVD in float64)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel, register
from commonspace.models.bidnn import duplicate_missing, two_modalities
from commonspace.nn.mlp import flat_dim, masked_flat

__all__ = ["N_COMPONENTS_GRID", "LinearCCA", "fit_cca"]

log = logging.getLogger("commonspace.models.cca")

#: component counts tried on the validation split when the user gives no ``n_components`` (the BiDNN bench's grid)
N_COMPONENTS_GRID: tuple[int, ...] = (2, 4, 8, 10, 16, 32, 64)


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

    Hyper-parameters: ``n_components`` (None = chosen on the "val" split when the data has one and labels:
    the count of :data:`N_COMPONENTS_GRID` with the best mean cross-modal val mAP; else min(d1, d2); the choice
    is kept in the config and in ``selection``), ``reg`` (1e-3, added to both covariance
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
        # only a count the user left open is chosen on val; config["n_components"] then records the choice
        self._choose = n_components is None
        #: how n_components was chosen by the last fit (None: given, or nothing to choose on)
        self.selection: dict[str, Any] | None = None
        self.register_buffer("mean1", torch.zeros(d1))
        self.register_buffer("mean2", torch.zeros(d2))
        self.register_buffer("proj1", torch.zeros(d1, k))
        self.register_buffer("proj2", torch.zeros(d2, k))
        self.register_buffer("corr", torch.zeros(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit_closed_form(self, data: MultimodalDataset, split: str = "train") -> None:
        """Fit on the samples of ``split`` that have both modalities (``split=None``: all rows).

        With ``n_components`` left open and a "val" split with labels (and ``split`` given), the count is
        chosen there: see :meth:`select_n_components`.
        """
        self.check_data(data)
        idx = data.split(split) if split else torch.arange(data.n)
        rows = idx[self._complete(data, idx)]
        pair = data.select([self.m1, self.m2]).batch(rows).features  # only these rows are read (lazy data)
        x = pair[self.m1].reshape(rows.numel(), -1).double().numpy()
        y = pair[self.m2].reshape(rows.numel(), -1).double().numpy()
        kmax = min(x.shape[1], y.shape[1]) if self._choose else self.k
        # one fit with every component: the first k columns are exactly the fit with k components
        mx, my, a, b, s = fit_cca(x, y, kmax, float(self.config["reg"]))
        for name, val in (("mean1", mx), ("mean2", my), ("proj1", a), ("proj2", b), ("corr", s)):
            # assigning replaces the buffer: its width follows the number of components
            buf = getattr(self, name)
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(val)).to(device=buf.device, dtype=buf.dtype))
        self.k = kmax
        self.fitted.fill_(True)
        self.selection = None
        if self._choose:
            self.config["n_components"] = None
        if self._choose and split and "val" in data.splits and data.labels is not None:
            self.selection = self.select_n_components(data, "val")
            if self.selection is not None:
                self._keep(self.selection["n_components"])
                log.info("cca: %s", self.selection["summary"])

    def _complete(self, data: MultimodalDataset, idx: Tensor) -> Tensor:
        j1, j2 = data.modalities.index(self.m1), data.modalities.index(self.m2)
        return data.mask[idx, j1] & data.mask[idx, j2]

    def _keep(self, k: int) -> None:
        """Keep the first ``k`` components of the fit and record ``k`` in the config (checkpoints rebuild it)."""
        self.proj1 = self.proj1[:, :k].clone()
        self.proj2 = self.proj2[:, :k].clone()
        self.corr = self.corr[:k].clone()
        self.k = k
        self.config["n_components"] = k

    @torch.no_grad()
    def select_n_components(self, data: MultimodalDataset, val: str = "val",
                            grid: Sequence[int] = N_COMPONENTS_GRID) -> dict[str, Any] | None:
        """Choose the number of components of this fit on ``val``: the count in ``grid`` (at most the fitted
        components) with the best mean cross-modal mAP (both directions, cosine, full ranking) over the
        complete val pairs; ties go to the smaller count. None when no count or no complete val pair exists."""
        from commonspace.eval.retrieval import retrieval_metrics

        self._check_fitted()
        idx = data.split(val)
        idx = idx[self._complete(data, idx)]
        cands = [int(k) for k in grid if 1 <= int(k) <= self.k]
        if idx.numel() < 2 or not cands:
            return None
        z = {m: v.cpu() for m, v in self.encode(data.batch(idx).to(self.mean1.device)).items()}
        y = data.labels[idx]
        scores: dict[int, float] = {}
        for k in cands:
            e1, e2 = z[self.m1][:, :k], z[self.m2][:, :k]
            scores[k] = 0.5 * (float(retrieval_metrics(e1, e2, y, y)["map"])
                               + float(retrieval_metrics(e2, e1, y, y)["map"]))
        best = max(cands, key=lambda k: (scores[k], -k))
        summary = (f"n_components={best} chosen on the {val!r} split (mean cross-modal mAP {scores[best]:.3f}; "
                   f"tried {', '.join(map(str, cands))}); give n_components to set it yourself")
        return {"n_components": best, "split": val, "criterion": "mean cross-modal mAP", "scores": scores,
                "summary": summary}

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
