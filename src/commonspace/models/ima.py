"""IMA, the Importance-based Multimodal Autoencoder (Sec. 3, 5), for any number M >= 2 of modalities.

Per modality: an encoder ``u_j(x_j)``, a decoder from the joint code ``z``, and an importance network
``y_j(x_j)`` in [0, 1]. ``z`` is the importance-weighted mean of the present ``u_j`` (Eq. 1). Training has
two stages (Sec. 5): the autoencoder (Eq. 2) with the importance networks frozen, then the importance
networks (Eq. 3-4) with the autoencoder frozen; ``rounds`` repeats the pair. docs/methods.md (IMA) lists
every choice the paper leaves open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.importance import bernoulli_kl_prior, importance_pool, weighted_cross_covariance_loss
from commonspace.models.base import MultimodalModel, Stage, per_modality, register
from commonspace.nn.mlp import ACTIVATIONS, MLP, flat_dim

__all__ = ["IMA", "bag_embed"]

_RECON = ("bce", "sse")


def _sizes(name: str, value: Any, modalities: Sequence[str]) -> dict[str, list[int]]:
    """Hidden layer sizes: one sequence for all modalities or a {modality: sequence} mapping."""
    if isinstance(value, Mapping):
        out = per_modality(name, value, modalities, cast=lambda v: [int(s) for s in ([v] if isinstance(v, int)
                                                                                       else v)])
    else:
        seq = [int(value)] if isinstance(value, int) else [int(s) for s in value]
        out = {m: list(seq) for m in modalities}
    for m, seq in out.items():
        if any(s < 1 for s in seq):
            raise DataError(f"{name} for modality {m!r} has a non-positive layer size: {seq}")
    return out


def _stage_kind(name: str | None) -> str | None:
    """'autoencoder', 'importance' or None (all terms) from a stage name such as 'importance_2'."""
    if name is None:
        return None
    for kind in ("autoencoder", "importance"):
        if name == kind or (name.startswith(kind + "_") and name[len(kind) + 1:].isdigit()):
            return kind
    raise ValueError(f"IMA has no training stage {name!r}; its stages are 'autoencoder' and 'importance' "
                     "(suffixed _1, _2, ... when rounds > 1)")


@register("ima")
class IMA(MultimodalModel):
    """Importance-based Multimodal Autoencoder (paper Sec. 3, Fig. 1).

    ``u_j = enc_j(x_j)`` (MLP ``hidden`` -> ``latent``, linear output), ``y_j = sigmoid(imp_j(x_j))``
    (MLP ``imp_hidden`` -> 1), ``z = sum_j y_j u_j / sum_j y_j`` over present modalities (Eq. 1),
    ``x_j' = dec_j(z)`` (mirror of the encoder). Hyper-parameters: ``latent`` (50), ``hidden`` ((500, 500),
    or a per-modality mapping), ``imp_hidden`` ((100,)), ``activation`` ("relu"), ``recon`` ("sse" or
    "bce", once or per modality), ``rho`` (0.5, once or per modality), ``lambda_rec``, ``lambda_align``,
    ``lambda_glob``, ``lambda_corr``, ``lambda_local`` (all 1.0, the paper's values), ``rounds`` (1),
    ``ae_epochs`` / ``imp_epochs`` (None: the trainer's epochs), ``eps`` (1e-6, pooling guard), ``z_grad``
    (True: in the importance stage ``L_corr`` also differentiates ``z`` through Eq. 1's weights; False: ``z`` is
    a constant and only Eq. 3's sample weights carry the gradient).
    """

    train_defaults = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], latent: int = 50,
                 hidden: Sequence[int] | Mapping[str, Sequence[int]] = (500, 500),
                 imp_hidden: Sequence[int] | Mapping[str, Sequence[int]] = (100,), activation: str = "relu",
                 recon: str | Sequence[str] | Mapping[str, str] = "sse",
                 rho: float | Sequence[float] | Mapping[str, float] = 0.5,
                 lambda_rec: float | Sequence[float] | Mapping[str, float] = 1.0,
                 lambda_align: float | Sequence[float] | Mapping[str, float] = 1.0, lambda_glob: float = 1.0,
                 lambda_corr: float | Sequence[float] | Mapping[str, float] = 1.0,
                 lambda_local: float | Sequence[float] | Mapping[str, float] = 1.0, rounds: int = 1,
                 ae_epochs: int | None = None, imp_epochs: int | None = None, eps: float = 1e-6,
                 z_grad: bool = True) -> None:
        super().__init__(dims)
        mods = self.modalities
        if len(mods) < 2:
            raise DataError(f"IMA needs at least two modalities; got {list(mods)}")
        if int(latent) < 1:
            raise DataError(f"latent must be positive, got {latent}")
        if activation not in ACTIVATIONS:
            raise DataError(f"activation={activation!r}; choose one of {list(ACTIVATIONS)}")
        recon_d = per_modality("recon", recon, mods, cast=str)
        bad = {m: r for m, r in recon_d.items() if r not in _RECON}
        if bad:
            raise DataError(f"recon must be one of {list(_RECON)} (per modality); got {bad}")
        rho_d = per_modality("rho", rho, mods)
        if any(not 0.0 <= r <= 1.0 for r in rho_d.values()):
            raise DataError(f"rho must lie in [0, 1] (the prior fraction of important samples); got {rho_d}")
        lam = {k: per_modality(k, v, mods) for k, v in (("lambda_rec", lambda_rec), ("lambda_align", lambda_align),
                                                         ("lambda_corr", lambda_corr),
                                                         ("lambda_local", lambda_local))}
        if int(rounds) < 1:
            raise DataError(f"rounds must be >= 1, got {rounds}")
        for k, v in (("ae_epochs", ae_epochs), ("imp_epochs", imp_epochs)):
            if v is not None and int(v) < 0:
                raise DataError(f"{k} must be >= 0 or None, got {v}")
        if float(eps) < 0:
            raise DataError(f"eps must be >= 0, got {eps}")
        hid = _sizes("hidden", hidden, mods)
        ihid = _sizes("imp_hidden", imp_hidden, mods)
        # per-modality values are stored resolved ({modality: value}), which the constructor accepts back
        self.save_config(latent=int(latent), hidden=hid, imp_hidden=ihid, activation=activation, recon=recon_d,
                         rho=rho_d, **lam, lambda_glob=float(lambda_glob), rounds=int(rounds),
                         ae_epochs=None if ae_epochs is None else int(ae_epochs),
                         imp_epochs=None if imp_epochs is None else int(imp_epochs), eps=float(eps),
                         z_grad=bool(z_grad))
        self.recon_kind = recon_d
        d = int(latent)
        self.encoders = nn.ModuleDict({m: MLP([flat_dim(self.dims[m]), *hid[m], d], activation, "linear")
                                       for m in mods})
        # decoders output logits for "bce" (the loss uses the stable with-logits form; reconstruct applies sigmoid)
        self.decoders = nn.ModuleDict({m: MLP([d, *reversed(hid[m]), flat_dim(self.dims[m])], activation, "linear")
                                       for m in mods})
        self.importance_nets = nn.ModuleDict({m: MLP([flat_dim(self.dims[m]), *ihid[m], 1], activation, "linear")
                                              for m in mods})
        for net in self.importance_nets.values():
            # Zero output layer: y = sigmoid(0) = 0.5 for every sample at the start, so the first autoencoder
            # stage (importance networks frozen, Sec. 5) pools with equal weights instead of random ones.
            last = [mod for mod in net if isinstance(mod, nn.Linear)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("_rho", torch.tensor([rho_d[m] for m in mods]), persistent=False)

    # ------------------------------------------------------------- pieces
    def _inputs(self, batch: Batch, mask: Tensor) -> list[Tensor]:
        # where(), not multiplication: a hand-built batch may hold NaN/inf garbage in missing rows
        out = []
        for j, m in enumerate(self.modalities):
            x = batch.features[m].reshape(len(batch), -1)
            out.append(torch.where(mask[:, j:j + 1], x, torch.zeros_like(x)))
        return out

    def _codes(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        """(B, M, d) unimodal codes ``u_j``, zero where the modality is missing."""
        u = torch.stack([self.encoders[m](x) for m, x in zip(self.modalities, xs, strict=True)], dim=1)
        return torch.where(mask.unsqueeze(-1), u, torch.zeros_like(u))

    def _importances(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        """(B, M) importances ``y_j``, zero where the modality is missing (Sec. 3: y_j = 0 for a missing one)."""
        y = torch.cat([torch.sigmoid(self.importance_nets[m](x)) for m, x in zip(self.modalities, xs, strict=True)],
                      dim=1)
        return torch.where(mask, y, torch.zeros_like(y))

    def pool(self, u: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Eq. 1 with this model's ``eps`` guard (see :func:`importance_pool`)."""
        return importance_pool(u, y, mask, eps=float(self.config["eps"]))

    # ------------------------------------------------------------- public
    def importance(self, batch: Batch) -> Tensor:
        """(B, M) importances ``y_ij`` in [0, 1] in ``self.modalities`` order; 0 for missing modalities."""
        mask = self.presence_mask(batch)
        return self._importances(self._inputs(batch, mask), mask)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Unimodal codes ``{m: u_m}`` (B, latent); zero rows where ``m`` is missing."""
        mask = self.presence_mask(batch)
        u = self._codes(self._inputs(batch, mask), mask)
        return {m: u[:, j] for j, m in enumerate(self.modalities)}

    def embed(self, batch: Batch, weighted: bool = True) -> Tensor:
        """Joint code ``z`` (Eq. 1) from the present modalities; ``weighted=False`` pools with ``y = 1``
        (the paper's "IMA unweighted" ablation, Sec. 5.3). Zero for a sample with no modality."""
        mask = self.presence_mask(batch)
        xs = self._inputs(batch, mask)
        u = self._codes(xs, mask)
        y = self._importances(xs, mask) if weighted else mask.to(u.dtype)
        return self.pool(u, y, mask)

    def embed_unweighted(self, batch: Batch) -> Tensor:
        """``embed(batch, weighted=False)``: the plain mean of the present ``u_j``."""
        return self.embed(batch, weighted=False)

    def _decode(self, m: str, z: Tensor) -> Tensor:
        out = self.decoders[m](z)
        if self.recon_kind[m] == "bce":
            out = torch.sigmoid(out)
        return out.reshape(z.shape[0], *self.dims[m])

    def reconstruct(self, batch: Batch, weighted: bool = True) -> dict[str, Tensor]:
        """``{m: x_m'}`` decoded from ``z`` of the present modalities, for every modality (missing ones are
        imputed); probabilities for "bce" modalities."""
        z = self.embed(batch, weighted)
        return {m: self._decode(m, z) for m in self.modalities}

    def translate(self, batch: Batch, target: str, weighted: bool = True) -> Tensor:
        """``target`` decoded from ``z`` of the *other* present modalities; zeros where none is present."""
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        others = [m for m in self.modalities if m != target]
        src = batch.only(others)
        out = self._decode(target, self.embed(src, weighted))
        has = self.presence_mask(src).any(1).reshape(-1, *([1] * (out.ndim - 1)))
        return torch.where(has, out, torch.zeros_like(out))

    # ------------------------------------------------------------- training
    def stages(self) -> list[Stage]:
        """(autoencoder, importance) x ``rounds``: names get a ``_k`` suffix when ``rounds > 1``."""
        ae = [p for name in ("encoders", "decoders") for p in getattr(self, name).parameters()]
        imp = list(self.importance_nets.parameters())
        rounds = int(self.config["rounds"])
        out = []
        for k in range(1, rounds + 1):
            sfx = f"_{k}" if rounds > 1 else ""
            out.append(Stage(f"autoencoder{sfx}", ae, epochs=self.config["ae_epochs"]))
            out.append(Stage(f"importance{sfx}", imp, epochs=self.config["imp_epochs"]))
        return out

    def set_stage(self, name: str | None) -> None:
        _stage_kind(name)  # fail early on an unknown name
        super().set_stage(name)

    def _recon_term(self, m: str, z: Tensor, target: Tensor, present: Tensor) -> Tensor:
        """Per-sample reconstruction loss summed over features (BCE or SSE), averaged over the batch with
        missing rows counting 0 (Eq. 2's sum over samples, scaled by 1/B)."""
        logits = self.decoders[m](z)
        if self.recon_kind[m] == "bce":
            per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
        else:
            per = (logits - target).pow(2).sum(1)
        return torch.where(present, per, torch.zeros_like(per)).mean()

    def _autoencoder_terms(self, xs: list[Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Eq. 2: ``sum_j lambda_rec L_rec^(j) + lambda_align ||z - u_j||^2`` + ``lambda_glob ||z||^2``."""
        cfg = self.config
        u = self._codes(xs, mask)
        with torch.no_grad():  # importance networks are constant in this stage (Sec. 5)
            y = self._importances(xs, mask)
        z = self.pool(u, y, mask)
        out: dict[str, Tensor] = {}
        total = z.new_zeros(())
        for j, m in enumerate(self.modalities):
            rec = self._recon_term(m, z, xs[j], mask[:, j])
            sq = (z - u[:, j]).pow(2).sum(1)
            align = torch.where(mask[:, j], sq, torch.zeros_like(sq)).mean()
            out[f"rec_{m}"], out[f"align_{m}"] = rec, align
            total = total + cfg["lambda_rec"][m] * rec + cfg["lambda_align"][m] * align
        sq = z.pow(2).sum(1)
        out["glob"] = torch.where(mask.any(1), sq, torch.zeros_like(sq)).mean()
        out["total"] = total + cfg["lambda_glob"] * out["glob"]
        return out

    def _importance_terms(self, xs: list[Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Eq. 4: ``sum_j lambda_local L_local^(j) + lambda_corr L_corr^(j)`` on the frozen, detached AE codes."""
        cfg = self.config
        with torch.no_grad():  # the autoencoder is constant in this stage
            u = self._codes(xs, mask)
        y = self._importances(xs, mask)
        # z = Eq. 1 of the current y. With z_grad the gradient also runs through z: lowering y_j of a noise
        # sample pulls its z away from u_j, the only way L_corr can drop when the noise codes are not centred
        # (on noisy-digits this separates speech noise, ROC AUC 0.5 -> 1.0; docs/methods.md, IMA Notes)
        z = self.pool(u, y if cfg.get("z_grad", True) else y.detach(), mask)
        corr = weighted_cross_covariance_loss(z, u, y, mask)
        local = bernoulli_kl_prior(y, self._rho.to(y.dtype), mask)
        out: dict[str, Tensor] = {}
        total = y.new_zeros(())
        for j, m in enumerate(self.modalities):
            out[f"corr_{m}"], out[f"local_{m}"] = corr[j], local[j]
            total = total + cfg["lambda_corr"][m] * corr[j] + cfg["lambda_local"][m] * local[j]
        out["total"] = total
        return out

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """The current stage's loss: "total" plus rec_<m>, align_<m>, glob (autoencoder) or corr_<m>,
        local_<m> (importance). Outside a stage (``stage=None``): every term, total = L_auto + L_imp."""
        kind = _stage_kind(self.stage)
        mask = self.presence_mask(batch)
        xs = self._inputs(batch, mask)
        if kind == "autoencoder":
            return self._autoencoder_terms(xs, mask)
        if kind == "importance":
            return self._importance_terms(xs, mask)
        auto, imp = self._autoencoder_terms(xs, mask), self._importance_terms(xs, mask)
        return {**auto, **imp, "total": auto["total"] + imp["total"]}

    def check_data(self, data: MultimodalDataset) -> None:
        """Also: "bce" modalities need features in [0, 1] (Sec. 5 uses BCE on binary/[0, 1] inputs)."""
        super().check_data(data)
        for m in self.modalities:
            if self.recon_kind[m] != "bce":
                continue
            span = data.value_range(m)
            if span is not None and (span[0] < 0 or span[1] > 1):
                raise DataError(f"modality {m!r} uses recon='bce' but its features span [{span[0]:.3g}, "
                                f"{span[1]:.3g}]; scale them to [0, 1] or use recon='sse' for it")


def bag_embed(model: MultimodalModel, items: Batch, bag_index: Tensor, n_bags: int, weighted: bool = True) -> Tensor:
    """(n_bags, d) bag representations (Sec. 5.3, IEMOCAP utterances as bags of paired items).

    ``s_b = sum_{i in b} sum_j y_ij u_ij / sum_{i in b} sum_j y_ij``: the mean of the items' ``z_i`` weighted
    by each item's *summed* importance ``sum_j y_ij`` (equal to the paper's formula, since
    ``z_i sum_j y_ij = sum_j y_ij u_ij``). ``weighted=False`` uses ``y = 1`` for present modalities (the
    unweighted ablation). A unimodal bag representation is ``bag_embed(model, items.only([m]), ...)``.
    A model without ``importance`` (not IMA) gets the plain mean of ``model.embed`` over the bag's items
    that have any modality. Empty bags are zeros. Vectorised with ``index_add_`` (no loop over bags).
    """
    bag_index = torch.as_tensor(bag_index)
    n = len(items)
    if bag_index.shape != (n,) or bag_index.dtype not in (torch.int64, torch.int32):
        raise DataError(f"bag_index must be an integer tensor of shape ({n},), one bag id per item; got "
                        f"{tuple(bag_index.shape)} {bag_index.dtype}")
    if n and (int(bag_index.min()) < 0 or int(bag_index.max()) >= int(n_bags)):
        raise DataError(f"bag_index values must lie in [0, {n_bags}); got [{int(bag_index.min())}, "
                        f"{int(bag_index.max())}]")
    bag_index = bag_index.to(torch.int64)
    if isinstance(model, IMA):
        mask = model.presence_mask(items)
        xs = model._inputs(items, mask)
        u = model._codes(xs, mask)
        y = model._importances(xs, mask) if weighted else mask.to(u.dtype)
        eps = float(model.config["eps"])
        # same guard as Eq. 1: eps per present modality keeps all-zero importances from dividing by 0
        w = torch.where(mask, y + eps, torch.zeros_like(y))
        num_items = (w.unsqueeze(-1) * u).sum(1)  # (n, d) = z_i * sum_j w_ij
        den_items = w.sum(1)
    else:
        z = model.embed(items)
        den_items = torch.stack([items.present(m) for m in model.modalities], 1).any(1).to(z.dtype)
        num_items = z * den_items.unsqueeze(-1)
    num = num_items.new_zeros(int(n_bags), num_items.shape[1]).index_add_(0, bag_index.to(num_items.device),
                                                                          num_items)
    den = den_items.new_zeros(int(n_bags)).index_add_(0, bag_index.to(den_items.device), den_items)
    return num / den.clamp_min(torch.finfo(num.dtype).tiny).unsqueeze(-1)
