"""PCA whitening fitted on training rows only."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy import linalg
from scipy.sparse.linalg import eigsh
from torch import Tensor

from commonspace.data.dataset import DataError

__all__ = ["PCAWhitener"]

DENSE_MAX = 1000  # eigenproblems up to this size use dense LAPACK; larger ones Lanczos when k <= size / 4


class PCAWhitener:
    """Project onto the top principal components and scale each to unit variance.

    ``fit(x, rows)`` uses only ``rows`` of ``x`` (pass the training indices) in float64:
    ``mean = x.mean(0)``, ``x - mean = U S V^T``, ``var_k = S_k^2 / (n - 1)`` (sample variance, as in
    sklearn's ``PCA(whiten=True)``), computed as the top eigenpairs of the smaller of ``X^T X`` (d x d) and
    ``X X^T`` (n x n). ``transform(x) = (x - mean) V_k / sqrt(var_k + eps)``, so the fitted
    rows have covariance ``diag(var_k / (var_k + eps))``, the identity up to ``eps``. Component signs are
    fixed (largest-magnitude loading positive) so refits give identical output.
    """

    def __init__(self, n_components: int, eps: float = 1e-5) -> None:
        if n_components < 1:
            raise DataError(f"n_components must be >= 1, got {n_components}")
        if eps < 0:
            raise DataError(f"eps must be >= 0, got {eps}")
        self.n_components = int(n_components)
        self.eps = float(eps)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None  # (k, d), rows orthonormal
        self.variance: np.ndarray | None = None  # (k,) training variance of each component
        self.total_variance: float | None = None

    @property
    def fitted(self) -> bool:
        return self.components is not None

    def fit(self, x: np.ndarray | Tensor, rows: np.ndarray | Tensor | None = None) -> PCAWhitener:
        """Fit on ``x[rows]`` (all rows when None)."""
        x = _as_2d(x)
        if rows is not None:
            x = x[np.asarray(rows, dtype=np.int64)]
        n, d = x.shape
        k = self.n_components
        if k > min(n - 1, d):
            raise DataError(f"cannot keep {k} principal components of {n} rows x {d} features; at most "
                            f"{max(0, min(n - 1, d))} (fewer components or more training rows)")
        mean = x.mean(0)
        xc = x - mean
        if d <= n:
            # d x d scatter matrix is the smaller eigenproblem
            s2, evecs = _top_eigh(xc.T @ xc, k)
            comps = evecs.T
        else:
            # more features than rows: eigenvectors of the n x n Gram matrix give the same components
            s2, u = _top_eigh(xc @ xc.T, k)
            comps = (xc.T @ u / np.sqrt(np.maximum(s2, np.finfo(float).tiny))).T
            comps /= np.linalg.norm(comps, axis=1, keepdims=True)
        big = np.argmax(np.abs(comps), axis=1)
        comps *= np.sign(comps[np.arange(k), big])[:, None]
        self.mean, self.components = mean, comps
        self.variance = s2 / (n - 1)
        self.total_variance = float((xc ** 2).sum() / (n - 1))
        return self

    def transform(self, x: np.ndarray | Tensor) -> np.ndarray:
        """Whitened components (N, n_components), float32."""
        if not self.fitted:
            raise DataError("PCAWhitener.transform called before fit")
        x = _as_2d(x)
        if x.shape[1] != self.mean.shape[0]:
            raise DataError(f"got {x.shape[1]} features; the whitener was fitted on {self.mean.shape[0]}")
        z = (x - self.mean) @ self.components.T / np.sqrt(self.variance + self.eps)
        return z.astype(np.float32)

    def fit_transform(self, x: np.ndarray | Tensor, rows: np.ndarray | Tensor | None = None) -> np.ndarray:
        return self.fit(x, rows).transform(x)

    def inverse_transform(self, z: np.ndarray | Tensor) -> np.ndarray:
        """Back to the input space (the projection onto the kept components), float32."""
        if not self.fitted:
            raise DataError("PCAWhitener.inverse_transform called before fit")
        z = _as_2d(z)
        return (z * np.sqrt(self.variance + self.eps) @ self.components + self.mean).astype(np.float32)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        if not self.fitted or self.total_variance is None:
            raise DataError("PCAWhitener is not fitted (or was loaded from a state without total_variance)")
        return self.variance / self.total_variance

    def state_dict(self) -> dict[str, Tensor]:
        """float64 tensors (safetensors-ready): mean (d,), components (k, d), variance (k,), eps, total_variance."""
        if not self.fitted:
            raise DataError("PCAWhitener.state_dict called before fit")
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "components": torch.from_numpy(self.components.copy()),
            "variance": torch.from_numpy(self.variance.copy()),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "total_variance": torch.tensor(self.total_variance, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> PCAWhitener:
        missing = {"mean", "components", "variance"} - set(state)
        if missing:
            raise DataError(f"PCAWhitener state lacks {sorted(missing)}")
        self.mean = _np(state["mean"])
        self.components = _np(state["components"])
        self.variance = _np(state["variance"])
        if self.components.ndim != 2 or self.components.shape != (self.variance.shape[0], self.mean.shape[0]):
            raise DataError(f"inconsistent PCAWhitener state: components {self.components.shape}, variance "
                            f"{self.variance.shape}, mean {self.mean.shape}")
        self.n_components = int(self.components.shape[0])
        if "eps" in state:
            self.eps = float(state["eps"])
        self.total_variance = float(state["total_variance"]) if "total_variance" in state else None
        return self


def _top_eigh(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix.

    Dense LAPACK for small problems; for large ones with few components Lanczos (ARPACK, tol=0, i.e. to
    machine precision), because the dense tridiagonal reduction costs O(m^3) whatever k is. The start
    vector is seeded so fits are reproducible (a vector of ones would lie in the null space of a centred
    Gram matrix).
    """
    m = a.shape[0]
    if m <= DENSE_MAX or k > m // 4:
        evals, evecs = linalg.eigh(a, subset_by_index=(m - k, m - 1))
    else:
        v0 = np.random.default_rng(0).standard_normal(m)
        evals, evecs = eigsh(a, k=k, which="LA", v0=v0, tol=0)
    order = np.argsort(evals)[::-1]
    return np.maximum(evals[order], 0.0), evecs[:, order]


def _np(t: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _as_2d(x: np.ndarray | Tensor) -> np.ndarray:
    x = _np(x)
    if x.ndim != 2:
        raise DataError(f"expected a (N, d) array, got shape {x.shape}")
    return x
