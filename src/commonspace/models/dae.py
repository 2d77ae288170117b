"""The multimodal denoising autoencoder baseline of the IMA paper (Sec. 6.2, "denoising rate = 0.3").

Per-modality encoders, their top hidden layers concatenated and fully connected to a shared latent layer,
one decoder per modality. Training corrupts the inputs with masking noise (Vincent et al. 2008): every input
feature is zeroed independently with probability ``noise_rate``; the loss reconstructs the clean inputs.
docs/methods.md (DAE) lists the choices the IMA paper leaves open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel, per_modality, register
from commonspace.models.vae import (
    check_activation,
    check_bernoulli_range,
    config_value,
    layer_sizes,
    likelihoods,
    output_mean,
    reconstruction_loss,
)
from commonspace.nn.mlp import MLP, check_prob, flat_dim, masked_flat

__all__ = ["DenoisingAutoencoder"]


@register("dae")
class DenoisingAutoencoder(MultimodalModel):
    """Multimodal denoising autoencoder.

    ``h_m = f(MLP_m(x~_m))`` with ``x~_m = x_m * e_m``, ``e_m ~ Bernoulli(1 - noise_rate)`` per feature in
    training (identity otherwise); ``z = g(W [p_1 h_1; ...; p_M h_M] + b)`` (``p_m`` presence: a missing
    modality's hidden block is zero); ``x_m' = dec_m(z)`` (mirror MLP, linear output). Loss per sample:
    ``sum_{m present} lambda_m rec(x_m', x_m)`` (SSE or BCE, summed over features), mean over the batch.

    Hyper-parameters: ``latent`` (50), ``hidden`` ((500, 500), or {modality: sizes}), ``activation`` ("relu"),
    ``latent_activation`` ("linear"), ``likelihood`` ("gaussian" = SSE or "bernoulli" = BCE, once or per
    modality), ``rec_weight`` (1.0), ``noise_rate`` (0.3), ``modality_drop`` (0.0: with this probability a
    training sample with two or more modalities loses one, chosen uniformly, at the input only).
    Loss terms: ``total``, ``rec_<m>``.
    """

    requires_complete = False
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], latent: int = 50,
                 hidden: Sequence[int] | Mapping[str, Sequence[int]] = (500, 500), activation: str = "relu",
                 latent_activation: str = "linear", likelihood: str | Mapping[str, str] = "gaussian",
                 rec_weight: float | Mapping[str, float] = 1.0, noise_rate: float = 0.3,
                 modality_drop: float = 0.0) -> None:
        super().__init__(dims)
        if len(self.dims) < 2:
            raise DataError(f"the multimodal DAE needs at least two modalities; got {list(self.dims)}")
        if int(latent) < 1:
            raise DataError(f"latent must be positive, got {latent}")
        check_activation(activation)
        check_activation(latent_activation)
        self.hidden = layer_sizes("hidden", hidden, self.modalities)
        if any(not h for h in self.hidden.values()):
            raise DataError("the DAE needs at least one hidden layer per modality (the blocks that are fused)")
        self.kinds = likelihoods(likelihood, self.modalities)
        self.rec_weight = per_modality("rec_weight", rec_weight, self.modalities, lists=False)
        self.noise_rate = check_prob("noise_rate", noise_rate)
        if self.noise_rate == 1.0:
            raise DataError("noise_rate=1 would zero every input; use a rate below 1")
        self.modality_drop = check_prob("modality_drop", modality_drop)
        self.latent = int(latent)
        self.save_config(latent=self.latent, hidden=config_value(hidden), activation=activation,
                         latent_activation=latent_activation, likelihood=config_value(likelihood),
                         rec_weight=config_value(rec_weight), noise_rate=self.noise_rate,
                         modality_drop=self.modality_drop)
        self.sizes = {m: flat_dim(d) for m, d in self.dims.items()}
        self.encoders = nn.ModuleDict({m: MLP([self.sizes[m], *self.hidden[m]], activation, activation)
                                       for m in self.modalities})
        self.fuse = MLP([sum(h[-1] for h in self.hidden.values()), self.latent], activation, latent_activation)
        self.decoders = nn.ModuleDict({m: MLP([self.latent, *reversed(self.hidden[m]), self.sizes[m]], activation,
                                              "linear") for m in self.modalities})

    def corrupt(self, x: Tensor) -> Tensor:
        """Masking noise: each feature zeroed with probability ``noise_rate``, in training mode only.

        No 1/(1 - rate) rescaling (unlike dropout): the denoising criterion maps corrupted inputs to clean ones.
        """
        if not self.training or self.noise_rate == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.noise_rate).to(x.dtype)

    def drop_modalities(self, mask: Tensor) -> Tensor:
        """Training-mode input mask: with probability ``modality_drop`` a sample with two or more present
        modalities loses one of them (uniform). Identity in eval mode or when ``modality_drop`` = 0."""
        if not self.training or self.modality_drop == 0.0:
            return mask
        n = mask.shape[0]
        hit = (torch.rand(n, device=mask.device) < self.modality_drop) & (mask.sum(1) >= 2)
        # uniform among the present ones: argmax of random keys with absent modalities ranked last
        keys = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
        drop = torch.zeros_like(mask)
        drop[torch.arange(n, device=mask.device), keys.argmax(1)] = True
        return mask & ~(drop & hit.reshape(-1, 1))

    def latent_code(self, batch: Batch, mask: Tensor | None = None, noisy: bool = False) -> Tensor:
        """The shared layer from the modalities marked present in ``mask`` (default: the batch's mask);
        ``noisy`` applies :meth:`corrupt` to the inputs (it is still a no-op outside training mode)."""
        mask = self.presence_mask(batch) if mask is None else mask
        hs = []
        for j, m in enumerate(self.modalities):
            x = masked_flat(batch.features[m], mask[:, j])
            h = self.encoders[m](self.corrupt(x) if noisy else x)
            # zero the whole block, not only the input: f(bias) of a missing modality must not leak in
            hs.append(h * mask[:, j].reshape(-1, 1).to(h.dtype))
        return self.fuse(torch.cat(hs, 1))

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction of the clean present modalities from corrupted inputs, per sample, mean over batch."""
        mask = self.presence_mask(batch)
        b = mask.shape[0]
        z = self.latent_code(batch, self.drop_modalities(mask), noisy=True)
        out: dict[str, Tensor] = {}
        total = z.new_zeros(())
        for j, m in enumerate(self.modalities):
            target = masked_flat(batch.features[m], mask[:, j])
            rec = reconstruction_loss(self.decoders[m](z), target, self.kinds[m]) * mask[:, j].to(z.dtype)
            out[f"rec_{m}"] = rec.sum() / b
            total = total + self.rec_weight[m] * out[f"rec_{m}"]
        out["total"] = total
        return out

    def embed(self, batch: Batch) -> Tensor:
        """The shared latent layer from the present modalities (never corrupted)."""
        return self.latent_code(batch)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The shared latent layer from each modality alone."""
        return self.each_alone(self.presence_mask(batch), lambda alone: self.latent_code(batch, alone))

    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """Every modality decoded (mean) from ``embed``; missing ones are thereby imputed."""
        z = self.embed(batch)
        return {m: output_mean(self.decoders[m](z), self.kinds[m]).reshape(len(batch), *self.dims[m])
                for m in self.modalities}

    def translate(self, batch: Batch, target: str) -> Tensor:
        """``target`` decoded from the other present modalities."""
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        return self.reconstruct(batch.only([m for m in self.modalities if m != target]))[target]

    def check_data(self, data: MultimodalDataset) -> None:
        """Also: Bernoulli modalities need features in [0, 1]."""
        super().check_data(data)
        check_bernoulli_range(self, data, self.kinds)
