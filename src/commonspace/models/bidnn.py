"""BiDNN: bidirectional symmetric deep neural networks with tied central weights (Vukotic et al., 2016).

Two crossmodal networks, modality 1 -> modality 2 and modality 2 -> modality 1, share their two central weight
matrices: path 2 uses the transposes of path 1's ``W(2)`` and ``W(3)`` (paper Sec. 2.2). Reference-code facts
the paper leaves out: tanh on every layer including the outputs, only the weights are tied (biases and outer
layers are not), dropout 0.2 after the central layer, MSE in both directions, Nesterov SGD (lr 0.1, momentum
0.9, batch 128), training on complete pairs only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError
from commonspace.models.base import MultimodalModel, register
from commonspace.nn.dropout import Dropout
from commonspace.nn.mlp import ACTIVATIONS, check_prob, flat_dim, glorot_, make_activation, masked_flat
from commonspace.nn.tied import TiedLinear

__all__ = ["BiDNN", "duplicate_missing", "masked_pair_mse"]


def duplicate_missing(h1: Tensor, h2: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """The BiDNN embedding rule: ``[h1, h2]``, a missing half replaced by the present one, zeros if neither.

    ``p1``/``p2`` are the (B,) presence masks. Duplication keeps embeddings comparable whatever modalities a
    sample has (paper Sec. 2.2, last paragraph).
    """
    c1, c2 = p1.reshape(-1, 1), p2.reshape(-1, 1)
    zero = torch.zeros_like(h1)
    e1 = torch.where(c1, h1, torch.where(c2, h2, zero))
    e2 = torch.where(c2, h2, torch.where(c1, h1, zero))
    return torch.cat([e1, e2], dim=1)


def masked_pair_mse(pred: Tensor, target: Tensor, rows: Tensor) -> Tensor:
    """Mean squared error averaged over features and over the samples where ``rows`` is True.

    When every row counts this is exactly ``F.mse_loss(pred, target)`` (a mean over the batch), so gradient
    averaging across data-parallel workers stays exact; rows that cannot be scored (a missing target) add
    nothing instead of pulling the output towards the zero placeholder.
    """
    per_sample = (pred - target).pow(2).mean(dim=1)
    w = rows.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp_min(1.0)


def two_modalities(dims: Mapping[str, object], method: str) -> None:
    if len(dims) != 2:
        raise DataError(f"{method} works on exactly two modalities; got {len(dims)} ({list(dims)}). Select two "
                        "with MultimodalDataset.select([...])")


@register("bidnn")
class BiDNN(MultimodalModel):
    """Bidirectional symmetric DNN (paper Sec. 2.2 equations; sizes 200-100-200 by default).

    Modality 1 is the first key of ``dims``, modality 2 the second. Hyper-parameters:

    * ``hidden`` (200): size of ``h(1)`` and ``h(3)``; ``central`` (100): size of the joint layer ``h(2)``;
    * ``dropout`` (0.2): dropout on the central layer's output during training;
    * ``activation`` ("tanh"): ``f`` of the hidden layers;
    * ``output_activation`` ("tanh"): ``f`` of ``o1``/``o2``. The reference code uses tanh, which bounds the
      translation to [-1, 1] although standardised features can lie outside; ``"linear"`` removes the bound.
    """

    requires_complete = True
    train_defaults = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "batch_size": 128}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], hidden: int = 200,
                 central: int = 100, dropout: float = 0.2, activation: str = "tanh",
                 output_activation: str = "tanh") -> None:
        super().__init__(dims)
        two_modalities(self.dims, "BiDNN")
        for name, act in (("activation", activation), ("output_activation", output_activation)):
            if act not in ACTIVATIONS:
                raise DataError(f"{name}={act!r}; choose one of {list(ACTIVATIONS)}")
        if int(hidden) < 1 or int(central) < 1:
            raise DataError(f"hidden and central must be positive, got {hidden} and {central}")
        self.save_config(hidden=int(hidden), central=int(central), dropout=check_prob("dropout", dropout),
                         activation=activation, output_activation=output_activation)
        self.m1, self.m2 = self.modalities
        d1, d2 = flat_dim(self.dims[self.m1]), flat_dim(self.dims[self.m2])
        h, c = int(hidden), int(central)
        # W1(1), W2(1): the untied input layers of the two paths.
        self.enc1 = glorot_(nn.Linear(d1, h))
        self.enc2 = glorot_(nn.Linear(d2, h))
        # W(2) (c x h) with b1(2) as `bias` and b2(3) as `bias_t`; W(3) (h x c) with b1(3) and b2(2).
        self.tied2 = TiedLinear(h, c)
        self.tied3 = TiedLinear(c, h)
        # W1(4) maps path 1 into modality 2's space, W2(4) maps path 2 into modality 1's space.
        self.dec1 = glorot_(nn.Linear(h, d2))
        self.dec2 = glorot_(nn.Linear(h, d1))
        self.f = make_activation(activation)
        self.f_out = make_activation(output_activation)
        self.drop = Dropout(float(dropout))

    # The tied matrices under the paper's names: one Parameter each, read by both paths.
    @property
    def W2(self) -> nn.Parameter:  # noqa: N802  (paper notation)
        return self.tied2.weight

    @property
    def W3(self) -> nn.Parameter:  # noqa: N802  (paper notation)
        return self.tied3.weight

    # ---------------------------------------------------------------- paths
    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p1, p2 = batch.present(self.m1), batch.present(self.m2)
        return masked_flat(batch.features[self.m1], p1), masked_flat(batch.features[self.m2], p2), p1, p2

    def central1(self, x1: Tensor) -> Tensor:
        """h1(2) = f(W(2) f(W1(1) x1 + b1(1)) + b1(2))."""
        return self.f(self.tied2(self.f(self.enc1(x1))))

    def central2(self, x2: Tensor) -> Tensor:
        """h2(2) = f(W(3)^T f(W2(1) x2 + b2(1)) + b2(2))."""
        return self.f(self.tied3.transposed(self.f(self.enc2(x2))))

    def out1(self, h1c: Tensor) -> Tensor:
        """o1 = f(W1(4) f(W(3) h1(2) + b1(3)) + b1(4)), in modality 2's space."""
        return self.f_out(self.dec1(self.f(self.tied3(self.drop(h1c)))))

    def out2(self, h2c: Tensor) -> Tensor:
        """o2 = f(W2(4) f(W(2)^T h2(2) + b2(3)) + b2(4)), in modality 1's space."""
        return self.f_out(self.dec2(self.f(self.tied2.transposed(self.drop(h2c)))))

    # ------------------------------------------------------------- contract
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """MSE(o1, x2) + MSE(o2, x1) over the complete pairs of the batch (mean-reduced)."""
        x1, x2, p1, p2 = self._inputs(batch)
        both = p1 & p2
        l12 = masked_pair_mse(self.out1(self.central1(x1)), x2, both)
        l21 = masked_pair_mse(self.out2(self.central2(x2)), x1, both)
        return {"total": l12 + l21, f"{self.m1}_to_{self.m2}": l12, f"{self.m2}_to_{self.m1}": l21}

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """{modality 1: h1(2), modality 2: h2(2)}; rows of a missing modality are meaningless."""
        x1, x2, _, _ = self._inputs(batch)
        return {self.m1: self.central1(x1), self.m2: self.central2(x2)}

    def embed(self, batch: Batch) -> Tensor:
        """[h1(2), h2(2)] with a missing modality's half duplicated from the present one (zeros if none)."""
        x1, x2, p1, p2 = self._inputs(batch)
        return duplicate_missing(self.central1(x1), self.central2(x2), p1, p2)

    def translate(self, batch: Batch, target: str) -> Tensor:
        """Crossmodal translation into ``target`` from the other modality: o1 if target is modality 2, else o2.

        Returns (B, *dims[target]); rows whose source modality is missing are zeros.
        """
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        x1, x2, p1, p2 = self._inputs(batch)
        if target == self.m2:
            out, src = self.out1(self.central1(x1)), p1
        else:
            out, src = self.out2(self.central2(x2)), p2
        out = out * src.reshape(-1, 1).to(out.dtype)
        return out.reshape(len(batch), *self.dims[target])

    def expand(self, batch: Batch) -> Batch:
        """Crossmodal query expansion (paper Sec. 3.2): fill each missing modality by translating the other.

        Present features are kept as they are; the mask becomes True wherever at least one modality was present.
        """
        p1, p2 = batch.present(self.m1), batch.present(self.m2)
        feats = dict(batch.features)
        for m, need in ((self.m1, ~p1 & p2), (self.m2, ~p2 & p1)):
            x = batch.features[m]
            keep = masked_flat(x, batch.present(m)).reshape(x.shape)
            fill = self.translate(batch, m).to(x.dtype)
            feats[m] = torch.where(need.reshape(-1, *([1] * (x.ndim - 1))), fill, keep)
        mask = batch.mask.clone()
        any_present = p1 | p2
        mask[:, batch.modalities.index(self.m1)] = any_present
        mask[:, batch.modalities.index(self.m2)] = any_present
        return Batch(feats, mask, batch.modalities, batch.labels, batch.index)

