"""The model contract every method implements, and the registry that creates models by name."""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset

__all__ = ["MultimodalModel", "Stage", "available_memory", "available_models", "check_fits", "create",
           "create_for_data", "model_class", "per_modality", "register"]


@dataclass
class Stage:
    """One training stage: which parameters move and for how long.

    ``epochs=None`` means "the trainer's epoch count". ``lr`` overrides the trainer's learning rate.
    The trainer calls ``model.set_stage(name)`` before the stage so ``loss`` can pick its terms.
    """

    name: str
    parameters: list[nn.Parameter]
    epochs: int | None = None
    lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class MultimodalModel(nn.Module):
    """Base class: ``loss`` is the only thing the trainer optimises.

    Subclasses take ``dims`` (modality -> feature shape) first, then plain keyword hyper-parameters, and
    record them with ``self.save_config(...)`` so a checkpoint can rebuild the model without pickling.
    """

    name: ClassVar[str] = "base"
    #: train only on samples where every modality is present (BiDNN reference code)
    requires_complete: ClassVar[bool] = False
    #: models fitted in closed form (CCA, raw features) have no gradient training
    trainable: ClassVar[bool] = True
    #: the paper's training settings (TrainConfig fields) used when the caller gives none
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: the loss needs labels (cvs, mcvs, rvs, mahash, unihash): create_for_data refuses unlabelled data
    supervised: ClassVar[bool] = False

    @classmethod
    def hparams_from_data(cls, data: MultimodalDataset) -> dict[str, Any]:
        """Hyper-parameters read off the data (e.g. the class count); the caller's own values win."""
        return {}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]]) -> None:
        super().__init__()
        if not dims:
            raise DataError("a model needs at least one modality in dims")
        self.dims: dict[str, tuple[int, ...]] = {
            m: (int(d),) if isinstance(d, int) else tuple(int(v) for v in d) for m, d in dims.items()
        }
        self.modalities: tuple[str, ...] = tuple(self.dims)
        self.config: dict[str, Any] = {"dims": {m: list(d) for m, d in self.dims.items()}}
        self.stage: str | None = None

    def unscaled_modalities(self) -> list[str]:
        """Modalities read on their own scale (Bernoulli probabilities, word counts): not standardised."""
        return []

    # ---------------------------------------------------------------- config
    def save_config(self, **hparams: Any) -> None:
        self.config.update(hparams)

    def set_stage(self, name: str | None) -> None:
        self.stage = name

    def substeps(self) -> tuple[str, ...] | None:
        """Loss terms to step on one after another per batch (None: one step on "total").

        Each named term gets its own forward, backward and optimizer step, in order; parameters the term
        does not reach get no gradient and are left alone by the optimizer (SSL's Algorithm 1 alternation).
        """
        return None

    def stages(self) -> list[Stage]:
        return [Stage("main", [p for p in self.parameters() if p.requires_grad])]

    # ------------------------------------------------------------- contract
    def forward(self, batch: Batch) -> dict[str, Tensor]:  # DDP calls forward
        return self.loss(batch)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per-modality vectors in the common space (rows of missing modalities are meaningless)."""
        raise NotImplementedError

    def embed(self, batch: Batch) -> Tensor:
        """The joint vector from whatever modalities are present."""
        raise NotImplementedError

    def each_alone(self, mask: Tensor, fn: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """``{m: fn(mask with only modality m kept)}``: per-modality codes computed from one modality alone."""
        out = {}
        for j, m in enumerate(self.modalities):
            alone = torch.zeros_like(mask)
            alone[:, j] = mask[:, j]
            out[m] = fn(alone)
        return out

    def fit_closed_form(self, data: MultimodalDataset, split: str = "train") -> None:
        """For models with ``trainable = False``: fit directly from data."""
        raise NotImplementedError

    # --------------------------------------------------------------- checks
    def check_data(self, data: MultimodalDataset) -> None:
        """Fail before training when the data does not fit this model."""
        missing = [m for m in self.modalities if m not in data.features]
        if missing:
            raise DataError(f"the data lacks modalities {missing} that this {self.name} model was built for; "
                            f"data has {list(data.modalities)}")
        for m in self.modalities:
            if tuple(data.dims[m]) != self.dims[m]:
                raise DataError(f"modality {m!r} has shape {data.dims[m]} but the model expects {self.dims[m]}; "
                                "use a model built for these dimensions")

    def iter_outputs(self, data: MultimodalDataset, fn: Callable[[Batch], Any], index: Tensor | str | None = None,
                     batch_size: int = 1024) -> Iterator[Any]:
        """``fn(batch)`` over the data in eval mode without gradients, one batch at a time, moved to the CPU."""
        self.check_data(data)
        was = self.training
        dev = next(iter(self.parameters()), torch.empty(0)).device
        try:
            for b in data.select(list(self.modalities)).iter_batches(index, batch_size):
                self.eval()  # again per batch: the consumer may train between two of them
                with torch.no_grad():
                    out = fn(b.to(dev))
                yield {k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu()
        finally:
            self.train(was)

    def apply_batches(self, data: MultimodalDataset, fn: Callable[[Batch], Any], index: Tensor | str | None = None,
                      batch_size: int = 1024) -> Any:
        """Run ``fn`` over the data in eval mode and concatenate tensors (or dicts of tensors)."""
        outs = list(self.iter_outputs(data, fn, index, batch_size))
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return torch.cat(outs)

    def iter_embeddings(self, data: MultimodalDataset, index: Tensor | str | None = None,
                        batch_size: int = 1024) -> Iterator[dict[str, Tensor]]:
        """Per batch: ``enc_<m>`` for each modality, ``joint``, ``mask`` (B, M) in the model's modality order,
        ``index`` (dataset rows) and ``labels`` when the data has them: what ``commonspace embed`` streams."""
        def one(b: Batch) -> dict[str, Tensor]:
            out = {f"enc_{k}": v for k, v in self.encode(b).items()}
            out.update(joint=self.embed(b), mask=b.mask, index=b.index)
            if b.labels is not None:
                out["labels"] = b.labels
            return out

        return self.iter_outputs(data, one, index, batch_size)

    def encode_dataset(self, data: MultimodalDataset, index: Tensor | str | None = None) -> dict[str, Tensor]:
        return self.apply_batches(data, self.encode, index)

    def presence_mask(self, batch: Batch) -> Tensor:
        """(B, M) bool: which of the model's modalities each sample has, in the model's order (not the batch's)."""
        return torch.stack([batch.present(m) for m in self.modalities], dim=1)

    def embed_dataset(self, data: MultimodalDataset, index: Tensor | str | None = None) -> Tensor:
        return self.apply_batches(data, self.embed, index)


def per_modality(name: str, value: Any, modalities: Sequence[str], cast: Callable[[Any], Any] = float,
                 lists: bool = True) -> dict[str, Any]:
    """A hyper-parameter given once, as a {modality: value} mapping, or (``lists``) as a list in modality order.

    With ``lists=False`` a list is one value shared by every modality (e.g. hidden layer sizes).
    """
    if isinstance(value, Mapping):
        missing = [m for m in modalities if m not in value]
        extra = [m for m in value if m not in modalities]
        if missing or extra:
            raise DataError(f"{name} must give a value for each modality {list(modalities)}; missing {missing}, "
                            f"unknown {extra}")
        return {m: cast(value[m]) for m in modalities}
    if lists and isinstance(value, list | tuple):
        if len(value) != len(modalities):
            raise DataError(f"{name} has {len(value)} values for {len(modalities)} modalities {list(modalities)}")
        return {m: cast(v) for m, v in zip(modalities, value, strict=True)}
    return {m: cast(value) for m in modalities}


_REGISTRY: dict[str, type[MultimodalModel]] = {}


def register(name: str) -> Callable[[type[MultimodalModel]], type[MultimodalModel]]:
    def deco(cls: type[MultimodalModel]) -> type[MultimodalModel]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    import commonspace.models  # noqa: F401  (registers the methods)


def available_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[MultimodalModel]:
    _load_all()
    if name not in _REGISTRY:
        raise DataError(f"unknown model {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _constructor_params(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls.__init__``, following ``**hparams`` up to the parent constructors."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is nn.Module:
            continue
        sig = inspect.signature(init)
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that cannot be resolved is simply not checked
            hints = {}
        rest = False
        for p in list(sig.parameters.values())[2:]:  # self, dims
            if p.kind is p.VAR_KEYWORD:
                rest = True
            elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in params:
                params[p.name] = p.replace(annotation=hints.get(p.name, inspect.Parameter.empty))
        if not rest:
            break
    return params


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        elem = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not elem or all(_matches(v, elem[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return isinstance(value, dict) and (len(args) < 2 or all(_matches(v, args[1]) for v in value.values()))
    return True  # a type this check does not know: the constructor validates it


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple, collections.abc.Sequence):
        elem = [a for a in args if a is not Ellipsis]
        return f"a list of {_describe(elem[0])}" if elem else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping (JSON object)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def check_hparams(cls: type[MultimodalModel], hparams: Mapping[str, Any]) -> None:
    """Refuse unknown hyper-parameters and values of the wrong type, naming the parameter and the type."""
    params = _constructor_params(cls)
    unknown = sorted(set(hparams) - set(params))
    if unknown:
        raise DataError(f"unknown hyper-parameters {unknown} for model {cls.name!r}; valid ones: {sorted(params)}")
    for k, v in hparams.items():
        tp = params[k].annotation
        if not _matches(v, tp):
            default = "" if params[k].default is params[k].empty else f" (default {params[k].default!r})"
            raise DataError(f"hyper-parameter {k!r} of model {cls.name!r} must be {_describe(tp)}{default}, "
                            f"got {v!r}")


# ------------------------------------------------------------------------------ memory estimate
def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            raw = f.read().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # cgroup's "max" means no limit


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes a new allocation may take on ``device``, or None where that cannot be told.

    CPU: the kernel's MemAvailable plus free swap, capped by a cgroup v2 memory limit (containers); CUDA: the
    device's free memory. Tests patch this function to pin the limit.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    if dev.type != "cpu":
        return None
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    info[key] = int(parts[0]) * 1024
    except OSError:
        return None
    if "MemAvailable" not in info:
        return None
    free = info["MemAvailable"] + info.get("SwapFree", 0)
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free = min(free, max(limit - used, 0))
    return free


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _meta_bytes(cls: type[MultimodalModel], dims: Mapping[str, Any], hparams: Mapping[str, Any]) -> int | None:
    """Bytes of the model's parameters and buffers, from a build on the meta device (allocates nothing).

    None when the constructor cannot run on the meta device (it reads values, calls numpy, ...): the real
    build then goes ahead unchecked, and raises its own errors for bad hyper-parameters.
    """
    import warnings

    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), torch.device("meta"):
            warnings.simplefilter("ignore")  # the real build shows the constructor's warnings, once
            model = cls(dims, **hparams)
    except Exception:  # any failure is the real build's to report
        return None
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def check_fits(nbytes: int, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Refuse ``nbytes`` more than ``device`` has free, naming the estimate, the limit and ``fix``."""
    limit = available_memory(device)
    if limit is not None and nbytes > limit:
        where = "on the CPU (RAM + swap)" if torch.device(device).type == "cpu" else f"on {device}"
        raise DataError(f"{what} would take about {_gib(nbytes)}, more than the {_gib(limit)} of memory free "
                        f"{where}; {fix}")


def create(name: str, dims: Mapping[str, Iterable[int] | int], *, init_seed: int | None = None,
           **hparams: Any) -> MultimodalModel:
    """Build a registered model: ``create("bidnn", dims={"image": 128, "text": 10}, hidden=200)``.

    ``init_seed`` draws the initial weights from that seed without touching the global RNG, so the same
    seed gives the same weights whatever ran before (None: the global RNG, as plain torch does). The
    weights' size is estimated first (a build on the meta device) and a model that cannot fit in the free
    memory is refused before anything is allocated.
    """
    cls = model_class(name)
    check_hparams(cls, hparams)
    nbytes = _meta_bytes(cls, dims, hparams)
    if nbytes is not None:
        given = ", ".join(f"{k}={v!r}" for k, v in hparams.items() if isinstance(v, int | list | dict)
                          and not isinstance(v, bool))
        check_fits(nbytes, f"the weights of model {name!r}" + (f" ({given})" if given else ""),
                   "make it smaller with --set (API: smaller hyper-parameters), e.g. fewer hidden units")
    try:
        if init_seed is None:
            return cls(dims, **hparams)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed))
            return cls(dims, **hparams)
    except TypeError as exc:
        raise DataError(f"bad hyper-parameters for {name!r}: {exc}") from exc


def create_for_data(name: str, data: MultimodalDataset, *, init_seed: int | None = None,
                    **hparams: Any) -> MultimodalModel:
    """:func:`create` for ``data``: its dims, plus what the model reads off it (``n_classes`` of a supervised
    model) for every key the caller left out."""
    cls = model_class(name)
    if cls.supervised and data.labels is None:
        raise DataError(f"model {name!r} is supervised and needs class labels, but the data {data.name!r} has none; "
                        "give the data labels or use an unsupervised model")
    if cls.supervised and data.labels is not None:
        from commonspace.data.labels import check_class_ids

        check_class_ids(data.labels)  # before the model reads a class count off them: one outlier id is GBs
    filled = {k: v for k, v in cls.hparams_from_data(data).items() if k not in hparams}
    return create(name, data.dims, init_seed=init_seed, **filled, **hparams)
