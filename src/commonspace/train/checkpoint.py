"""Checkpoints as safetensors + JSON only: loading never unpickles.

Two layouts:

* a **model directory** (:func:`save_model` / :func:`load_model`): ``config.json`` (registry name and
  constructor config) + ``model.safetensors`` (+ ``standardizer.safetensors``);
* a **training checkpoint** (``out_dir/checkpoint``, written by the trainer): the model directory files plus
  optimizer state, trainer state, RNG states and the best weights so far.

Every directory is written into a temporary sibling and renamed into place, so a kill at any moment leaves
the previous complete directory (as ``name`` or, between the two renames, as ``name.old``).

Every weight file's SHA-256 is recorded in the JSON written after it (``config.json``; for a training checkpoint
``trainer.json``, which covers every other file) and verified before anything is parsed, so a damaged file is
an error naming it, never silently different weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from commonspace.data.dataset import DataError, Standardizer
from commonspace.data.io import STALE_TMP_SECONDS, _host_tag, _make_temp_dir, _pid_alive, _umask
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
#: 2 adds SHA-256 checksums of the weight files; version 1 directories (no checksums) still load
FORMAT_VERSION = 2
CHECKSUMS = "checksums"
#: what to do about a damaged model directory, and about a damaged training checkpoint met on resume
FIX_MODEL = "restore the directory from a backup or retrain the model"
FIX_RESUME = "use a new --out or --no-resume (API: a new out_dir or fit(..., resume=False)) to start over"


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


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksums(directory: Path, names: list[str]) -> dict[str, str]:
    # hashed from the files as written (after fsync), so what is verified later is what reached the disk
    return {n: _sha256(directory / n) for n in names}


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small UTF-8 text file atomically, through :func:`commonspace.data.io.atomic_write`."""
    from commonspace.data.io import atomic_write  # one writer: temp naming, stale sweep, umask, cleanup

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _umask_mode(mode: int) -> int:
    # mkdtemp/mkstemp create private (0700/0600) entries; published checkpoints should follow the umask
    return mode & ~_umask()


def _old(target: Path) -> Path:
    return target.with_name(target.name + ".old")


def _is_stale(tmp: Path, name: str, now: float) -> bool:
    """A temporary sibling of ``name`` left by a writer that is gone (never one that may still be writing)."""
    m = re.fullmatch(rf"\.{re.escape(name)}\.tmp-(\d+)-([0-9a-f]{{8}})-.+", tmp.name)
    if m is not None and m.group(2) == _host_tag():
        pid = int(m.group(1))
        return pid != os.getpid() and not _pid_alive(pid)
    try:  # a legacy name without pid, or another host's writer: only age tells
        return now - tmp.lstat().st_mtime > STALE_TMP_SECONDS
    except OSError:
        return False


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``target`` as a whole.

    At every instant either ``target`` or ``target.old`` is a complete directory (see :func:`find_checkpoint`),
    so a killed writer never leaves a half-written one behind. The temporary name carries the writer's pid and
    host, so leftovers of killed writers are swept while another live writer's folder is left alone.
    """
    from commonspace.data.io import exchange, raise_if_disk_error

    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            if _is_stale(stale, target.name, now):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = _make_temp_dir(target.parent, f".{target.name}.tmp-{os.getpid()}-{_host_tag()}-")
        os.chmod(tmp, _umask_mode(0o777))
        yield tmp
        _fsync_path(tmp)
        old = _old(target)
        if target.is_dir() and exchange(tmp, target):
            pass  # swapped in one step; the previous directory, now under the temp name, goes below
        else:
            if target.exists():
                # target is complete, so an older copy is redundant; keep target reachable as .old meanwhile
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
            # if target was missing, .old (if any) is the last complete copy until the next line succeeds
            os.replace(tmp, target)
        _fsync_path(target.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        # a full or read-only disk (an OSError, or safetensors' SafetensorError) is one line, not a traceback
        disk = isinstance(exc, OSError | SafetensorError)
        written = 0  # what the message says the write needed at least: only walked for a disk error
        if tmp is not None:
            if disk and tmp.is_dir():
                written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            shutil.rmtree(tmp, ignore_errors=True)
        if disk:
            raise_if_disk_error(exc, target, written or None, at_least=True)
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
                       meta: Mapping[str, Any] | None) -> dict[str, str]:
    """Write the model directory files; returns the checksums recorded in ``config.json``."""
    header = _model_header(model, meta)
    header["standardizer"] = None if standardizer is None else {"eps": standardizer.eps}
    weights, _ = state_for_saving(model)  # tied names are recomputed from the model on load
    _write_tensors(directory / "model.safetensors", weights, {"format": "pt"})
    names = ["model.safetensors"]
    if standardizer is not None:
        _write_tensors(directory / "standardizer.safetensors", standardizer.state_dict())
        names.append("standardizer.safetensors")
    header[CHECKSUMS] = _checksums(directory, names)
    _write_json(directory / "config.json", header)
    return dict(header[CHECKSUMS])


def save_model(directory: str | Path, model: MultimodalModel, standardizer: Standardizer | None = None,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``standardizer.safetensors``) atomically."""
    if not isinstance(model, MultimodalModel):
        raise CheckpointError(f"save_model needs a MultimodalModel, got {type(model).__name__}")
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        _write_model_files(tmp, model, standardizer, meta)
    return directory


