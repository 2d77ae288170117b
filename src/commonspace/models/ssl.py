"""Semantic Similarity Learning (SSL) on three multimodal networks: MRBM, MDBN and MDAE.

SSL paper ("Multimodal Learning via Exploring Deep Semantic Similarity", ACM MM 2016), Eq. 1:
``minimise -log p(x, y) + lambda sim(H^x, H^y)``, where ``H^x`` (``H^y``) is the shared hidden layer computed
from modality x (y) alone, the other absent, and ``sim`` is a cross-entropy (Eq. 2, ``"ce_xy"``/``"ce_yx"``) or
minus the CCA trace norm (Eq. 3, ``"cca"``) from :mod:`commonspace.losses.similarity`. ``sim="none"`` or
``lam=0`` is plain maximum joint likelihood learning (MJLL), reproduced bit for bit.

Algorithm 1 alternates per mini-batch: step 2, a CD update of every parameter; step 3, a gradient step on the
regulariser for the weight matrices only (footnote 2: the biases barely affect the hidden activations). With
``schedule="alternate"`` the models ask the trainer for the substeps ``("cd", "sim")`` (``("recon", "sim")`` for
the MDAE); ``schedule="joint"`` takes one step on ``cd + lam * sim`` instead. Either way the similarity's gradient
reaches only the shared layer's ``W^x`` and ``W^y`` (biases and lower layers detached; the paper's conclusion:
"the learning is performed just in the M-RBM layers").

Loss terms: ``"total"`` = ``cd + lam * sim``; ``"cd"`` (``"recon"``); ``"sim"``, whose *value* is the raw
``sim(H^x, H^y)`` (monitored even when ``lam = 0``, then under no_grad) and whose *gradient* is ``lam`` times the
similarity's, so the trainer's ``"sim"`` substep is the lambda-weighted step of Algorithm 1. ``"sim"`` is absent
for ``sim="none"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.similarity import CE_GRADS
from commonspace.models.base import MultimodalModel, Stage, register
from commonspace.models.bidnn import masked_pair_mse, two_modalities
from commonspace.nn.mlp import MLP, check_prob, flat_dim, glorot_, masked_flat
from commonspace.nn.rbm import RBM, RBM_VISIBLE_TYPES, VISIBLE_TYPES, MultimodalRBM

__all__ = ["MDAE", "MDBN", "MRBM", "SCHEDULES", "SIM_KINDS", "SSLModel"]

#: ``sim`` values: MJLL ("none") and the paper's three similarity functions
SIM_KINDS = ("none", "ce_xy", "ce_yx", "cca")
SCHEDULES = ("alternate", "joint")
#: default shrinkage of the CCA term's batch covariances towards their diagonals (docs/methods.md)
CCA_SHRINK = 0.3

# Plain momentum SGD, batch 100: the usual RBM recipe (Hinton's practical guide); lr per model below.
_RBM_SGD: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "batch_size": 100}


def _pair(value: str | Sequence[str], what: str, allowed: Sequence[str] = VISIBLE_TYPES) -> tuple[str, str]:
    if isinstance(value, str):
        value = (value, value)
    value = tuple(str(v) for v in value)
    if len(value) != 2 or any(v not in allowed for v in value):
        raise DataError(f"{what}={list(value)}; give one of {list(allowed)} per modality (x, y)")
    return value[0], value[1]


def _layers(value: Sequence[int], what: str) -> list[int]:
    if isinstance(value, int):
        value = [value]
    sizes = [int(v) for v in value]
    if any(v < 1 for v in sizes):
        raise DataError(f"{what}={sizes}: layer sizes must be positive")
    return sizes


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _epochs(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise DataError(f"{name} must be a non-negative integer or None, got {value!r}")
    return int(value)


def _steps(value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise DataError(f"infer_steps must be a non-negative integer (0 = no inference), got {value!r}")
    return int(value)


def _same_batch(a: Batch, b: Batch) -> bool:
    """The trainer passes the same Batch object to every substep; DDP may rebuild it, so compare indices too."""
    if a is b:
        return True
    if a.index is None or b.index is None or a.index.shape != b.index.shape:
        return False
    return bool(torch.equal(a.index, b.index.to(a.index.device)))


class SSLModel(MultimodalModel):
    """Shared SSL machinery: hyper-parameters ``sim``, ``lam``, ``schedule``, the loss dict and the substeps.

    Subclasses provide ``_main_loss`` (CD or reconstruction), ``_shared_pair`` (``H^x``, ``H^y`` with gradient
    only to the shared weight matrices) and name their main term in ``main_term``.
    """

    requires_complete = True
    main_term: ClassVar[str] = "cd"

    def _init_ssl(self, sim: str, lam: float, schedule: str, ce_grad: str = "fitted",
                  cca_shrink: float = 0.0) -> None:
        two_modalities(self.dims, type(self).__name__)
        if sim not in SIM_KINDS:
            raise DataError(f"sim={sim!r}; choose one of {list(SIM_KINDS)}")
        if schedule not in SCHEDULES:
            raise DataError(f"schedule={schedule!r}; choose one of {list(SCHEDULES)}")
        if not float(lam) >= 0.0:
            raise DataError(f"lam must be >= 0, got {lam}")
        if ce_grad not in CE_GRADS:
            raise DataError(f"ce_grad={ce_grad!r}; choose one of {list(CE_GRADS)} (fitted: the target modality's "
                            "activations are detached)")
        if not 0.0 <= float(cca_shrink) <= 1.0:
            raise DataError(f"cca_shrink must lie in [0, 1], got {cca_shrink}")
        self.save_config(sim=sim, lam=float(lam), schedule=schedule, ce_grad=ce_grad, cca_shrink=float(cca_shrink))
        self.mx, self.my = self.modalities
        self.sim, self.lam, self.schedule = sim, float(lam), schedule
        self.ce_grad, self.cca_shrink = ce_grad, float(cca_shrink)
        # (batch, detached main term) of the substep in flight; see _cached_main
        self._pending: tuple[Batch, Tensor] | None = None

    @property
    def ssl_active(self) -> bool:
        """Whether the similarity term trains anything (False = MJLL)."""
        return self.sim != "none" and self.lam > 0.0

    def _ssl_stage(self) -> bool:
        return True

    def substeps(self) -> tuple[str, ...] | None:
        """Algorithm 1's alternation ``(main term, "sim")`` when SSL is on and ``schedule="alternate"``."""
        if self.ssl_active and self.schedule == "alternate" and self._ssl_stage():
            return (self.main_term, "sim")
        return None

    # ----------------------------------------------------------------- inputs
    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        px, py = batch.present(self.mx), batch.present(self.my)
        return masked_flat(batch.features[self.mx], px), masked_flat(batch.features[self.my], py), px, py

    # --------------------------------------------------------------- the loss
    def _main_loss(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def _shared_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _cached_main(self, batch: Batch) -> Tensor | None:
        """On the trainer's second ("sim") forward of a batch, the first forward's main term.

        The trainer runs each substep on a fresh forward of the same batch. Redrawing the CD negative sample
        for a term nobody differentiates would waste a Gibbs chain, advance persistent chains twice per batch
        and use extra random numbers, so the "sim" forward reuses the first one's value (detached) and
        recomputes only the similarity, with the parameters the CD step produced.
        """
        if not (self.training and self.substeps()):
            self._pending = None
            return None
        pending, self._pending = self._pending, None
        if pending is not None and _same_batch(pending[0], batch):
            return pending[1]
        return None

    def _ssl_loss(self, batch: Batch) -> dict[str, Tensor]:
        main = self._cached_main(batch)
        if main is None:
            main = self._main_loss(batch)
            if self.training and self.substeps():
                self._pending = (batch, main.detach())
        out = {"total": main, self.main_term: main}
        if self.sim == "none":
            return out
        if not self.ssl_active:
            with torch.no_grad():  # monitoring only: no graph, no random draw, so MJLL stays exact
                out["sim"] = self._similarity(*self._shared_pair(batch))
            return out
        raw = self._similarity(*self._shared_pair(batch))
        # value raw, gradient lam * d raw: the "sim" substep is Algorithm 1's lambda-weighted step 3
        out["sim"] = self.lam * raw + (1.0 - self.lam) * raw.detach()
        out["total"] = main + self.lam * raw
        return out

    def _similarity(self, hx: Tensor, hy: Tensor) -> Tensor:
        from commonspace.losses.similarity import similarity  # imported late: a sibling module

        if hx.shape[0] < 2:  # CCA needs two samples; keep a graph so a substep can still call backward
            return hx.sum() * 0.0 + hy.sum() * 0.0
        if self.sim == "cca":
            return similarity(hx, hy, "cca", shrink=self.cca_shrink)
        return similarity(hx, hy, self.sim, grad=self.ce_grad)

    def _complete_rows(self, batch: Batch, hx: Tensor, hy: Tensor) -> tuple[Tensor, Tensor]:
        both = batch.present(self.mx) & batch.present(self.my)
        return hx[both], hy[both]

    # ------------------------------------------------------------ data checks
    def _inputs_of(self, *kinds: str) -> list[str]:
        """The modalities whose first visible layer is of one of these kinds (none for the MDAE)."""
        return [m for m, v in zip(self.modalities, getattr(self, "visible", ()), strict=False) if v in kinds]

    def _bernoulli_inputs(self) -> list[str]:
        return self._inputs_of("bernoulli")

    def unscaled_modalities(self) -> list[str]:
        """Bernoulli (and replicated-softmax) inputs keep their scale: the CLI and API do not standardise them."""
        return self._inputs_of("bernoulli", "softmax")

    def check_data(self, data: MultimodalDataset) -> None:
        """Also: Bernoulli visible units need features in [0, 1]."""
        super().check_data(data)
        for m in self._bernoulli_inputs():
            lo, hi = data.value_range(m) or (0.0, 0.0)  # missing rows are zeros, inside [0, 1]
            if lo < 0.0 or hi > 1.0:
                raise DataError(f"modality {m!r} has values in [{lo:.3g}, {hi:.3g}] but its visible units are "
                                "Bernoulli, which need data in [0, 1]; scale it to [0, 1] or use Gaussian "
                                "visible units (visible=...) on standardised features")


# ======================================================================== MRBM
@register("mrbm")
class MRBM(SSLModel):
    """Multimodal RBM directly on the two modalities (SSL paper Sec. 3.1-3.2, Table 1: MNIST halves).

    Hyper-parameters: ``hidden`` (512; the paper gives no size, 512 trains fast on CPU), ``visible``
    (("bernoulli", "bernoulli"); "gaussian" for standardised real data), ``sim`` ("none"), ``lam`` (0.1),
    ``schedule`` ("alternate"), ``cd_k`` (1), ``persistent`` (False: CD-k; True: PCD with ``n_chains`` (100)
    persistent chains kept in the state dict, trained without momentum), ``infer_steps`` (10: mean-field rounds
    inferring a missing modality in :meth:`embed`), ``ce_grad`` ("fitted": the cross-entropy's target is
    detached), ``cca_shrink`` (0.3: covariance shrinkage of the CCA term).
    """

    train_defaults = {**_RBM_SGD, "lr": 0.05}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], hidden: int = 512,
                 visible: str | Sequence[str] = ("bernoulli", "bernoulli"), sim: str = "none", lam: float = 0.1,
                 schedule: str = "alternate", cd_k: int = 1, persistent: bool = False, n_chains: int = 100,
                 infer_steps: int = 10, ce_grad: str = "fitted", cca_shrink: float = CCA_SHRINK) -> None:
        super().__init__(dims)
        self._init_ssl(sim, lam, schedule, ce_grad, cca_shrink)
        vis = _pair(visible, "visible")
        self.save_config(hidden=_positive("hidden", hidden), visible=list(vis), cd_k=_positive("cd_k", cd_k),
                         persistent=bool(persistent), n_chains=_positive("n_chains", n_chains),
                         infer_steps=_steps(infer_steps))
        self.infer_steps = int(infer_steps)
        self.cd_k, self.persistent, self.visible = int(cd_k), bool(persistent), vis
        if self.persistent:  # PCD diverges with momentum 0.9 (chains lag the model; docs/methods.md)
            self.train_defaults = {**type(self).train_defaults, "momentum": 0.0}
        self.rbm = MultimodalRBM(flat_dim(self.dims[self.mx]), flat_dim(self.dims[self.my]), int(hidden), vis,
                                 n_chains=int(n_chains) if persistent else 0)

    def _main_loss(self, batch: Batch) -> Tensor:
        x, y, px, py = self._inputs(batch)
        both = px & py
        if self.persistent:
            return self.rbm.pcd_loss(x, y, self.cd_k, both)
        return self.rbm.cd_loss(x, y, self.cd_k, weight=both)[0]

    def _shared_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y, _, _ = self._inputs(batch)
        hx = self.rbm.hidden_from(x=x, detach_bias=True)
        hy = self.rbm.hidden_from(y=y, detach_bias=True)
        return self._complete_rows(batch, hx, hy)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """``{"total", "cd", "sim"}``: CD-k/PCD of the joint free energy plus the SSL term (Eq. 1)."""
        return self._ssl_loss(batch)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """``{x: H^x, y: H^y}``, the mean-field shared layer from each modality alone."""
        x, y, _, _ = self._inputs(batch)
        return {self.mx: self.rbm.hidden_from(x=x), self.my: self.rbm.hidden_from(y=y)}

    def embed(self, batch: Batch) -> Tensor:
        """The joint code: ``p(h | x, y)``; with one modality, mean-field inference of the other
        (``infer_steps`` rounds, :meth:`MultimodalRBM.infer`; 0 = the present modality alone)."""
        return self.embed_with(batch, self.infer_steps)

    def embed_with(self, batch: Batch, infer_steps: int) -> Tensor:
        """:meth:`embed` with an explicit number of inference rounds for a missing modality."""
        x, y, px, py = self._inputs(batch)
        return self.rbm.infer(x, y, px, py, infer_steps)[0]

    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """``E[x | h]``, ``E[y | h]`` from the inferred joint code: crossmodal generation for a missing one."""
        x, y, px, py = self._inputs(batch)
        h = self.rbm.infer(x, y, px, py, self.infer_steps)[0]
        rx, ry = self.rbm.visible_mean(h)
        return {self.mx: rx.reshape(len(batch), *self.dims[self.mx]),
                self.my: ry.reshape(len(batch), *self.dims[self.my])}


