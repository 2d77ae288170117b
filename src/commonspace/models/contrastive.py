"""CLIP-style contrastive baseline (``contrastive``): one encoder per modality into a shared space.

Each modality's features (flattened when image-like) go through a linear map or a ReLU MLP to ``h_m`` (B, dim);
``z_m = h_m / |h_m|`` is the modality's vector in the common space. Training minimises the symmetric InfoNCE of
CLIP (Radford et al. 2021) averaged over all pairs of modalities, or with ``use_labels=True`` its supervised
variant (SupCon, Khosla et al. 2020) whose positives are the samples sharing a label. The joint embedding is the
normalised mean of the present modalities' ``z_m``. Equations in :mod:`commonspace.losses.contrastive` and
docs/methods.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.contrastive import MAX_SCALE, contrastive_loss, logit_scale
from commonspace.models.base import MultimodalModel, register
from commonspace.nn.mlp import MLP, check_prob, flat_dim, masked_flat

__all__ = ["Contrastive"]

Dims = Mapping[str, int | tuple[int, ...] | list[int]]


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@register("contrastive")
class Contrastive(MultimodalModel):
    """Per-modality encoders trained with CLIP's symmetric InfoNCE (or SupCon with ``use_labels``).

    Hyper-parameters: ``dim`` (128, the common space), ``hidden`` (() = a linear encoder; sizes = a ReLU MLP),
    ``dropout`` (0.0, after every hidden layer, so it needs ``hidden``), ``use_labels`` (False: InfoNCE with the
    paired sample as the only positive; True: SupCon positives from the labels, and the loss refuses unlabelled
    batches), ``temperature`` (0.07, the initial ``1 / exp(t)``), ``learn_temperature`` (True: ``t`` is trained).
    """

    train_defaults = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256}
    # labels are needed only with use_labels=True, a hyper-parameter: check_data and loss refuse them then
    supervised = False

    def __init__(self, dims: Dims, dim: int = 128, hidden: Sequence[int] = (), dropout: float = 0.0,
                 use_labels: bool = False, temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__(dims)
        if len(self.modalities) < 2:
            raise DataError(f"the contrastive model contrasts modalities and needs at least 2 in dims, got "
                            f"{list(self.modalities)}; add another modality")
        if isinstance(hidden, numbers.Number | str) or not all(_is_int(h) for h in hidden):
            raise DataError(f"hidden must be a list of layer sizes, e.g. [256] or [] for a linear encoder, got "
                            f"{hidden!r}")
        hidden = [int(h) for h in hidden]
        if not _is_int(dim) or int(dim) < 1 or any(h < 1 for h in hidden):
            raise DataError(f"dim and hidden sizes must be positive integers, got dim={dim}, hidden={hidden}")
        dropout = check_prob("dropout", dropout)
        if dropout > 0 and not hidden:
            raise DataError(f"dropout={dropout} acts after hidden layers, but hidden=[] (a linear encoder) has none; "
                            "set hidden, e.g. [256], or dropout=0")
        temperature = float(temperature)
        if not (math.isfinite(temperature) and 1.0 / MAX_SCALE <= temperature):
            raise DataError(f"temperature must be a number >= {1.0 / MAX_SCALE} (the logit scale 1/temperature is "
                            f"clipped at {MAX_SCALE:g}, as in CLIP), got {temperature}; CLIP starts at 0.07")
        self.save_config(dim=int(dim), hidden=hidden, dropout=dropout, use_labels=bool(use_labels),
                         temperature=temperature, learn_temperature=bool(learn_temperature))
        self.dim = int(dim)
        self.encoders = nn.ModuleDict({
            m: MLP([flat_dim(self.dims[m]), *hidden, self.dim], "relu", "linear", dropout) for m in self.modalities
        })
        #: CLIP's ``t``: the logits are ``exp(t) z_a . z_b``; frozen at its start value without learn_temperature
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=bool(learn_temperature))

    @property
    def use_labels(self) -> bool:
        return bool(self.config["use_labels"])

    @property
    def scale(self) -> Tensor:
        """The current logit scale ``exp(t)``, clipped at 100."""
        return logit_scale(self.log_scale.detach())

    def check_data(self, data: MultimodalDataset) -> None:
        super().check_data(data)
        if self.use_labels and data.labels is None:
            raise DataError(f"use_labels=True needs class labels for the SupCon positives, but the data {data.name!r} "
                            "has none; give the data labels or use use_labels=False")

    # --------------------------------------------------------------- forward
    def _vectors(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        present = {m: batch.present(m) for m in self.modalities}
        z = {m: F.normalize(self.encoders[m](masked_flat(batch.features[m], present[m])), dim=1)
             for m in self.modalities}
        return z, present

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """L2-normalised common-space vector per modality (rows of missing modalities are meaningless)."""
        return self._vectors(batch)[0]

    def embed(self, batch: Batch) -> Tensor:
        """Normalised mean of the present modalities' vectors (zeros for a sample with none)."""
        z, present = self._vectors(batch)
        w = torch.stack([present[m] for m in self.modalities], 1).to(z[self.modalities[0]].dtype)
        s = sum(z[m] * w[:, j:j + 1] for j, m in enumerate(self.modalities))
        return F.normalize(s / w.sum(1, keepdim=True).clamp_min(1.0), dim=1)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Mean symmetric InfoNCE (or SupCon) over the modality pairs with >= 2 complete rows in the batch."""
        y = None
        if self.use_labels:
            y = batch.labels
            if y is None:
                raise DataError("use_labels=True makes the contrastive loss take its positives from the labels, but "
                                "batch.labels is None; give the dataset labels or use use_labels=False")
        if self.training and self.log_scale.requires_grad:
            # CLIP clips t after every step; clipping before each use gives the loss the same values and keeps
            # t where it can still move (a clamped t past the clip would get no gradient and stay there)
            with torch.no_grad():
                self.log_scale.clamp_(max=math.log(MAX_SCALE))
        z, present = self._vectors(batch)
        total, _ = contrastive_loss(z, present, self.log_scale, y)
        return {"total": total, "scale": self.scale}