# --------------------------------------------------------------------------- verified reading
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a plain name inside the directory, never a path
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_json(path: Path, fix: str) -> Any:
    """Parse one JSON file of a checkpoint; unreadable or invalid JSON is a CheckpointError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is damaged (not valid JSON: {_one_line(exc)}); {fix}") from exc


@contextmanager
def _safetensors_errors(path: Path, fix: str) -> Iterator[None]:
    """Turn safetensors' errors on a damaged or truncated file into a CheckpointError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the checkpoint is incomplete; {fix}")
    try:
        yield
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or truncated (not a readable safetensors file: "
                              f"{_one_line(exc)}); {fix}") from exc


def _load_tensors(path: Path, fix: str = FIX_MODEL) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, on the CPU (see :func:`_safetensors_errors`)."""
    with _safetensors_errors(path, fix):
        return load_file(str(path))


def _read_checksums(obj: Mapping[str, Any], recorded_in: Path, fix: str) -> dict[str, str] | None:
    """The ``checksums`` entry of a JSON object (None when absent, as in files of format version 1)."""
    sums = obj.get(CHECKSUMS)
    if sums is None:
        return None
    if not isinstance(sums, dict) or not all(
            isinstance(k, str) and _FILE_NAME.fullmatch(k) and isinstance(v, str) and _SHA256_HEX.fullmatch(v)
            for k, v in sums.items()):
        raise CheckpointError(f"{recorded_in} is damaged: its {CHECKSUMS!r} entry is not a mapping of file name "
                              f"-> SHA-256 hex digest; {fix}")
    return sums


def _verify(directory: Path, sums: Mapping[str, str], recorded_in: Path, fix: str,
            done: set[str] | None = None) -> None:
    """Check every file listed in ``sums`` against its SHA-256; ``done`` collects (and skips) verified names."""
    for name, want in sums.items():
        if done is not None and name in done:
            continue
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing although {recorded_in.name} records its checksum; the "
                                  f"checkpoint is incomplete; {fix}")
        if _sha256(path) != want:
            raise CheckpointError(f"{path} is damaged: its SHA-256 checksum does not match the one recorded in "
                                  f"{recorded_in.name}; {fix}")
        if done is not None:
            done.add(name)


def _is_shape(d: Any) -> bool:
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    return whole(d) or (isinstance(d, list) and len(d) > 0 and all(whole(v) for v in d))


def _read_header(directory: Path, fix: str = FIX_MODEL) -> dict[str, Any]:
    """``config.json``, checked: format, version, and the types of every entry a load relies on."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"no config.json in {directory}; expected a directory written by save_model "
                                "(config.json + model.safetensors)")
    header = _read_json(cfg, fix)
    if not isinstance(header, dict) or "model" not in header or "config" not in header:
        raise CheckpointError(f"{cfg} lacks the 'model' and 'config' entries; it was not written by save_model")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{cfg} has format {header.get('format')!r}, not {FORMAT!r}; it was not written by "
                              "save_model")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg} is damaged: format_version is {version!r}, expected a whole number from 1 to "
                              f"{FORMAT_VERSION}; {fix}")
    if version > FORMAT_VERSION:
        by = header.get("commonspace_version")
        by = f" (by commonspace {by})" if isinstance(by, str) else ""
        raise CheckpointError(f"{cfg} is in checkpoint format {version}{by}, newer than the formats up to "
                              f"{FORMAT_VERSION} that this commonspace {_version()} reads; upgrade commonspace to "
                              "load it")

    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{cfg} is damaged: {what}; {fix}")

    if not isinstance(header["model"], str) or not header["model"]:
        raise damaged(f"'model' must be a registry name (a string), got {header['model']!r}")
    config = header["config"]
    if not isinstance(config, dict):
        raise damaged(f"'config' must be a JSON object, got {type(config).__name__}")
    dims = config.get("dims")
    if "dims" in config and not (isinstance(dims, dict) and dims
                                 and all(isinstance(m, str) and _is_shape(d) for m, d in dims.items())):
        raise damaged(f"config 'dims' must map each modality to its feature shape (a list of whole numbers), "
                      f"got {json.dumps(dims)[:60]}")
    if not isinstance(header.get("meta"), dict | None):
        raise damaged(f"'meta' must be a JSON object, got {type(header['meta']).__name__}")
    std = header.get("standardizer")
    if std is not None and not (isinstance(std, dict) and isinstance(std.get("eps", 1e-8), int | float)
                                and not isinstance(std.get("eps"), bool)):
        raise damaged("'standardizer' must be null or an object with a numeric 'eps'")
    sums = _read_checksums(header, cfg, fix)
    if version >= 2:  # from version 2 on, every weight file has a checksum: a missing one is damage
        needed = ["model.safetensors"] + (["standardizer.safetensors"] if std is not None else [])
        lacking = [n for n in needed if n not in (sums or {})]
        if lacking:
            raise damaged(f"it records no checksum for {', '.join(lacking)}")
    return header


