"""Small building blocks shared by the fully connected models: activations, MLPs, masked inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from commonspace.nn.dropout import Dropout, check_prob

__all__ = ["ACTIVATIONS", "MLP", "check_prob", "flat_dim", "glorot_", "make_activation", "masked_flat"]

#: activation names accepted by every model hyper-parameter called ``activation`` / ``output_activation``
ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``"linear"`` is the identity)."""
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name in ("linear", "identity"):
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}")


def flat_dim(shape: Sequence[int]) -> int:
    """Number of features of one sample of this shape (feature maps are flattened)."""
    return int(math.prod(shape))


def masked_flat(x: Tensor, present: Tensor) -> Tensor:
    """Flatten per-sample features to (B, d) and zero the rows whose modality is missing.

    Models must trust the mask, not the zeros: a hand-built :class:`Batch` may carry garbage in masked rows.
    """
    flat = x.reshape(x.shape[0], -1)
    return flat * present.reshape(-1, 1).to(flat.dtype)


def glorot_(linear: nn.Linear) -> nn.Linear:
    """Glorot-uniform weights and zero biases (Lasagne's ``DenseLayer`` default, used by the BiDNN code)."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


class MLP(nn.Sequential):
    """Fully connected stack ``sizes[0] -> ... -> sizes[-1]``.

    ``activation`` follows every hidden layer, ``output_activation`` the last one; ``dropout`` (if > 0) is
    applied after every hidden activation.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh", output_activation: str = "linear",
                 dropout: float = 0.0) -> None:
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(glorot_(nn.Linear(int(sizes[i]), int(sizes[i + 1]))))
            last = i == len(sizes) - 2
            layers.append(make_activation(output_activation if last else activation))
            if not last and dropout > 0:
                layers.append(Dropout(dropout))
        super().__init__(*layers)
