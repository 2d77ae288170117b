"""The two multimodal autoencoder baselines of the BiDNN paper (Sec. 2.1, Fig. 1), 200-100-200 hidden layers.

The paper trained them in Keras without giving the optimiser; we use Adam (lr 1e-3, batch 128). Like every
method in the paper they learn from the samples that have both modalities (``requires_complete``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError
from commonspace.models.base import MultimodalModel, register
from commonspace.models.bidnn import masked_pair_mse
from commonspace.nn.mlp import ACTIVATIONS, MLP, check_prob, flat_dim, masked_flat

__all__ = ["ConcatAutoencoder", "SplitAutoencoder"]

_ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}


def _check_common(dims: Mapping[str, object], hidden: int, central: int, activation: str,
                  output_activation: str, method: str) -> None:
    if len(dims) < 2:
        raise DataError(f"{method} needs at least two modalities; got {list(dims)}")
    for name, act in (("activation", activation), ("output_activation", output_activation)):
        if act not in ACTIVATIONS:
            raise DataError(f"{name}={act!r}; choose one of {list(ACTIVATIONS)}")
    if int(hidden) < 1 or int(central) < 1:
        raise DataError(f"hidden and central must be positive, got {hidden} and {central}")


@register("ae_concat")
class ConcatAutoencoder(MultimodalModel):
    """AE #1 (Fig. 1 left): the concatenation ``[x1, x2]`` in, the same concatenation out, all layers joint.

    ``z = f(W2 f(W1 [x1; x2] + b1) + b2)`` (central, the embedding), ``[x1'; x2'] = g(W4 f(W3 z + b3) + b4)``,
    loss ``MSE([x1'; x2'], [x1; x2])``. A missing modality enters as zeros, the paper's setup. Hyper-parameters:
    ``hidden`` (200), ``central`` (100), ``activation`` ("tanh"), ``output_activation`` ("linear": the
    features are standardised, so the reconstruction is not bounded).
    """

    requires_complete = True
    train_defaults = dict(_ADAM)

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], hidden: int = 200,
                 central: int = 100, activation: str = "tanh", output_activation: str = "linear") -> None:
        super().__init__(dims)
        _check_common(self.dims, hidden, central, activation, output_activation, "AE #1 (ae_concat)")
        self.save_config(hidden=int(hidden), central=int(central), activation=activation,
                         output_activation=output_activation)
        self.sizes = [flat_dim(self.dims[m]) for m in self.modalities]
        total = sum(self.sizes)
        self.encoder = MLP([total, int(hidden), int(central)], activation, output_activation=activation)
        self.decoder = MLP([int(central), int(hidden), total], activation, output_activation=output_activation)

    def _concat(self, batch: Batch, mask: Tensor | None = None) -> Tensor:
        mask = self.presence_mask(batch) if mask is None else mask
        return torch.cat([masked_flat(batch.features[m], mask[:, j]) for j, m in enumerate(self.modalities)], 1)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction MSE of the concatenation over complete samples (mean-reduced)."""
        mask = self.presence_mask(batch)
        x = self._concat(batch, mask)
        recon = self.decoder(self.encoder(x))
        complete = mask.all(1)
        out = {"total": masked_pair_mse(recon, x, complete)}
        # Per-modality terms for monitoring only (their size-weighted mean is the total).
        for m, part_r, part_x in zip(self.modalities, recon.split(self.sizes, 1), x.split(self.sizes, 1),
                                     strict=True):
            out[f"recon_{m}"] = masked_pair_mse(part_r.detach(), part_x, complete)
        return out

    def embed(self, batch: Batch) -> Tensor:
        """The central layer of the concatenated (missing = zeros) input."""
        return self.encoder(self._concat(batch))

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Central layer from each modality alone (the others zeroed), for crossmodal comparison."""
        out = {}
        for j, m in enumerate(self.modalities):
            alone = torch.zeros_like(self.presence_mask(batch))
            alone[:, j] = batch.present(m)
            out[m] = self.encoder(self._concat(batch, alone))
        return out

    def translate(self, batch: Batch, target: str) -> Tensor:
        """Reconstruction of ``target`` from the other present modalities (target zeroed at the input)."""
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        mask = self.presence_mask(batch)
        j = self.modalities.index(target)
        mask[:, j] = False
        recon = self.decoder(self.encoder(self._concat(batch, mask))).split(self.sizes, 1)[j]
        recon = recon * mask.any(1, keepdim=True).to(recon.dtype)
        return recon.reshape(len(batch), *self.dims[target])


@register("ae_split")
class SplitAutoencoder(MultimodalModel):
    """AE #2 (Fig. 1 right): separate inputs, hidden layers and outputs, one shared central layer.

    ``h_m = f(W_m x_m + b_m)``; ``z = f(sum_m W_zm (p_m h_m) + b_z)`` with ``p_m`` the presence of modality m
    (a missing modality contributes nothing); ``x_m' = g(V_m f(U_m z + c_m) + d_m)`` for every modality.
    Training (Ngiam et al. style): with probability ``p_drop`` a complete sample loses one modality, chosen
    uniformly, at the input, and the loss still reconstructs all modalities, so the central layer learns to
    represent both from one. ``p_drop`` = 0.5 is our choice (the paper only says modalities are
    "sporadically removed"): half the samples train the crossmodal path, half the joint one.
    Hyper-parameters: ``hidden`` (200), ``central`` (100), ``p_drop`` (0.5), ``activation`` ("tanh"),
    ``output_activation`` ("linear").
    """

    requires_complete = True
    train_defaults = dict(_ADAM)

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], hidden: int = 200,
                 central: int = 100, p_drop: float = 0.5, activation: str = "tanh",
                 output_activation: str = "linear") -> None:
        super().__init__(dims)
        _check_common(self.dims, hidden, central, activation, output_activation, "AE #2 (ae_split)")
        self.save_config(hidden=int(hidden), central=int(central), p_drop=check_prob("p_drop", p_drop),
                         activation=activation, output_activation=output_activation)
        h, c = int(hidden), int(central)
        self.encoders = nn.ModuleDict({m: MLP([flat_dim(d), h], activation, activation)
                                       for m, d in self.dims.items()})
        # One linear map over the concatenated (masked) hidden layers = sum of per-modality maps + one bias.
        self.fuse = MLP([h * len(self.dims), c], activation, activation)
        self.decoders = nn.ModuleDict({m: MLP([c, h, flat_dim(d)], activation, output_activation)
                                       for m, d in self.dims.items()})

    def modality_dropout(self, mask: Tensor) -> Tensor:
        """The input mask used for training: in train mode, with probability ``p_drop`` a sample with two or
        more present modalities loses one of them (uniform). Identity in eval mode."""
        p = float(self.config["p_drop"])
        if not self.training or p == 0.0:
            return mask
        n = mask.shape[0]
        hit = (torch.rand(n, device=mask.device) < p) & (mask.sum(1) >= 2)
        # Uniform choice among the present modalities: argmax of random keys, absent ones excluded.
        keys = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
        drop = torch.zeros_like(mask)
        drop[torch.arange(n, device=mask.device), keys.argmax(1)] = True
        return mask & ~(drop & hit.reshape(-1, 1))

    def central(self, batch: Batch, mask: Tensor | None = None) -> Tensor:
        """The shared central layer from the modalities marked present in ``mask`` (default: the batch's)."""
        mask = self.presence_mask(batch) if mask is None else mask
        hs = []
        for j, m in enumerate(self.modalities):
            h = self.encoders[m](masked_flat(batch.features[m], mask[:, j]))
            hs.append(h * mask[:, j].reshape(-1, 1).to(h.dtype))
        return self.fuse(torch.cat(hs, dim=1))

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Sum over modalities of the reconstruction MSE (each mean-reduced over samples that have it)."""
        mask = self.presence_mask(batch)
        z = self.central(batch, self.modality_dropout(mask))
        out: dict[str, Tensor] = {}
        total = z.new_zeros(())
        for j, m in enumerate(self.modalities):
            target = masked_flat(batch.features[m], mask[:, j])
            term = masked_pair_mse(self.decoders[m](z), target, mask[:, j])
            out[f"recon_{m}"] = term
            total = total + term
        out["total"] = total
        return out

    def embed(self, batch: Batch) -> Tensor:
        """The central layer from the present modalities."""
        return self.central(batch)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The central layer from each modality alone."""
        return self.each_alone(self.presence_mask(batch), lambda alone: self.central(batch, alone))

    def translate(self, batch: Batch, target: str) -> Tensor:
        """Reconstruction of ``target`` from the other present modalities; zeros where none is present."""
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        mask = self.presence_mask(batch)
        mask[:, self.modalities.index(target)] = False
        out = self.decoders[target](self.central(batch, mask))
        out = out * mask.any(1, keepdim=True).to(out.dtype)
        return out.reshape(len(batch), *self.dims[target])