def _verify_model_files(directory: Path, header: Mapping[str, Any], fix: str, done: set[str] | None = None) -> None:
    sums = _read_checksums(header, directory / "config.json", fix)
    if sums is not None:
        _verify(directory, sums, directory / "config.json", fix, done)


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


def _load_standardizer(path: Path, eps: float, fix: str) -> Standardizer:
    state = _load_tensors(path, fix)
    mods = {k.rsplit(".", 1)[0] for k in state}
    if set(state) != {f"{m}.{kind}" for m in mods for kind in ("mean", "std")}:
        raise CheckpointError(f"{path} does not hold '<modality>.mean' / '<modality>.std' pairs (found "
                              f"{sorted(state)[:6]}); {fix}")
    return Standardizer(eps=eps).load_state_dict(state)


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model saved with :func:`save_model` (or a trainer ``out_dir``) and load its weights strictly.

    Every file with a checksum in ``config.json`` is verified before it is read.
    """
    directory = _resolve_model_dir(Path(directory))
    header = _read_header(directory)
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {directory}; the checkpoint is incomplete")
    spath = directory / "standardizer.safetensors"
    if header.get("standardizer") is not None and not spath.is_file():
        raise FileNotFoundError(f"config.json in {directory} records a standardizer but "
                                "standardizer.safetensors is missing")
    _verify_model_files(directory, header, FIX_MODEL)
    model = _build(header, directory)
    apply_state(model, _load_tensors(weights_path), source=f"checkpoint {weights_path}")
    model.to(map_location)
    standardizer = None
    if header.get("standardizer") is not None:
        standardizer = _load_standardizer(spath, float(header["standardizer"].get("eps", 1e-8)), FIX_MODEL)
    return LoadedModel(model, standardizer, dict(header.get("meta") or {}))


def load_weights(model: MultimodalModel, directory: str | Path) -> MultimodalModel:
    """Load a saved model's weights (checksums verified) into an existing model of the same name and dims."""
    directory = _resolve_model_dir(Path(directory))
    header = _read_header(directory)
    check_compatible(header["model"], header["config"], model)
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {directory}; the checkpoint is incomplete")
    _verify_model_files(directory, header, FIX_MODEL)
    # read on the CPU; load_state_dict copies into the model's own device
    apply_state(model, _load_tensors(weights_path), source=f"checkpoint {directory}")
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


#: the key of optimizer.json that holds one state per substep (a single flattened state is a "__dict__" object)
NAMED_OPTIMIZERS = "optimizers"


