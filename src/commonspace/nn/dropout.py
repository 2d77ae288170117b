"""Inverted dropout with a cheaper mask on CPU.

On CPU ``torch.nn.Dropout`` draws its mask with ``bernoulli_``, one double from the generator per element in a
serial loop: 11-14 ns an element, 344 us for a (128 x 256) activation (docs/benchmarks.md, issue 16). Here a
mask element is 31 bits of the generator's 64-bit output, compared with ``round(p * 2^31)``: each draw covers
two elements, 138 us for the same call (forward and backward: 156 against 267 us). The two halves of one
``int64`` from ``random_()`` (63 uniform bits, the value modulo 2^63) each keep 31 uniform bits under
``& 0x7FFFFFFF``. The keep probability is ``1 - round(p * 2^31) / 2^31``, within 2^-32 of ``1 - p``; kept units
are scaled by ``1 / (1 - p)`` as in ``nn.Dropout``. The random stream differs from ``nn.Dropout``'s, so a seed
gives other masks than torch's. Off CPU, ``torch.nn.functional.dropout`` (a fused kernel there) is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from commonspace.data.dataset import DataError

__all__ = ["Dropout", "check_prob", "dropout_mask"]

_BITS = 31
_LOW31 = (1 << _BITS) - 1


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
    """A boolean keep-mask of ``shape``: True with probability ``1 - round(p * 2^31) / 2^31``."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(generator=generator)
    halves = words.view(torch.int32)[:n]
    return ((halves & _LOW31) >= round(p * (1 << _BITS))).reshape(shape)


def check_prob(name: str, p: float) -> float:
    """Validate a probability hyper-parameter (dropout rates) and return it as a float."""
    if not 0.0 <= float(p) <= 1.0:
        raise DataError(f"{name} must be in [0, 1], got {p}")
    return float(p)


class Dropout(nn.Module):
    """Inverted dropout (``nn.Dropout``'s contract) whose CPU mask costs one 64-bit draw per two elements."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_prob("dropout", p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        keep = dropout_mask(x.shape, self.p, x.device).to(x.dtype)
        return x * keep.mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
