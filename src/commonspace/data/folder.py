"""Dataset folders: one ``.npy`` file per array, memory-mapped on open, so data larger than memory trains.

Layout (see docs/data.md, "Dataset folders")::

    OUT/
      meta.json              format + version, name, samples, modality order, dims, dtypes, labels kind,
                             class names, split sizes, the dataset's meta, and sha256 + size of every file
      x_<modality>.npy       float16 or float32, (N, d) or (N, C, H, W)
      mask.npy               bool (N, M), columns in modality order
      labels.npy             optional: int64 (N,) class ids or bool (N, C) multi-label indicators
      split_<name>.npy       int64 row indices

:func:`write_folder` fills the feature files chunk by chunk (``numpy.lib.format.open_memmap``) inside a hidden
temporary sibling folder and renames it into place, so a reader never sees a half-written folder.
:func:`open_folder` maps the feature files (``numpy.load(mmap_mode="r")``) into a
:class:`~commonspace.data.dataset.MultimodalDataset` whose batches are gathered from the map; its checks (sizes,
checksums, finite values, mask consistency) read the files in chunks and never load a whole modality.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from commonspace.data.dataset import _NAME, DataError, LazyArray, MultimodalDataset, PageBudget, chunk_rows_for

__all__ = ["FORMAT", "VERSION", "is_folder", "open_folder", "write_folder"]

FORMAT = "commonspace-dataset-folder"
VERSION = 1
DTYPES = ("float16", "float32")
_F16_MAX = float(np.finfo(np.float16).max)  # 65504
_HASH_BLOCK = 8 << 20


def is_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a ``meta.json`` (a dataset folder, possibly damaged)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "meta.json").is_file()


# ------------------------------------------------------------------ writing
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_entry(path: Path, digest: str | None = None) -> dict[str, Any]:
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
        digest = h.hexdigest()
    return {"sha256": digest, "bytes": path.stat().st_size}


def _save_small(path: Path, arr: np.ndarray) -> dict[str, Any]:
    np.save(path, arr, allow_pickle=False)
    _fsync(path)
    return _file_entry(path)


def _rows(held: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a modality as float32 numpy, read from disk for a lazy one."""
    if isinstance(held, LazyArray):
        return held.take(np.arange(start, stop)).numpy()
    return held[start:stop].numpy()


def _write_features(path: Path, m: str, held: Any, dtype: str, step: int) -> dict[str, Any]:
    """One modality into ``path`` chunk by chunk; returns its meta.json entry (hashed as it is written)."""
    shape = tuple(int(d) for d in held.shape)
    from commonspace.data.io import reserve

    mm = open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    reserve(path)  # a full disk is ENOSPC now, not SIGBUS while the map is filled
    h = hashlib.sha256()
    with open(path, "rb") as fh:  # the header open_memmap wrote, which the checksum covers too
        h.update(fh.read(mm.offset))
    n = shape[0]
    pages = PageBudget(mm)  # written pages leave the resident set as they go (flushed first)
    for s in range(0, n, step):
        e = min(n, s + step)
        chunk = _rows(held, s, e)
        if dtype == "float16":
            over = np.abs(chunk.reshape(e - s, -1)) > _F16_MAX
            if over.any():
                rows = (s + np.flatnonzero(over.any(1))).tolist()[:5]
                peak = float(np.abs(chunk).max())
                raise DataError(f"modality {m!r} has values up to {peak:.6g} (first rows {rows}), beyond float16's "
                                f"range ({_F16_MAX:g}); write the folder with dtype='float32' (convert --dtype "
                                "float32) or rescale the features")
        out = np.ascontiguousarray(chunk, dtype=mm.dtype)
        mm[s:e] = out
        h.update(out)
        pages.add(out.nbytes)
    mm.flush()
    del mm
    _fsync(path)
    entry = _file_entry(path, h.hexdigest())
    entry["dtype"] = dtype
    return entry


def _check_target(out: Path, overwrite: bool) -> bool:
    """Refuse what must not be replaced; True when ``out`` exists and is not empty (to be replaced)."""
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {out.parent} does not exist; create it first")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; give a folder path to write the dataset folder into")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise DataError(f"{out}: exists and is not empty; pass overwrite=True (convert --overwrite) to replace "
                        "it, or choose a new folder")
    if not is_folder(out):
        # a user's folder that is not ours is never deleted, even with overwrite
        raise DataError(f"{out}: is not a dataset folder (no meta.json); refusing to replace it, choose another "
                        "folder")
    return True