def _flatten_optimizers(optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
                        tensors: dict[str, Tensor]) -> Any:
    """optimizer.json's content: one flattened state, or ``{"optimizers": [[name, state], ...]}`` for several.

    One optimizer (or a mapping of one) keeps the single-state layout, so a run without substeps writes the
    same files as before per-substep optimizers existed; its tensors are ``opt.*``, those of the i-th of several
    ``opt.<i>.*`` (by position, so a name can never clash with a state key).
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return flatten_state(optimizer.state_dict(), tensors, "opt")
    opts = dict(optimizer)
    if not opts:
        raise CheckpointError("save_training_checkpoint got an empty mapping of optimizers; pass optimizer=None "
                              "to store no optimizer state")
    if any(not isinstance(name, str) for name in opts):
        raise CheckpointError(f"optimizer names must be strings (substep names), got {list(opts)!r}")
    if len(opts) == 1:
        return flatten_state(next(iter(opts.values())).state_dict(), tensors, "opt")
    return {NAMED_OPTIMIZERS: [[name, flatten_state(opt.state_dict(), tensors, f"opt.{i}")]
                               for i, (name, opt) in enumerate(opts.items())]}


def _unflatten_optimizers(flat: Any, tensors: Mapping[str, Tensor], jpath: Path, tpath: Path,
                          fix: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]] | None]:
    """(first or only state, states by substep name or None for a single unnamed state) of optimizer.json."""
    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"{jpath} is damaged: {why}; {fix}")

    named = isinstance(flat, dict) and NAMED_OPTIMIZERS in flat
    if named:
        entries = flat[NAMED_OPTIMIZERS]
        if not (isinstance(entries, list) and entries
                and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entries)
                and len({e[0] for e in entries}) == len(entries)):
            raise damaged(f"{NAMED_OPTIMIZERS!r} must be a non-empty list of [substep name, state] pairs with "
                          "distinct names")
        parts = [(name, part) for name, part in entries]
    else:
        parts = [(None, flat)]
    states: dict[str | None, dict[str, Any]] = {}
    for name, part in parts:
        try:
            st = unflatten_state(part, tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{jpath} is damaged (it does not match {tpath.name}: "
                                  f"{type(exc).__name__} {_one_line(exc)}); {fix}") from exc
        if not isinstance(st, dict):
            raise damaged("expected an optimizer state object" + ("" if name is None else f" for {name!r}"))
        states[name] = st
    first = next(iter(states.values()))
    return first, ({str(k): v for k, v in states.items()} if named else None)


# ---------------------------------------------------------------------- training checkpoints
@dataclass
class TrainingCheckpoint:
    """A training checkpoint as read back from disk.

    ``optimizer`` is the single optimizer state, or the first of several; ``optimizers`` holds the states by
    substep name when the checkpoint has one per substep (None for a single unnamed state).
    """

    path: Path
    header: dict[str, Any]
    weights: dict[str, Tensor]
    state: dict[str, Any]
    optimizer: dict[str, Any] | None
    best: dict[str, Tensor] | None
    rng: tuple[dict[str, Tensor], dict[str, Any]]
    optimizers: dict[str, dict[str, Any]] | None = None


def save_training_checkpoint(directory: str | Path, *, model: MultimodalModel, state: Mapping[str, Any],
                             optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer] | None = None,
                             best: Mapping[str, Tensor] | None = None,
                             rng: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
                             meta: Mapping[str, Any] | None = None) -> Path:
    """Write a complete training checkpoint atomically (see module docstring for the files).

    ``trainer.json`` holds ``state`` plus the SHA-256 of every other file of the directory. ``optimizer`` is one
    optimizer or a mapping substep name -> optimizer (several are stored by name in the same two files).
    """
    directory = Path(directory)
    trainer_state = _json_checked(dict(state), "trainer state")
    if CHECKSUMS in trainer_state:
        raise CheckpointError(f"the trainer state may not use the key {CHECKSUMS!r}: trainer.json keeps the "
                              "checksums there")
    with atomic_dir(directory) as tmp:
        sums = _write_model_files(tmp, model, None, meta)
        written = ["config.json"]
        if optimizer is not None:
            tensors: dict[str, Tensor] = {}
            flat = _flatten_optimizers(optimizer, tensors)
            _write_tensors(tmp / "optimizer.safetensors", tensors)
            _write_json(tmp / "optimizer.json", flat)
            written += ["optimizer.safetensors", "optimizer.json"]
        if best is not None:
            _write_tensors(tmp / "best.safetensors", dict(best))
            written.append("best.safetensors")
        if rng is not None:
            _write_tensors(tmp / "rng.safetensors", rng[0])
            _write_json(tmp / "rng.json", rng[1])
            written += ["rng.safetensors", "rng.json"]
        trainer_state[CHECKSUMS] = {**sums, **_checksums(tmp, written)}
        # written last: its presence in a directory means every other file is there
        _write_json(tmp / "trainer.json", trainer_state)
    return directory


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


#: entries of trainer.json that resuming relies on, with their checks
_TRAINER_ENTRIES: dict[str, tuple[Any, str]] = {
    "stage_index": (_whole, "a whole number"),
    "epoch": (_whole, "a whole number"),
    "global_step": (_whole, "a whole number"),
    "history": (lambda v: isinstance(v, list), "a list"),
}


def _check_trainer_state(state: Any, path: Path, fix: str) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is damaged: expected a JSON object, got {type(state).__name__}; {fix}")
    for key, (ok, what) in _TRAINER_ENTRIES.items():
        if key not in state or not ok(state[key]):
            raise CheckpointError(f"{path} is damaged: {key!r} must be {what}, got {state.get(key)!r}; {fix}")
    if not isinstance(state.get("run", {}), dict):
        raise CheckpointError(f"{path} is damaged: 'run' must be a JSON object; {fix}")


def _check_rng(tensors: Mapping[str, Tensor], meta: Any, tpath: Path, jpath: Path, fix: str) -> None:
    """The shapes :func:`commonspace.train.seed.set_rng_state` relies on."""
    if "torch" not in tensors or tensors["torch"].dim() != 1:
        raise CheckpointError(f"{tpath} is damaged: it lacks the torch RNG state; {fix}")
    numpy, python = (meta.get(k, {}) if isinstance(meta, dict) else None for k in ("numpy", "python"))
    fine = (isinstance(numpy, dict) and isinstance(python, dict)
            and (not numpy or (isinstance(numpy.get("kind"), str) and _whole(numpy.get("pos"))
                               and _whole(numpy.get("has_gauss"))
                               and isinstance(numpy.get("cached_gaussian"), int | float)))
            and (not python or (_whole(python.get("version"))
                                and isinstance(python.get("gauss_next"), int | float | None))))
    if not fine:
        raise CheckpointError(f"{jpath} is damaged: expected the numpy and python RNG states as JSON objects; "
                              f"{fix}")


def _pair(found: Path, json_name: str, tensors_name: str, fix: str) -> tuple[Path, Path] | None:
    """A JSON + safetensors pair: None when neither exists, an error when only one does."""
    j, t = found / json_name, found / tensors_name
    if not j.is_file() and not t.is_file():
        return None
    for p in (j, t):
        if not p.is_file():
            raise CheckpointError(f"{p} is missing; the checkpoint is incomplete; {fix}")
    return j, t


def read_training_checkpoint(directory: str | Path) -> TrainingCheckpoint | None:
    """Read ``directory`` (or its ``.old`` copy); None when no checkpoint exists.

    Every file is verified against the checksums in ``trainer.json`` (and ``config.json``) before it is parsed;
    a damaged or incomplete checkpoint is a :class:`CheckpointError` naming the file.
    """
    found = find_checkpoint(directory)
    if found is None:
        return None
    fix = FIX_RESUME
    tpath = found / "trainer.json"
    if not tpath.is_file():
        raise CheckpointError(f"{found} has no trainer.json, so it is not a training checkpoint; {fix}")
    state = _read_json(tpath, fix)
    _check_trainer_state(state, tpath, fix)
    sums = _read_checksums(state, tpath, fix)
    state = {k: v for k, v in state.items() if k != CHECKSUMS}
    done: set[str] = set()
    if sums is not None:
        _verify(found, sums, tpath, fix, done)
    if not (found / "config.json").is_file():
        raise CheckpointError(f"{found / 'config.json'} is missing; the checkpoint is incomplete; {fix}")
    header = _read_header(found, fix)
    if sums is None and header["format_version"] >= 2:
        raise CheckpointError(f"{tpath} is damaged: it records no checksums although config.json has format "
                              f"version {header['format_version']}; {fix}")
    _verify_model_files(found, header, fix, done)
    weights = _load_tensors(found / "model.safetensors", fix)
    optimizer, optimizers = None, None
    pair = _pair(found, "optimizer.json", "optimizer.safetensors", fix)
    if pair is not None:
        flat, tensors = _read_json(pair[0], fix), _load_tensors(pair[1], fix)
        optimizer, optimizers = _unflatten_optimizers(flat, tensors, pair[0], pair[1], fix)
    best_path = found / "best.safetensors"
    best = _load_tensors(best_path, fix) if best_path.is_file() else None
    rng: tuple[dict[str, Tensor], dict[str, Any]] = ({}, {})
    pair = _pair(found, "rng.json", "rng.safetensors", fix)
    if pair is not None:
        rng = (_load_tensors(pair[1], fix), _read_json(pair[0], fix))
        _check_rng(rng[0], rng[1], pair[1], pair[0], fix)
    return TrainingCheckpoint(found, header, weights, state, optimizer, best, rng, optimizers)


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a safetensors file without loading the data (a damaged file is a CheckpointError)."""
    path = Path(path)
    with _safetensors_errors(path, FIX_MODEL), safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
