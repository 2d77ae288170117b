"""Common Vector Space (CVS), Multi-staged CVS (M-CVS) and Reference Vector Space (RVS), thesis Chapter 3.

Per modality a fully connected head maps the features to ``g_m`` (Eq. 3.1.1); aligned attention blocks between
pairs of modalities rescale ``g_m`` (Eq. 3.1.11-3.1.14, RVS: 3.3.1-3.3.6); the L2-normalised result ``f_m`` is
the modality's vector in the common space. Training minimises ``L = alpha L_c + beta L_t`` (Eq. 3.1.7): a
classifier shared by all modalities (Eq. 3.1.4) and the inter-/intra-modal triplet loss (Eq. 3.1.6).

M-CVS and RVS add modalities stage by stage (``stage_order``); every stage trains only the parameters it
created, and a block never rescales a modality of an earlier stage, so earlier modalities' vectors stay
bit-for-bit the same. Stage-wise *class* learning (Sec. 3.4) is a training procedure:
:func:`commonspace.train.stagewise.class_stages` + :func:`commonspace.train.stagewise.train_stagewise`.
See docs/methods_cvs.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.triplet import triplet_loss
from commonspace.models.base import MultimodalModel, Stage, register
from commonspace.nn.attention import AlignedAttention, ReferenceAttention
from commonspace.nn.mlp import ACTIVATIONS, MLP, flat_dim, glorot_, masked_flat

__all__ = ["CVS", "MCVS", "RVS"]

_ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}  # thesis Sec. 4.2
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
Dims = Mapping[str, int | tuple[int, ...] | list[int]]


def _shape(d: int | Sequence[int]) -> tuple[int, ...]:
    return (int(d),) if isinstance(d, int | np.integer) else tuple(int(v) for v in d)


def _triple(name: str, v: Sequence[float]) -> list[float]:
    out = [float(x) for x in v]
    if len(out) != 3 or any(x < 0 for x in out):
        raise DataError(f"{name} must be three non-negative numbers (one per part of Eq. 3.1.6), got {list(v)}")
    return out


@register("cvs")
class CVS(MultimodalModel):
    """CVS (thesis Sec. 3.1) with aligned attention; with ``stage_order`` it trains modality groups in stages.

    Hyper-parameters: ``n_classes`` (None; needed whenever ``alpha > 0``), ``dim`` (512, common space),
    ``hidden`` ((512, 512), the head's hidden layers), ``activation`` ("relu"), ``multilabel`` (False: softmax
    cross-entropy; True: sigmoid BCE over 0/1 label rows), ``attention`` (True), ``attention_hidden`` (None =
    ``dim``, width of the tanh layer), ``use_wi`` / ``use_ws`` / ``use_wis`` (True; the Figure 25 ablation),
    ``alpha`` / ``beta`` (1.0 / 1.0, Eq. 3.1.7), ``margins`` ((1, 1, 1) = alpha_1..3), ``gammas``
    ((0.25, 0.25, 0.5) = gamma_1..3: intra x, intra y, inter), ``stage_order`` (None = all at once, one stage
    "main"; else groups of modalities, one stage each, e.g. ``[["image", "text"], ["video"]]``).
    """

    train_defaults = dict(_ADAM)
    supervised = True

    @classmethod
    def hparams_from_data(cls, data: MultimodalDataset) -> dict[str, Any]:
        """``n_classes`` and ``multilabel`` from the labels (multi-label: the number of label columns)."""
        if data.labels is None:
            return {}
        return {"n_classes": int(data.num_classes), "multilabel": bool(data.multilabel)}

    def __init__(self, dims: Dims, n_classes: int | None = None, dim: int = 512,
                 hidden: Sequence[int] = (512, 512), activation: str = "relu", multilabel: bool = False,
                 attention: bool = True, attention_hidden: int | None = None, use_wi: bool = True,
                 use_ws: bool = True, use_wis: bool = True, alpha: float = 1.0, beta: float = 1.0,
                 margins: Sequence[float] = (1.0, 1.0, 1.0), gammas: Sequence[float] = (0.25, 0.25, 0.5),
                 stage_order: Sequence[Sequence[str]] | None = None) -> None:
        super().__init__(dims)
        if activation not in ACTIVATIONS:
            raise DataError(f"activation={activation!r}; choose one of {list(ACTIVATIONS)}")
        hidden = [int(h) for h in hidden]
        if int(dim) < 1 or any(h < 1 for h in hidden):
            raise DataError(f"dim and hidden sizes must be positive, got dim={dim}, hidden={hidden}")
        if n_classes is not None and int(n_classes) < 1:
            raise DataError(f"n_classes must be a positive integer or None, got {n_classes}")
        if float(alpha) < 0 or float(beta) < 0:
            raise DataError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        if attention and not (use_wi or use_ws or use_wis):
            raise DataError("attention needs at least one of use_wi, use_ws, use_wis; or set attention=False")
        groups = self._check_groups(stage_order)
        self.save_config(
            n_classes=None if n_classes is None else int(n_classes), dim=int(dim), hidden=hidden,
            activation=activation, multilabel=bool(multilabel), attention=bool(attention),
            attention_hidden=None if attention_hidden is None else int(attention_hidden), use_wi=bool(use_wi),
            use_ws=bool(use_ws), use_wis=bool(use_wis), alpha=float(alpha), beta=float(beta),
            margins=_triple("margins", margins), gammas=_triple("gammas", gammas),
            stage_order=None if stage_order is None else [list(g) for g in groups])
        self.dim = int(dim)
        self.heads = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        # one classifier for every modality (Eq. 3.1.4): it ties all modalities' classes to the same directions
        self.classifier = glorot_(nn.Linear(self.dim, int(n_classes))) if n_classes is not None else None
        self._groups: list[list[str]] = []
        self._stage_of: dict[str, int] = {}
        self._pairs: dict[str, tuple[str, str]] = {}
        self._block_stage: dict[str, int] = {}
        self._active: int | None = None
        #: stages before this index count as trained: stages() leaves them out (set by add_modality)
        self.trained_stages = 0
        self._init_shared()
        for g in groups:
            self._add_group(g)

    # ------------------------------------------------------------ structure
    def _init_shared(self) -> None:
        """Parameters shared by all blocks (RVS: ``W_ie``); trained in the first stage."""

    def _check_groups(self, stage_order: Sequence[Sequence[str]] | None) -> list[list[str]]:
        if stage_order is None:
            return [list(self.modalities)]
        if isinstance(stage_order, str) or any(isinstance(g, str) for g in stage_order):
            raise DataError("stage_order is a list of modality groups, e.g. [['image', 'text'], ['video']]")
        groups = [list(g) for g in stage_order]
        flat = [m for g in groups for m in g]
        if any(not g for g in groups) or sorted(flat) != sorted(self.modalities) or len(set(flat)) != len(flat):
            raise DataError(f"stage_order {groups} must list every modality of dims {list(self.modalities)} exactly "
                            "once, in non-empty groups")
        return groups

    def _new_pairs(self, existing: list[str], group: list[str]) -> list[tuple[str, str]]:
        """M-CVS: every new modality pairs with every existing one and with the earlier ones of its group, so a
        stage adds n blocks per new modality and n modalities have C(n, 2) blocks in all."""
        return [(e, m) for j, m in enumerate(group) for e in existing + group[:j]]

    def _make_block(self) -> nn.Module:
        c = self.config
        return AlignedAttention(self.dim, c["attention_hidden"], c["use_wi"], c["use_ws"], c["use_wis"])

    def _add_group(self, group: list[str]) -> list[nn.Parameter]:
        """Create the heads and blocks of one more stage; returns exactly the parameters that stage trains."""
        k = len(self._groups)
        existing = [m for g in self._groups for m in g]
        self._groups.append(list(group))
        c = self.config
        params: list[nn.Parameter] = []
        for m in group:
            self._stage_of[m] = k
            self.heads[m] = MLP([flat_dim(self.dims[m]), *c["hidden"], self.dim], c["activation"], "linear")
            params += list(self.heads[m].parameters())
        if c["attention"]:
            for a, b in self._new_pairs(existing, group):
                key = f"{a}|{b}"
                self.blocks[key] = self._make_block()
                self._pairs[key] = (a, b)
                self._block_stage[key] = k
                params += list(self.blocks[key].parameters())
        return params

    def _stage_parameters(self, k: int) -> list[nn.Parameter]:
        params = [p for m in self._groups[k] for p in self.heads[m].parameters()]
        params += [p for key, s in self._block_stage.items() if s == k for p in self.blocks[key].parameters()]
        if k == 0:
            params += [p for n, p in self.named_parameters() if not n.startswith(("heads.", "blocks."))]
        return params

    def add_modality(self, name: str, dim: int | Sequence[int], freeze_existing: bool = True) -> list[nn.Parameter]:
        """Add a modality as a new last stage (M-CVS: n new blocks; RVS: one); returns the new parameters.

        With ``freeze_existing`` the earlier stages count as trained (``trained_stages``), so ``stages()`` and a
        :class:`~commonspace.train.Trainer` train only the new one. The config gains the modality and the stage
        order, so ``model_class(name)(**model.config)`` rebuilds it (untrained, every stage to train).
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(f"modality name {name!r} is not valid; use letters, digits, '_' or '-'")
        if name in self.dims:
            raise DataError(f"modality {name!r} already exists; this model has {list(self.modalities)}")
        ref = next(self.parameters())
        self.dims[name] = _shape(dim)
        self.modalities = (*self.modalities, name)
        self.config["dims"][name] = list(self.dims[name])
        if freeze_existing:
            self.trained_stages = len(self._groups)
        params = self._add_group([name])
        self.config["stage_order"] = [list(g) for g in self._groups]
        self.heads[name].to(ref.device, ref.dtype)
        for key, s in self._block_stage.items():
            if s == len(self._groups) - 1:
                self.blocks[key].to(ref.device, ref.dtype)
        return params

    @property
    def n_attention_blocks(self) -> int:
        """Number of attention blocks: C(n, 2) for CVS / M-CVS, one per non-reference modality for RVS."""
        return len(self.blocks)

    @property
    def blocks_per_stage(self) -> list[int]:
        """Attention blocks created by each stage (M-CVS: n per added modality)."""
        return [sum(1 for s in self._block_stage.values() if s == k) for k in range(len(self._groups))]

    @property
    def stage_groups(self) -> list[list[str]]:
        return [list(g) for g in self._groups]

    # ---------------------------------------------------------------- stages
    def _stage_name(self, k: int) -> str:
        return "main" if len(self._groups) == 1 else f"stage{k + 1}"

    def stages(self) -> list[Stage]:
        """One stage per modality group not yet trained (from ``trained_stages`` on); each trains only the
        parameters it created, so everything of earlier stages stays frozen."""
        return [Stage(self._stage_name(k), self._stage_parameters(k), extra={"modalities": list(self._groups[k])})
                for k in range(self.trained_stages, len(self._groups))]

    def set_stage(self, name: str | None) -> None:
        """Restrict the losses to the modalities available in stage ``name`` (None: all, every term)."""
        if name is None:
            self._active = None
        else:
            names = [self._stage_name(k) for k in range(len(self._groups))]
            if name not in names:
                raise DataError(f"unknown stage {name!r} for this {self.name} model; stages are {names}")
            self._active = names.index(name)
        super().set_stage(name)

    def _stage_sets(self) -> tuple[list[str], set[str]]:
        """(available modalities in model order, modalities the current stage trains)."""
        if self._active is None:
            return list(self.modalities), set(self.modalities)
        avail = {m for g in self._groups[:self._active + 1] for m in g}
        return [m for m in self.modalities if m in avail], set(self._groups[self._active])

    def _loss_pairs(self, avail: list[str], new: set[str]) -> list[tuple[str, str]]:
        """Modality pairs of Eq. 3.1.6 in this stage: pairs of earlier modalities only would add a constant."""
        return [(x, y) for i, x in enumerate(avail) for y in avail[i + 1:] if x in new or y in new]

    # --------------------------------------------------------------- forward
    def _heads(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        present = {m: batch.present(m) for m in self.modalities}
        g = {m: self.heads[m](masked_flat(batch.features[m], present[m])) for m in self.modalities}
        return g, present

    def _block_alphas(self, key: str, g_a: Tensor, g_b: Tensor, update_a: bool) -> tuple[Tensor | None, Tensor]:
        a = self.blocks[key].alpha(g_a, g_b)
        return (a if update_a else None), a

    def _attend(self, g: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every modality's output averages the outputs of the blocks that update it, over the blocks whose partner
        is present: ``g + mean_s(alpha_s) * g`` (Eq. 3.1.13/3.1.14 for one block). A block updates its older
        modality only when both belong to the same stage, so later blocks never touch earlier modalities."""
        acc: dict[str, Tensor] = {}
        cnt: dict[str, Tensor] = {}
        for key, (a, b) in self._pairs.items():  # creation order: a fixed sum order, bit-for-bit reproducible
            both = present[a] & present[b]
            alphas = self._block_alphas(key, g[a], g[b], self._block_stage[key] == self._stage_of[a])
            for m, al in zip((a, b), alphas, strict=True):
                if al is None:
                    continue
                part = torch.where(both.reshape(-1, 1), al, torch.zeros_like(al))
                acc[m] = part if m not in acc else acc[m] + part
                cnt[m] = both.to(al.dtype) if m not in cnt else cnt[m] + both.to(al.dtype)
        out = {}
        for m, gm in g.items():
            if m not in acc:
                out[m] = gm
                continue
            mean = acc[m] / cnt[m].clamp_min(1.0).reshape(-1, 1)
            out[m] = torch.where((cnt[m] > 0).reshape(-1, 1), gm + mean * gm, gm)
        return out

    def _vectors(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        g, present = self._heads(batch)
        g = self._attend(g, present)
        return {m: F.normalize(v, dim=1) for m, v in g.items()}, present

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """L2-normalised common-space vector per modality, after attention with the present partners."""
        return self._vectors(batch)[0]

    def embed(self, batch: Batch) -> Tensor:
        """Mean of the present modalities' vectors, re-normalised (zeros for a sample with none)."""
        f, present = self._vectors(batch)
        w = torch.stack([present[m] for m in self.modalities], 1).to(f[self.modalities[0]].dtype)
        s = sum(f[m] * w[:, j:j + 1] for j, m in enumerate(self.modalities))
        return F.normalize(s / w.sum(1, keepdim=True).clamp_min(1.0), dim=1)

    # ------------------------------------------------------------------ loss
    def _labels(self, batch: Batch) -> Tensor:
        y = batch.labels
        if y is None:
            raise DataError(f"the {self.name} loss needs class labels (classification Eq. 3.1.4 and the triplets of "
                            "Eq. 3.1.6 use them) but batch.labels is None; give the dataset labels")
        if bool(self.config["multilabel"]) != (y.ndim == 2):
            raise DataError(f"multilabel={self.config['multilabel']} but the labels have shape {tuple(y.shape)}; "
                            "use multilabel=True for (N, C) 0/1 labels and False for (N,) class ids")
        return y

    def check_data(self, data: MultimodalDataset) -> None:
        super().check_data(data)
        n = self.config["n_classes"]
        if data.labels is None or n is None:
            return
        if bool(self.config["multilabel"]) != data.multilabel:
            raise DataError(f"multilabel={self.config['multilabel']} but the data's labels are "
                            f"{'multi' if data.multilabel else 'single'}-label; set multilabel={data.multilabel}")
        k = int(data.num_classes or 0)
        if k > int(n) or (data.multilabel and k != int(n)):
            raise DataError(f"the data has {k} classes but n_classes={n}; use n_classes={k}")

    def _classification(self, f: dict[str, Tensor], present: dict[str, Tensor], y: Tensor,
                        mods: list[str]) -> Tensor:
        """Eq. 3.1.4 over every present (sample, modality) of ``mods``, mean-reduced."""
        if self.classifier is None:
            raise DataError(f"the {self.name} classification loss (alpha={self.config['alpha']}) needs n_classes; "
                            "pass n_classes=<number of classes> or alpha=0")
        logits = self.classifier(torch.cat([f[m] for m in mods]))
        w = torch.cat([present[m] for m in mods]).to(logits.dtype)
        yy = y.repeat(len(mods), *([1] * (y.ndim - 1)))
        if self.config["multilabel"]:
            per = F.binary_cross_entropy_with_logits(logits, yy.to(logits.dtype), reduction="none").mean(1)
        else:
            per = F.cross_entropy(logits, yy, reduction="none")
        return (per * w).sum() / w.sum().clamp_min(1.0)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """``alpha L_c + beta L_t`` (Eq. 3.1.7) over the modalities of the current stage."""
        y = self._labels(batch)
        f, present = self._vectors(batch)
        avail, new = self._stage_sets()
        present = {m: present[m] for m in avail}
        c = self.config
        trained = [m for m in avail if m in new]
        # 0 * (trained outputs) keeps the total on the graph when a batch holds no usable sample
        zero = sum(f[m].sum() for m in trained) * 0.0
        l_c = zero
        if c["alpha"] > 0:
            l_c = l_c + self._classification(f, present, y, trained)
        g1, g2, g3 = c["gammas"]
        m1, m2, m3 = c["margins"]
        cache: dict[tuple[str, str, float], Tensor] = {}

        def term(x: str, z: str, margin: float) -> Tensor:
            if (x, z, margin) not in cache:
                cache[(x, z, margin)] = triplet_loss(f[x], f[z], y, y, margin, present[x], present[z], same=x == z)[0]
            return cache[(x, z, margin)]

        l_t = zero
        if c["beta"] > 0:
            for x, z in self._loss_pairs(avail, new):
                # Eq. 3.1.6: gamma_1 intra-x, gamma_2 intra-y, gamma_3 inter (both directions, averaged)
                l_t = l_t + g1 * term(x, x, m1) + g2 * term(z, z, m2) + g3 * 0.5 * (term(x, z, m3) + term(z, x, m3))
        total = c["alpha"] * l_c + c["beta"] * l_t
        return {"total": total, "classification": l_c.detach(), "triplet": l_t.detach()}


@register("mcvs")
class MCVS(CVS):
    """M-CVS (thesis Sec. 3.2): CVS trained stage by stage. ``stage_order`` defaults to the thesis's schedule:
    the first two modalities of ``dims``, then one more per stage. All other hyper-parameters as :class:`CVS`."""

    def __init__(self, dims: Dims, stage_order: Sequence[Sequence[str]] | None = None, **hparams: Any) -> None:
        if stage_order is None:
            mods = list(dims)
            stage_order = [mods[:2]] + [[m] for m in mods[2:]]
        super().__init__(dims, stage_order=stage_order, **hparams)


@register("rvs")
class RVS(CVS):
    """RVS (thesis Sec. 3.3): one block per non-reference modality, each paired with ``reference`` only.

    ``reference`` (None = first modality of ``dims``) must be in the first stage; ``stage_order`` defaults to
    ``[[reference, next], [next], ...]`` (thesis: image + text, then audio, video, 3D). Blocks are
    :class:`ReferenceAttention`: each owns ``W_i, W_s, W_is, W_se``; ``W_ie`` is one matrix of the model, trained
    in the first stage and frozen after. The triplet loss pairs every modality with the reference only.
    """

    def __init__(self, dims: Dims, reference: str | None = None,
                 stage_order: Sequence[Sequence[str]] | None = None, **hparams: Any) -> None:
        mods = list(dims)
        ref = mods[0] if reference is None else reference
        if ref not in dims:
            raise DataError(f"reference modality {ref!r} is not in dims {mods}")
        if stage_order is None:
            others = [m for m in mods if m != ref]
            stage_order = [[ref, *others[:1]]] + [[m] for m in others[1:]]
        if not any(ref in g for g in stage_order[:1]):
            raise DataError(f"the reference modality {ref!r} must be in the first group of stage_order {stage_order}")
        self._reference = ref  # read while the base class builds the blocks
        super().__init__(dims, stage_order=stage_order, **hparams)
        self.save_config(reference=ref)

    @property
    def reference(self) -> str:
        return self._reference

    def _init_shared(self) -> None:
        if self.config["attention"]:
            c = self.config
            w = torch.empty(c["attention_hidden"] or self.dim, self.dim)
            nn.init.xavier_uniform_(w)
            self.w_ie = nn.Parameter(w)

    def _new_pairs(self, existing: list[str], group: list[str]) -> list[tuple[str, str]]:
        return [(self._reference, m) for m in group if m != self._reference]

    def _make_block(self) -> nn.Module:
        c = self.config
        return ReferenceAttention(self.dim, c["attention_hidden"], c["use_wi"], c["use_ws"], c["use_wis"])

    def _block_alphas(self, key: str, g_a: Tensor, g_b: Tensor, update_a: bool) -> tuple[Tensor | None, Tensor]:
        # the reference side (Eq. 3.3.5) only in first-stage blocks: later ones must not move the reference
        return self.blocks[key].alphas(g_a, g_b, self.w_ie if update_a else None)

    def _loss_pairs(self, avail: list[str], new: set[str]) -> list[tuple[str, str]]:
        ref = self._reference
        return [(ref, m) for m in avail if m != ref and (m in new or ref in new)]