def _source(data_or_source: MultimodalDataset | str | os.PathLike, modalities: list[str] | None,
            root: Path | None) -> MultimodalDataset:
    if isinstance(data_or_source, MultimodalDataset):
        return data_or_source.select(modalities) if modalities else data_or_source
    from commonspace.data.resolve import resolve_data

    return resolve_data(str(data_or_source), modalities, root=root)


def write_folder(data_or_source: MultimodalDataset | str | os.PathLike, out_dir: str | os.PathLike, *,
                 dtype: str = "float16", chunk_rows: int | None = None, overwrite: bool = False,
                 modalities: list[str] | None = None, root: Path | None = None) -> Path:
    """Write a dataset (or any ``--data`` source: builtin name, .npz, .toml, .h5, folder) as a dataset folder.

    Features go to disk ``chunk_rows`` rows at a time (default: about 16 MiB of float32 per chunk) as ``dtype``
    (``float16`` halves the size and rounds to about 3 significant digits; values beyond +-65504 are refused;
    ``float32`` keeps the values exactly). The folder is written into a hidden temporary sibling and renamed into
    place; on any error nothing is left behind and an existing ``out_dir`` is untouched. A non-empty
    ``out_dir`` is refused unless ``overwrite`` (and even then only when it is a dataset folder).
    """
    if dtype not in DTYPES:
        raise DataError(f"dtype {dtype!r} is not supported; use one of {list(DTYPES)}")
    from commonspace.data.io import raise_if_disk_error, resolve_link, sweep_replaced

    out = Path(out_dir).expanduser()
    if out.name in ("", ".", ".."):
        out = out.resolve()
    out = resolve_link(out)  # a symlinked folder: its target is replaced and the link stays valid
    sweep_replaced(out)  # first: it may put back the folder a killed --overwrite hid
    replace_existing = _check_target(out, overwrite)
    data = _source(data_or_source, modalities, root)
    for s in data.splits:
        if not _NAME.match(s):
            raise DataError(f"split name {s!r} cannot be a file name; rename it (letters, digits, '_' or '-')")
    store = data._store()
    width = max(math.prod(x.shape[1:]) for x in store.values())
    step = chunk_rows_for(width, chunk_rows)
    itemsize = np.dtype(dtype).itemsize
    needed = sum(math.prod(x.shape) * itemsize for x in store.values()) + data.n * (len(store) + 8) + (1 << 16)

    tmp: Path | None = None
    try:
        tmp = _staging_dir(out)
        files: dict[str, dict[str, Any]] = {}
        for m, held in store.items():
            files[f"x_{m}.npy"] = _write_features(tmp / f"x_{m}.npy", m, held, dtype, step)
        files["mask.npy"] = _save_small(tmp / "mask.npy", data.mask.numpy().astype(bool))
        labels = None
        if data.labels is not None:
            y = data.labels.numpy()
            labels = "multi" if y.ndim == 2 else "single"
            files["labels.npy"] = _save_small(tmp / "labels.npy", y.astype(bool if y.ndim == 2 else np.int64))
        for s, idx in data.splits.items():
            files[f"split_{s}.npy"] = _save_small(tmp / f"split_{s}.npy", idx.numpy().astype(np.int64))
        meta = {
            "format": FORMAT, "version": VERSION, "name": data.name, "samples": data.n,
            "modalities": list(data.modalities), "dims": {m: list(d) for m, d in data.dims.items()},
            "dtypes": dict.fromkeys(data.modalities, dtype), "labels": labels,
            "class_names": None if data.class_names is None else [str(c) for c in data.class_names],
            "splits": {s: int(i.numel()) for s, i in data.splits.items()},
            "meta": json.loads(json.dumps(data.meta, default=str)),
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # last: a folder with it is complete
        _fsync(tmp / "meta.json")
        _publish(tmp, out, replace_existing)
        tmp = None
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # first, so the free space the message shows is real
            tmp = None
        raise_if_disk_error(exc, out, needed, option="OUT folder")
        raise DataError(f"{out}: cannot write the dataset folder ({exc}); nothing was written") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _staging_dir(out: Path, suffix: str = ".tmp") -> Path:
    """A new hidden sibling folder of ``out``, named so that :func:`~commonspace.data.io.sweep_replaced` removes it
    if its writer dies."""
    from commonspace.data.io import _host_tag, _make_temp_dir

    return _make_temp_dir(out.parent, f".{out.name}.{os.getpid()}-{_host_tag()}.", suffix)


def _publish(tmp: Path, out: Path, replace_existing: bool) -> None:
    """Make the complete staged folder ``tmp`` the folder ``out``: permissions by the umask, synced, renamed."""
    from commonspace.data.io import _umask

    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
    _fsync(tmp)
    _move_into_place(tmp, out, replace_existing)
    _fsync(out.parent)


def _move_into_place(tmp: Path, out: Path, replace_existing: bool) -> None:
    from commonspace.data.io import replace_dir

    if not replace_existing:
        os.replace(tmp, out)  # over a missing or empty folder: atomic
        return
    # one atomic swap where the kernel can; else the old folder steps aside under a unique hidden name, which
    # readers and sweeps put back if we are killed before the new one is in place
    replace_dir(tmp, out, lambda: _staging_dir(out, ".old"))


# ------------------------------------------------------------------ reading
def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}; the dataset folder is damaged: re-create it with `commonspace convert` or "
                     "restore it from a copy")