# ======================================================================== MDBN
def _doc_length(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value) > 0:
        raise DataError(f"doc_length must be a positive number (the pseudo document length) or None, got {value!r}")
    return float(value)


def _lr(value: Any, name: str) -> float | None:
    """None (the trainer's learning rate) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value) > 0:
        raise DataError(f"{name} must be a positive learning rate or None (the trainer's), got {value!r}")
    return float(value)


def _pretrain_lrs(value: Any, n_layers: tuple[int, int]) -> list[list[float | None]]:
    """``pretrain_lr`` as one learning rate (or None) per layer of each stack.

    Accepts None or one number (every layer), or a pair (x, y) whose entries are None, one number (every layer
    of that stack) or one value per layer.
    """
    if value is None or isinstance(value, int | float):
        return [[_lr(value, "pretrain_lr")] * n for n in n_layers]
    if isinstance(value, str) or len(value) != 2:
        raise DataError(f"pretrain_lr must be None, a number or a pair (x, y), got {value!r}")
    out = []
    for part, n, which in zip(value, n_layers, ("x", "y"), strict=True):
        if part is None or isinstance(part, int | float):
            out.append([_lr(part, f"pretrain_lr[{which}]")] * n)
            continue
        if isinstance(part, str) or len(part) != n:
            raise DataError(f"pretrain_lr[{which}]={part!r}: give None, one number or {n} (one per layer)")
        out.append([_lr(v, f"pretrain_lr[{which}]") for v in part])
    return out


@register("mdbn")
class MDBN(SSLModel):
    """Multimodal DBN (Srivastava & Salakhutdinov; SSL paper Table 2): RBM stacks per modality, a top MRBM.

    Hyper-parameters: ``layers_x`` / ``layers_y`` ((1024, 1024), the paper's sizes) hidden sizes of the
    modality stacks; ``shared`` (2048) units of the top MRBM; ``visible`` (("gaussian", "gaussian")): the first
    RBM's visible type per modality (Gaussian for standardised real features, "bernoulli" for data in [0, 1],
    "softmax" for the replicated softmax on bag-of-words counts, Srivastava & Salakhutdinov's text pathway;
    higher layers are Bernoulli); ``doc_length`` (None): for a "softmax" modality, None = the features are word
    counts, a number ``D`` = each row is rescaled to sum ``D`` (for proportions such as topic mixtures: the
    pseudo document length, which sets how strongly the counts drive the RSM's hidden units); ``sim``,
    ``lam``, ``schedule``, ``cd_k``, ``persistent``, ``n_chains`` as for :class:`MRBM` (CD/PCD settings apply to
    every RBM); ``pretrain_epochs`` / ``joint_epochs`` (None: the trainer's epochs) per stage; ``pretrain_lr``
    (None: the trainer's learning rate; one number for every layer, or a pair (x, y) of None / one number / one
    per layer) and ``joint_lr`` (None: the trainer's) the stages' learning rates (Srivastava & Salakhutdinov
    tune them per layer). The replicated softmax's CD gradient grows with the document length (its statistics
    are counts), so its layer wants a learning rate about ``1 / D`` times the others', e.g.
    ``pretrain_lr=(None, [0.01 / D, None])``.

    Stages: ``pretrain_<m>_<i>`` greedy layer-wise pre-training of RBM ``i`` of modality ``m`` on the mean-field
    activations of the layers below (x stack, then y stack), then ``joint``: the top MRBM with SSL.
    """

    train_defaults = {**_RBM_SGD, "lr": 0.01}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]],
                 layers_x: Sequence[int] = (1024, 1024), layers_y: Sequence[int] = (1024, 1024),
                 shared: int = 2048, visible: str | Sequence[str] = ("gaussian", "gaussian"), sim: str = "none",
                 lam: float = 0.1, schedule: str = "alternate", cd_k: int = 1, persistent: bool = False,
                 n_chains: int = 100, pretrain_epochs: int | None = None, joint_epochs: int | None = None,
                 infer_steps: int = 10, ce_grad: str = "fitted", cca_shrink: float = CCA_SHRINK,
                 doc_length: float | None = None, pretrain_lr: Any = None, joint_lr: float | None = None) -> None:
        super().__init__(dims)
        self._init_ssl(sim, lam, schedule, ce_grad, cca_shrink)
        vis = _pair(visible, "visible", RBM_VISIBLE_TYPES)  # the replicated softmax too
        lx, ly = _layers(layers_x, "layers_x"), _layers(layers_y, "layers_y")
        for m, kind, sizes in ((self.mx, vis[0], lx), (self.my, vis[1], ly)):
            if kind == "softmax" and not sizes:
                raise DataError(f"modality {m!r} has visible='softmax' but no layers of its own; the top MRBM "
                                "takes Bernoulli or Gaussian groups only, so give it at least one layer")
        self.save_config(doc_length=_doc_length(doc_length), pretrain_lr=_pretrain_lrs(pretrain_lr, (len(lx), len(ly))),
                         joint_lr=_lr(joint_lr, "joint_lr"))
        self.save_config(layers_x=lx, layers_y=ly, shared=_positive("shared", shared), visible=list(vis),
                         cd_k=_positive("cd_k", cd_k), persistent=bool(persistent),
                         n_chains=_positive("n_chains", n_chains),
                         pretrain_epochs=_epochs("pretrain_epochs", pretrain_epochs),
                         joint_epochs=_epochs("joint_epochs", joint_epochs), infer_steps=_steps(infer_steps))
        self.cd_k, self.persistent, self.visible = int(cd_k), bool(persistent), vis
        self.infer_steps = int(infer_steps)
        chains = int(n_chains) if persistent else 0
        stacks = []
        for m, sizes, kind in ((self.mx, lx, vis[0]), (self.my, ly, vis[1])):
            widths = [flat_dim(self.dims[m]), *sizes]
            stacks.append(nn.ModuleList(
                RBM(widths[i], widths[i + 1], kind if i == 0 else "bernoulli", n_chains=chains)
                for i in range(len(sizes))))
        self.stack_x, self.stack_y = stacks
        # the top MRBM sees mean-field probabilities (Bernoulli), or the raw input when a stack is empty
        top_vis = (vis[0] if not lx else "bernoulli", vis[1] if not ly else "bernoulli")
        top_x = lx[-1] if lx else flat_dim(self.dims[self.mx])
        top_y = ly[-1] if ly else flat_dim(self.dims[self.my])
        self.top = MultimodalRBM(top_x, top_y, int(shared), top_vis, n_chains=chains)
        self._layer_of = {f"pretrain_{m}_{i + 1}": (j, i) for j, (m, stack) in
                          enumerate(((self.mx, self.stack_x), (self.my, self.stack_y))) for i in range(len(stack))}

    def check_data(self, data: MultimodalDataset) -> None:
        """Also: replicated-softmax (count) inputs need non-negative features."""
        super().check_data(data)
        for m in self._inputs_of("softmax"):
            lo = (data.value_range(m) or (0.0, 0.0))[0]
            if lo < 0.0:
                raise DataError(f"modality {m!r} has values down to {lo:.3g} but its visible units are a "
                                "replicated softmax, which needs non-negative counts; do not standardise it (give "
                                "word counts, or proportions with doc_length=...) or use visible='gaussian'")

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As :meth:`SSLModel._inputs`, with the rows of a "softmax" modality rescaled to ``doc_length``."""
        x, y, px, py = super()._inputs(batch)
        return self._as_counts(x, 0), self._as_counts(y, 1), px, py

    def _as_counts(self, v: Tensor, which: int) -> Tensor:
        length = self.config["doc_length"]
        if self.visible[which] != "softmax" or length is None:
            return v
        total = v.sum(1, keepdim=True)
        # empty rows (absent modality, empty document) stay zero instead of dividing by zero
        return torch.where(total > 0, v * (float(length) / total.clamp_min(torch.finfo(v.dtype).tiny)), v)

    # ---------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        pre, lrs = self.config["pretrain_epochs"], self.config["pretrain_lr"]
        out = [Stage(name, list((self.stack_x, self.stack_y)[j][i].parameters()), epochs=pre, lr=lrs[j][i])
               for name, (j, i) in self._layer_of.items()]
        out.append(Stage("joint", list(self.top.parameters()), epochs=self.config["joint_epochs"],
                         lr=self.config["joint_lr"]))
        return out

    def set_stage(self, name: str | None) -> None:
        if name is not None and name != "joint" and name not in self._layer_of:
            raise ValueError(f"unknown stage {name!r}; MDBN stages are {[*self._layer_of, 'joint']}")
        super().set_stage(name)

    def _ssl_stage(self) -> bool:
        return self.stage is None or self.stage == "joint"

    # ----------------------------------------------------------------- passes
    def up(self, v: Tensor, which: int, n_layers: int | None = None) -> Tensor:
        """Mean-field up-pass of modality ``which`` (0 = x, 1 = y) through its first ``n_layers`` RBMs."""
        stack = (self.stack_x, self.stack_y)[which]
        for rbm in list(stack)[:n_layers]:
            v = rbm.hidden_prob(v)
        return v

    def _top_inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, y, px, py = self._inputs(batch)
        return self.up(x, 0), self.up(y, 1), px, py

    def _main_loss(self, batch: Batch) -> Tensor:
        with torch.no_grad():  # the stacks are fixed in the joint stage (SSL trains the MRBM layer only)
            tx, ty, px, py = self._top_inputs(batch)
        if self.persistent:
            return self.top.pcd_loss(tx, ty, self.cd_k, px & py)
        return self.top.cd_loss(tx, ty, self.cd_k, weight=px & py)[0]

    def _shared_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            tx, ty, _, _ = self._top_inputs(batch)
        hx = self.top.hidden_from(x=tx, detach_bias=True)
        hy = self.top.hidden_from(y=ty, detach_bias=True)
        return self._complete_rows(batch, hx, hy)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Pre-training stage: ``{"total", "cd"}`` of that RBM. Joint stage (or none set): ``{"total", "cd",
        "sim"}`` of the top MRBM."""
        if self.stage in self._layer_of:
            j, i = self._layer_of[self.stage]
            x, y, px, py = self._inputs(batch)
            rbm = (self.stack_x, self.stack_y)[j][i]
            with torch.no_grad():
                v = self.up((x, y)[j], j, i)
            present = (px, py)[j]
            cd = rbm.pcd_loss(v, self.cd_k, present) if self.persistent else rbm.cd_loss(v, self.cd_k,
                                                                                          weight=present)[0]
            return {"total": cd, "cd": cd}
        return self._ssl_loss(batch)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """``{x: H^x, y: H^y}``: the top MRBM's shared layer from each modality's up-pass alone."""
        tx, ty, _, _ = self._top_inputs(batch)
        return {self.mx: self.top.hidden_from(x=tx), self.my: self.top.hidden_from(y=ty)}

    def embed(self, batch: Batch) -> Tensor:
        """The top MRBM's joint code; with one modality, mean-field inference of the other's top-layer input
        (``infer_steps`` rounds in the top MRBM; 0 = the present modality alone)."""
        return self.embed_with(batch, self.infer_steps)

    def embed_with(self, batch: Batch, infer_steps: int) -> Tensor:
        """:meth:`embed` with an explicit number of inference rounds for a missing modality."""
        tx, ty, px, py = self._top_inputs(batch)
        return self.top.infer(tx, ty, px, py, infer_steps)[0]


# ======================================================================== MDAE
@register("mdae")
class MDAE(SSLModel):
    """Multimodal deep autoencoder (Ngiam et al. 2011; SSL paper Table 3) with the SSL term on its shared layer.

    ``e_m = sigmoid MLP(x_m)`` (``layers_x`` / ``layers_y``, default (512,)); shared layer
    ``H = sigmoid(p_x W^x e_x + p_y W^y e_y + c)`` (``shared`` = 256 units; an absent modality adds nothing);
    decoders ``x_m' = V_m sigmoid-MLP(H)`` mirror the encoders with a linear output; loss ``"recon"`` = sum over
    modalities of the MSE (standardised real-valued input). Ngiam-style augmentation: in training, a fraction
    ``p_zero`` (2/3: Ngiam's one third audio-only, one third video-only) of the samples loses one modality
    (uniformly chosen) at the input while both are reconstructed. The RBM pre-training of Ngiam et al. is not
    done (Glorot initialisation instead). ``sim``, ``lam``, ``schedule`` as for :class:`MRBM`; substeps
    ``("recon", "sim")``.
    """

    main_term = "recon"
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], layers_x: Sequence[int] = (512,),
                 layers_y: Sequence[int] = (512,), shared: int = 256, p_zero: float = 2.0 / 3.0,
                 sim: str = "none", lam: float = 0.1, schedule: str = "alternate", ce_grad: str = "fitted",
                 cca_shrink: float = CCA_SHRINK) -> None:
        super().__init__(dims)
        self._init_ssl(sim, lam, schedule, ce_grad, cca_shrink)
        lx, ly = _layers(layers_x, "layers_x"), _layers(layers_y, "layers_y")
        self.save_config(layers_x=lx, layers_y=ly, shared=_positive("shared", shared),
                         p_zero=check_prob("p_zero", p_zero))
        dx, dy = flat_dim(self.dims[self.mx]), flat_dim(self.dims[self.my])
        s = int(shared)
        self.enc_x = MLP([dx, *lx], "sigmoid", output_activation="sigmoid") if lx else nn.Identity()
        self.enc_y = MLP([dy, *ly], "sigmoid", output_activation="sigmoid") if ly else nn.Identity()
        # W^x, W^y without biases and one shared bias c, so the SSL step can touch the weights alone
        self.shared_x = glorot_(nn.Linear(lx[-1] if lx else dx, s, bias=False))
        self.shared_y = glorot_(nn.Linear(ly[-1] if ly else dy, s, bias=False))
        self.shared_bias = nn.Parameter(torch.zeros(s))
        self.dec_x = MLP([s, *reversed(lx), dx], "sigmoid", output_activation="linear")
        self.dec_y = MLP([s, *reversed(ly), dy], "sigmoid", output_activation="linear")

    def shared_layer(self, ex: Tensor, ey: Tensor, px: Tensor, py: Tensor) -> Tensor:
        """``H = sigmoid(p_x W^x e_x + p_y W^y e_y + c)``."""
        ax = self.shared_x(ex) * px.reshape(-1, 1).to(ex.dtype)
        ay = self.shared_y(ey) * py.reshape(-1, 1).to(ey.dtype)
        return torch.sigmoid(ax + ay + self.shared_bias)

    def _zero_one(self, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
        """Training-time input presence: ``p_zero`` of the complete samples keep only one modality."""
        p = float(self.config["p_zero"])
        if not self.training or p == 0.0:
            return px, py
        hit = (torch.rand(px.shape, device=px.device) < p) & px & py
        drop_x = hit & (torch.rand(px.shape, device=px.device) < 0.5)
        return px & ~drop_x, py & ~(hit & ~drop_x)

    def _main_loss(self, batch: Batch) -> Tensor:
        x, y, px, py = self._inputs(batch)
        ix, iy = self._zero_one(px, py)
        h = self.shared_layer(self.enc_x(x * ix.reshape(-1, 1).to(x.dtype)),
                              self.enc_y(y * iy.reshape(-1, 1).to(y.dtype)), ix, iy)
        # both modalities are reconstructed wherever they exist, whichever ones went in
        return masked_pair_mse(self.dec_x(h), x, px) + masked_pair_mse(self.dec_y(h), y, py)

    def _shared_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y, _, _ = self._inputs(batch)
        with torch.no_grad():  # SSL moves the shared layer's weights only, not the encoders
            ex, ey = self.enc_x(x), self.enc_y(y)
        c = self.shared_bias.detach()
        hx = torch.sigmoid(self.shared_x(ex) + c)
        hy = torch.sigmoid(self.shared_y(ey) + c)
        return self._complete_rows(batch, hx, hy)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """``{"total", "recon", "sim"}``: augmented reconstruction MSE plus the SSL term."""
        return self._ssl_loss(batch)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """``{x: H^x, y: H^y}``: the shared layer from each modality alone."""
        x, y, _, _ = self._inputs(batch)
        ex, ey = self.enc_x(x), self.enc_y(y)
        one, zero = torch.ones_like(batch.mask[:, 0]), torch.zeros_like(batch.mask[:, 0])
        return {self.mx: self.shared_layer(ex, ey, one, zero), self.my: self.shared_layer(ex, ey, zero, one)}

    def embed(self, batch: Batch) -> Tensor:
        """The shared layer from the present modalities."""
        x, y, px, py = self._inputs(batch)
        return self.shared_layer(self.enc_x(x), self.enc_y(y), px, py)

    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """Both modalities decoded from the shared layer of the present ones (crossmodal when one is absent)."""
        h = self.embed(batch)
        return {self.mx: self.dec_x(h).reshape(len(batch), *self.dims[self.mx]),
                self.my: self.dec_y(h).reshape(len(batch), *self.dims[self.my])}
