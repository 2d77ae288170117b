"""Checkpoints as safetensors + JSON only: loading never unpickles.

Two layouts:

* a **model directory** (:func:`save_model` / :func:`load_model`): ``config.json`` (registry name and
  constructor config) + ``model.safetensors`` (+ ``standardizer.safetensors``);
* a **training checkpoint** (``out_dir/checkpoint``, written by the trainer): the model directory files plus
  optimizer state, trainer state, RNG states and the best weights so far.

Every directory is written into a temporary sibling and renamed into place, so a kill at any moment leaves
the previous complete directory (as ``name`` or, between the two renames, as ``name.old``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from commonspace.data.dataset import DataError, Standardizer
from commonspace.models.base import MultimodalModel, create

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "TrainingCheckpoint",
    "atomic_dir",
    "find_checkpoint",
    "load_model",
    "load_weights",
    "read_training_checkpoint",
    "save_model",
    "save_training_checkpoint",
]

FORMAT = "commonspace.model"
FORMAT_VERSION = 1


class CheckpointError(DataError):
    """A checkpoint that cannot be written, read or applied; the message says why and what to do.

    A :class:`DataError` (hence a ValueError): a checkpoint is user input like a data file.
    """


# ------------------------------------------------------------------ atomic files and directories
def _fsync_path(path: Path) -> None:
    # directories need O_RDONLY; some platforms (Windows) cannot fsync them, which we tolerate
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    os.chmod(path, _umask_mode(0o666))
    _fsync_path(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask_mode(mode: int) -> int:
    # mkdtemp/mkstemp create private (0700/0600) entries; published checkpoints should follow the umask
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _old(target: Path) -> Path:
    return target.with_name(target.name + ".old")


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``target`` as a whole.

    At every instant either ``target`` or ``target.old`` is a complete directory (see :func:`find_checkpoint`),
    so a killed writer never leaves a half-written one behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        yield tmp
        _fsync_path(tmp)
        old = _old(target)
        if target.exists():
            # target is complete, so an older copy is redundant; keep target reachable as .old meanwhile
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        # if target was missing, .old (if any) is the last complete copy until the next line succeeds
        os.replace(tmp, target)
        _fsync_path(target.parent)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_checkpoint(target: str | Path) -> Path | None:
    """The last complete copy of a directory written with :func:`atomic_dir`, or None."""
    target = Path(target)
    if target.is_dir():
        return target
    if _old(target).is_dir():
        return _old(target)
    return None


# --------------------------------------------------------------------------- state dicts
def _storage_key(t: Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _dedup(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop names that alias another entry exactly (tied weights); returns (kept, alias -> kept name).

    Tensors that merely overlap another's storage are cloned, since safetensors refuses shared memory.
    """
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    exact: dict[tuple, str] = {}
    by_storage: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            kept[name] = t
            continue
        key = _storage_key(t) + (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in exact:
            aliases[name] = exact[key]
            continue
        exact[key] = name
        kept[name] = t
        by_storage.setdefault(_storage_key(t), []).append(name)
    for names in by_storage.values():
        for name in names[1:]:
            kept[name] = kept[name].clone()
    return kept, aliases


def state_for_saving(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The module's state dict with tied entries stored once (detached CPU tensors)."""
    kept, aliases = _dedup(module.state_dict())
    return {k: v.detach().cpu() for k, v in kept.items()}, aliases


def apply_state(module: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` strictly, where each group of tied entries needs only one of its names present."""
    own = module.state_dict()
    _, own_aliases = _dedup(own)
    groups: dict[str, list[str]] = {}
    for name in own:
        groups.setdefault(own_aliases.get(name, name), []).append(name)
    full: dict[str, Tensor] = {}
    missing: list[str] = []
    for head, names in groups.items():
        present = [n for n in names if n in state]
        if not present:
            missing.append(head)
            continue
        for n in names:
            full[n] = state[present[0]]
    unexpected = sorted(set(state) - set(own))
    bad_shape = [
        f"{n!r} is {tuple(full[n].shape)} in the {source} but {tuple(own[n].shape)} in the model"
        for n in own if n in full and tuple(full[n].shape) != tuple(own[n].shape)
    ]
    problems = []
    if bad_shape:
        problems.append("shape mismatch: " + "; ".join(bad_shape[:5]))
    if missing:
        problems.append(f"missing tensors {missing[:8]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}")
    if problems:
        raise CheckpointError(
            f"the {source} does not fit this {type(module).__name__}: {'; '.join(problems)}. The weights were "
            "saved from a model with a different architecture or config; rebuild the model from the "
            "checkpoint's config.json (load_model) or retrain"
        )
    module.load_state_dict(full, strict=True)


def check_compatible(saved_name: str, saved_config: Mapping[str, Any], model: MultimodalModel,
                     fix: str = "build the model with the checkpoint's config (load_model)") -> None:
    """Clear errors when a saved model (name, config) cannot be loaded into ``model``."""
    if saved_name != model.name:
        raise CheckpointError(f"the checkpoint holds a {saved_name!r} model but this model is {model.name!r}; "
                              f"{fix}")
    saved_dims = {m: tuple(d) for m, d in dict(saved_config.get("dims", {})).items()}
    for m, d in saved_dims.items():
        if m not in model.dims:
            raise CheckpointError(f"checkpoint has modality {m!r} which this model lacks (model modalities: "
                                  f"{list(model.dims)}); {fix}")
        if tuple(model.dims[m]) != d:
            what = f"{d[0]} features" if len(d) == 1 else f"shape {d}"
            raise CheckpointError(f"checkpoint has modality {m!r} with {what} but the model expects "
                                  f"{model.dims[m] if len(model.dims[m]) > 1 else model.dims[m][0]}; {fix}")
    extra = [m for m in model.dims if m not in saved_dims]
    if extra:
        raise CheckpointError(f"the model has modalities {extra} that the checkpoint lacks; {fix}")


# ------------------------------------------------------------------------ model directories
@dataclass
class LoadedModel:
    """What :func:`load_model` returns."""

    model: MultimodalModel
    standardizer: Standardizer | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _version() -> str:
    from commonspace import __version__

    return __version__


def _json_checked(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what} must be JSON-serialisable (plain numbers, strings, lists, dicts): "
                              f"{exc}") from exc


def _model_header(model: MultimodalModel, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": _json_checked(model.config, f"the config of model {model.name!r}"),
        "meta": _json_checked(dict(meta or {}), "meta"),
        "commonspace_version": _version(),
    }


def _write_model_files(directory: Path, model: MultimodalModel, standardizer: Standardizer | None,
                       meta: Mapping[str, Any] | None) -> None:
    header = _model_header(model, meta)
    header["standardizer"] = None if standardizer is None else {"eps": standardizer.eps}
    weights, aliases = state_for_saving(model)
    _write_tensors(directory / "model.safetensors", weights, {"format": "pt", "aliases": json.dumps(aliases)})
    if standardizer is not None:
        _write_tensors(directory / "standardizer.safetensors", standardizer.state_dict())
    _write_json(directory / "config.json", header)


def save_model(directory: str | Path, model: MultimodalModel, standardizer: Standardizer | None = None,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``standardizer.safetensors``) atomically."""
    if not isinstance(model, MultimodalModel):
        raise CheckpointError(f"save_model needs a MultimodalModel, got {type(model).__name__}")
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        _write_model_files(tmp, model, standardizer, meta)
    return directory


def _read_header(directory: Path) -> dict[str, Any]:
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"no config.json in {directory}; expected a directory written by save_model "
                                "(config.json + model.safetensors)")
    try:
        header = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg} is not valid JSON ({exc}); the checkpoint is damaged") from exc
    if not isinstance(header, dict) or "model" not in header or "config" not in header:
        raise CheckpointError(f"{cfg} lacks the 'model' and 'config' entries; it was not written by save_model")
    return header


def _build(header: Mapping[str, Any], directory: Path) -> MultimodalModel:
    name = header["model"]
    try:
        return create(name, **header["config"])
    except DataError as exc:
        raise CheckpointError(f"cannot rebuild model {name!r} from {directory / 'config.json'}: {exc}. If it is "
                              "a custom model, import the module that registers it first") from exc


def _resolve_model_dir(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    for sub in ("model", "checkpoint"):  # a training out_dir: its final model, else its last checkpoint
        found = find_checkpoint(directory / sub)
        if found is not None and (found / "config.json").is_file():
            return found
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return directory


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model saved with :func:`save_model` (or a trainer ``out_dir``) and load its weights strictly."""
    directory = _resolve_model_dir(Path(directory))
    header = _read_header(directory)
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {directory}; the checkpoint is incomplete")
    model = _build(header, directory)
    apply_state(model, load_file(str(weights_path)), source=f"checkpoint {weights_path}")
    model.to(map_location)
    standardizer = None
    if header.get("standardizer") is not None:
        spath = directory / "standardizer.safetensors"
        if not spath.is_file():
            raise FileNotFoundError(f"config.json in {directory} records a standardizer but "
                                    "standardizer.safetensors is missing")
        standardizer = Standardizer(eps=float(header["standardizer"].get("eps", 1e-8)))
        standardizer.load_state_dict(load_file(str(spath)))
    return LoadedModel(model, standardizer, dict(header.get("meta") or {}))


def load_weights(model: MultimodalModel, directory: str | Path) -> MultimodalModel:
    """Load a saved model's weights into an existing model of the same name and dims."""
    directory = _resolve_model_dir(Path(directory))
    header = _read_header(directory)
    check_compatible(header["model"], header["config"], model)
    dev = next(iter(model.parameters()), torch.empty(0)).device
    apply_state(model, load_file(str(directory / "model.safetensors"), device=str(dev)),
                source=f"checkpoint {directory}")
    return model


# ------------------------------------------------------------------- optimizer state flattening
def flatten_state(obj: Any, tensors: dict[str, Tensor], prefix: str = "s") -> Any:
    """Nested dicts/lists/tuples with tensors -> JSON-able structure; tensors go into ``tensors``."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        # keys of optimizer state are ints: keep their type by storing pairs
        return {"__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix!r} without pickle")


def unflatten_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------- training checkpoints
@dataclass
class TrainingCheckpoint:
    """A training checkpoint as read back from disk."""

    path: Path
    header: dict[str, Any]
    weights: dict[str, Tensor]
    state: dict[str, Any]
    optimizer: dict[str, Any] | None
    best: dict[str, Tensor] | None
    rng: tuple[dict[str, Tensor], dict[str, Any]]


def save_training_checkpoint(directory: str | Path, *, model: MultimodalModel, state: Mapping[str, Any],
                             optimizer: torch.optim.Optimizer | None = None,
                             best: Mapping[str, Tensor] | None = None,
                             rng: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
                             meta: Mapping[str, Any] | None = None) -> Path:
    """Write a complete training checkpoint atomically (see module docstring for the files)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        _write_model_files(tmp, model, None, meta)
        if optimizer is not None:
            tensors: dict[str, Tensor] = {}
            flat = flatten_state(optimizer.state_dict(), tensors, "opt")
            _write_tensors(tmp / "optimizer.safetensors", tensors)
            _write_json(tmp / "optimizer.json", flat)
        if best is not None:
            _write_tensors(tmp / "best.safetensors", dict(best))
        if rng is not None:
            _write_tensors(tmp / "rng.safetensors", rng[0])
            _write_json(tmp / "rng.json", rng[1])
        # written last: its presence in a directory means every other file is there
        _write_json(tmp / "trainer.json", _json_checked(dict(state), "trainer state"))
    return directory


def read_training_checkpoint(directory: str | Path) -> TrainingCheckpoint | None:
    """Read ``directory`` (or its ``.old`` copy); None when no checkpoint exists."""
    found = find_checkpoint(directory)
    if found is None:
        return None
    if not (found / "trainer.json").is_file():
        raise CheckpointError(f"{found} has no trainer.json, so it is not a training checkpoint; use another "
                              "out_dir or resume=False")
    header = _read_header(found)
    state = json.loads((found / "trainer.json").read_text(encoding="utf-8"))
    weights = load_file(str(found / "model.safetensors"))
    optimizer = None
    if (found / "optimizer.json").is_file():
        flat = json.loads((found / "optimizer.json").read_text(encoding="utf-8"))
        optimizer = unflatten_state(flat, load_file(str(found / "optimizer.safetensors")))
    best = load_file(str(found / "best.safetensors")) if (found / "best.safetensors").is_file() else None
    rng: tuple[dict[str, Tensor], dict[str, Any]] = ({}, {})
    if (found / "rng.safetensors").is_file():
        rng = (load_file(str(found / "rng.safetensors")),
               json.loads((found / "rng.json").read_text(encoding="utf-8")))
    return TrainingCheckpoint(found, header, weights, state, optimizer, best, rng)


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a safetensors file without loading the data."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