def _read_meta(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise DataError(f"{folder}: folder not found; check the path (relative paths resolve against {Path.cwd()})")
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder; give a dataset folder written by `commonspace convert`")
    p = folder / "meta.json"
    if not p.is_file():
        raise DataError(f"{folder}: has no meta.json, so it is not a dataset folder (or an incomplete one); write "
                        "one with `commonspace convert IN OUT/`")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(p, f"is not valid JSON ({exc})") from exc
    from commonspace.data.meta import check_dataset_folder

    # every key used below (types, counts, nested records) is checked there, so a hand-edit is one clear line
    return check_dataset_folder(meta, p, format=FORMAT, version=VERSION)


def _entry(folder: Path, meta: dict[str, Any], name: str) -> tuple[Path, dict[str, Any]]:
    """A file of the folder and its meta.json record, after checking it exists with the recorded size."""
    p = folder / name
    rec = meta["files"].get(name)
    if rec is None:
        raise _damaged(folder / "meta.json", f"records no checksum for {name}")
    if not p.is_file():
        raise DataError(f"{p}: file missing; the dataset folder is incomplete: re-create it with "
                        "`commonspace convert` or restore the file")
    return p, rec


def _check_size(p: Path, rec: dict[str, Any]) -> None:
    size = p.stat().st_size
    if size != rec.get("bytes"):
        what = "truncated" if size < rec["bytes"] else "longer than written"
        raise _damaged(p, f"has {size} bytes but meta.json records {rec.get('bytes')} ({what})")


def _load_small(folder: Path, meta: dict[str, Any], name: str) -> np.ndarray:
    """A small array (mask, labels, split), read whole after checking size and checksum (cheap: always)."""
    import io

    p, rec = _entry(folder, meta, name)
    _check_size(p, rec)
    raw = p.read_bytes()
    if hashlib.sha256(raw).hexdigest() != rec.get("sha256"):
        raise _damaged(p, "its sha256 checksum does not match meta.json")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(p, f"is not a readable .npy file ({exc})") from exc


def _map_features(folder: Path, meta: dict[str, Any], m: str, chunk_rows: int | None) -> LazyArray:
    """Map ``x_<m>.npy`` (nothing read yet) after checking its header against meta.json."""
    p, rec = _entry(folder, meta, f"x_{m}.npy")
    try:
        mm = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(p, f"cannot be mapped ({exc}): truncated or not a .npy file (it has {p.stat().st_size} "
                       f"bytes, meta.json records {rec.get('bytes')})") from exc
    want = str(meta["dtypes"].get(m))
    if str(mm.dtype) != want or want not in DTYPES:
        raise DataError(f"{p}: holds {mm.dtype} but meta.json records {want!r} (a folder stores "
                        f"{' or '.join(DTYPES)}); re-create the folder with `commonspace convert`")
    shape = (int(meta["samples"]), *(int(d) for d in meta["dims"].get(m, [])))
    if tuple(mm.shape) != shape:
        raise DataError(f"{p}: has shape {tuple(mm.shape)} but meta.json records {shape}; the folder's files do "
                        "not belong together: re-create it with `commonspace convert`")
    _check_size(p, rec)
    return LazyArray(mm, label=str(p), chunk_rows=chunk_rows)


def _verify_features(p: Path, rec: dict[str, Any], arr: LazyArray, m: str) -> None:
    """One chunked pass: the sha256 of the file and the value scan (a checksum error wins over bad values)."""
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        h.update(fh.read(arr.source.offset))
    update: Callable[[np.ndarray], None] = h.update
    bad: DataError | None = None
    try:
        arr.scan(m, on_chunk=update)
    except DataError as exc:
        bad = exc
    if h.hexdigest() != rec.get("sha256"):
        raise _damaged(p, "its sha256 checksum does not match meta.json")
    if bad is not None:
        raise DataError(f"{p}: {bad}") from None


def open_folder(path: str | os.PathLike, *, verify: bool = True, chunk_rows: int | None = None) -> MultimodalDataset:
    """Open a dataset folder lazily: features stay memory-mapped and are read per batch.

    Checks, before anything is used: meta.json, that every file exists with its recorded size, dtype and shape,
    and the small files (mask, labels, splits) whole. With ``verify`` (the default) each feature file is also
    read once in chunks of ``chunk_rows`` rows (default about 16 MiB) to check its sha256 (damage), its values
    (finite) and the mask (missing rows zero); ``verify=False`` skips that pass and trusts the writer.
    """
    from commonspace.data.io import recover_replaced

    folder = Path(path).expanduser()
    recover_replaced(folder)  # a writer killed mid-replacement hid the folder as .old: put it back
    meta = _read_meta(folder)
    order = [str(m) for m in meta["modalities"]]
    if not order:
        raise _damaged(folder / "meta.json", "lists no modalities")
    feats: dict[str, LazyArray] = {}
    for m in order:
        if not _NAME.match(m):
            raise _damaged(folder / "meta.json", f"lists modality {m!r}, which is not a valid name")
        arr = _map_features(folder, meta, m, chunk_rows)
        if verify:
            _verify_features(folder / f"x_{m}.npy", meta["files"][f"x_{m}.npy"], arr, m)
        else:
            arr.trust()
        feats[m] = arr
    mask = _load_small(folder, meta, "mask.npy")
    if mask.dtype != np.bool_:
        raise DataError(f"{folder / 'mask.npy'}: holds {mask.dtype}; a folder's mask is bool (N, M): re-create the "
                        "folder with `commonspace convert`")
    labels = None
    if "labels.npy" in meta["files"] or (folder / "labels.npy").exists():
        labels = _load_small(folder, meta, "labels.npy")
        if labels.dtype.kind not in "iub":
            raise DataError(f"{folder / 'labels.npy'}: holds {labels.dtype}; labels are int64 (N,) class ids or "
                            "bool (N, C) indicators: re-create the folder with `commonspace convert`")
    splits: dict[str, np.ndarray] = {}
    files = [f"split_{s}.npy" for s in meta.get("splits") or {}]  # the written order
    files += sorted(f for f in meta["files"] if f.startswith("split_") and f.endswith(".npy") and f not in files)
    for name in files:
        if name.startswith("split_") and name.endswith(".npy"):
            idx = _load_small(folder, meta, name)
            if idx.dtype.kind not in "iu":
                raise DataError(f"{folder / name}: holds {idx.dtype}; split files hold int64 row indices: "
                                "re-create the folder with `commonspace convert`")
            splits[name[len("split_"):-len(".npy")]] = idx
    info = dict(meta.get("meta") or {})
    info["folder"] = str(folder)
    try:
        return MultimodalDataset(feats, mask, labels, splits, str(meta.get("name") or folder.name),
                                 meta.get("class_names"), info)
    except DataError as exc:
        raise DataError(f"{folder}: {exc}") from exc


def folder_summary(data: MultimodalDataset) -> str:
    """One line for the CLI: rows, modalities with shapes, splits."""
    mods = ", ".join(f"{m} {tuple(d)}" for m, d in data.dims.items())
    sp = ", ".join(f"{s} {int(i.numel())}" for s, i in data.splits.items()) or "no splits"
    return f"{data.n} rows; {mods}; {sp}"
