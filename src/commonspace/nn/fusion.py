"""Fusion of an image vector and a text vector into one joint representation (paper Fig. 2 B; the fusion
baselines Concat, GMU and MCB of the experiments).

* ``ConcatFusion``: ``h = [x_v; x_t]``.
* ``GMUFusion`` (gated multimodal unit, Arevalo et al. 2017): ``h_v = tanh(W_v x_v)``, ``h_t = tanh(W_t x_t)``,
  ``z = sigmoid(W_z [x_v; x_t])``, ``h = z * h_v + (1 - z) * h_t``.
* ``MCBFusion`` (multimodal compact bilinear pooling, Fukui et al. 2016, count sketch of Gao et al. 2016 /
  Pham & Pagh 2013): ``Psi(x)_j = sum_{i: h(i) = j} s(i) x_i`` with fixed random ``h`` (into D bins) and
  ``s`` (+-1), ``phi = irfft(rfft(Psi_v(x_v)) * rfft(Psi_t(x_t)))`` = the count sketch of the outer product
  ``x_v x_t^T`` with hash ``(h_v(i) + h_t(j)) mod D`` and sign ``s_v(i) s_t(j)``; then signed square root and
  L2 normalisation (Fukui et al.).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from commonspace.data.dataset import DataError

__all__ = ["FUSIONS", "ConcatFusion", "GMUFusion", "MCBFusion", "count_sketch", "make_fusion"]

FUSIONS = ("concat", "gmu", "mcb")


class ConcatFusion(nn.Module):
    """``[x_v; x_t]`` (no parameters)."""

    def __init__(self, dim_v: int, dim_t: int) -> None:
        super().__init__()
        self.out_dim = int(dim_v) + int(dim_t)

    def forward(self, x_v: Tensor, x_t: Tensor) -> Tensor:
        return torch.cat([x_v, x_t], dim=1)


class GMUFusion(nn.Module):
    """Bimodal GMU (Arevalo et al. 2017, Eq. 1-4), ``out_dim`` = ``width``."""

    def __init__(self, dim_v: int, dim_t: int, width: int = 512) -> None:
        super().__init__()
        self.w_v = nn.Linear(int(dim_v), int(width), bias=False)
        self.w_t = nn.Linear(int(dim_t), int(width), bias=False)
        self.w_z = nn.Linear(int(dim_v) + int(dim_t), int(width), bias=False)
        self.out_dim = int(width)

    def gate(self, x_v: Tensor, x_t: Tensor) -> Tensor:
        """``z = sigmoid(W_z [x_v; x_t])`` in [0, 1]: how much of each unit comes from the image."""
        return torch.sigmoid(self.w_z(torch.cat([x_v, x_t], dim=1)))

    def forward(self, x_v: Tensor, x_t: Tensor) -> Tensor:
        z = self.gate(x_v, x_t)
        return z * torch.tanh(self.w_v(x_v)) + (1 - z) * torch.tanh(self.w_t(x_t))


def count_sketch(x: Tensor, h: Tensor, s: Tensor, dim: int) -> Tensor:
    """``Psi(x)`` (B, dim): ``Psi(x)_j = sum_{i: h_i = j} s_i x_i`` (vectorised scatter-add)."""
    out = x.new_zeros(x.shape[0], int(dim))
    return out.index_add(1, h, x * s.to(x.dtype))


class MCBFusion(nn.Module):
    """Compact bilinear pooling into ``dim`` features (Fukui et al. use 16000).

    The hash indices and signs are fixed buffers drawn from ``seed`` (saved with the weights). ``normalize``
    applies Fukui et al.'s signed square root and L2 normalisation after the sketch.
    """

    def __init__(self, dim_v: int, dim_t: int, dim: int = 16000, seed: int = 0, normalize: bool = True) -> None:
        super().__init__()
        if int(dim) < 2:
            raise DataError(f"mcb_dim must be >= 2, got {dim}")
        g = torch.Generator().manual_seed(int(seed))
        self.out_dim, self.normalize = int(dim), bool(normalize)
        self.register_buffer("h_v", torch.randint(int(dim), (int(dim_v),), generator=g))
        self.register_buffer("s_v", torch.randint(2, (int(dim_v),), generator=g).float() * 2 - 1)
        self.register_buffer("h_t", torch.randint(int(dim), (int(dim_t),), generator=g))
        self.register_buffer("s_t", torch.randint(2, (int(dim_t),), generator=g).float() * 2 - 1)

    def bilinear(self, x_v: Tensor, x_t: Tensor) -> Tensor:
        """The raw MCB vector: circular convolution of the two count sketches, computed through the FFT."""
        d = self.out_dim
        fv = torch.fft.rfft(count_sketch(x_v, self.h_v, self.s_v, d), n=d, dim=1)
        ft = torch.fft.rfft(count_sketch(x_t, self.h_t, self.s_t, d), n=d, dim=1)
        return torch.fft.irfft(fv * ft, n=d, dim=1)

    def forward(self, x_v: Tensor, x_t: Tensor) -> Tensor:
        phi = self.bilinear(x_v, x_t)
        if not self.normalize:
            return phi
        # signed sqrt has an infinite slope at 0; the epsilon keeps gradients finite
        phi = torch.sign(phi) * torch.sqrt(phi.abs() + 1e-8)
        return nn.functional.normalize(phi, dim=1)


def make_fusion(kind: str, dim_v: int, dim_t: int, gmu_width: int = 512, mcb_dim: int = 16000,
                seed: int = 0) -> nn.Module:
    """A fusion module by name (``"concat"``, ``"gmu"``, ``"mcb"``); each has ``out_dim``."""
    if kind == "concat":
        return ConcatFusion(dim_v, dim_t)
    if kind == "gmu":
        return GMUFusion(dim_v, dim_t, gmu_width)
    if kind == "mcb":
        return MCBFusion(dim_v, dim_t, mcb_dim, seed)
    raise DataError(f"fusion={kind!r}; choose one of {list(FUSIONS)}")
