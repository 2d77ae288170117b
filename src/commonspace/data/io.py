"""Reading and writing data files: the ``.npz`` dataset schema, plain arrays and embeddings.

Dataset ``.npz`` schema (all keys but ``x_*`` optional; see docs/data.md):

- ``x_<modality>``: float (N, d) or (N, C, H, W) features, one array per modality
- ``modalities``: string array, the modality order (mask column order); defaults to the ``x_`` key order
- ``mask``: bool (N, M) presence, columns in ``modalities`` order; missing rows must be zero
- ``labels``: int (N,) class ids or 0/1 (N, C) multi-label indicators
- ``split_<name>``: int index arrays (``split_train``, ``split_val``, ``split_test``, ...)
- ``class_names``: string array; ``name``: 0-d string; ``meta``: 0-d JSON string
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from commonspace.data.dataset import DataError, MultimodalDataset

__all__ = [
    "atomic_write",
    "load_array",
    "load_csv",
    "load_embeddings",
    "load_mat",
    "load_npz",
    "save_embeddings",
    "save_npz",
]

_ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".csv", ".csv.gz", ".tsv", ".txt", ".h5", ".hdf5")


# ------------------------------------------------------------------ helpers
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(_ARRAY_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found; check the path (relative paths resolve against {Path.cwd()})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass the data file inside it")
    return p


def _missing_key(path: Path, key: str, available: list[str]) -> DataError:
    return DataError(f"{path}: no array named {key!r}; available keys: {available}. Pass one of them as key")


def _need_key(path: Path, available: list[str]) -> DataError:
    return DataError(f"{path}: holds several arrays {available}; pass key=... to choose one")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it over ``path``.

    ``os.replace`` within one directory is atomic, so readers see the old file or the complete new one,
    never a half-written file; on any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path).expanduser()
    if not path.parent.exists():
        raise DataError(f"{path}: folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------- dataset npz
def save_npz(dataset: MultimodalDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` in the documented ``.npz`` schema (compressed, atomic)."""
    path = Path(path).expanduser()
    if _suffix(path) != ".npz":
        raise DataError(f"{path}: save_npz writes .npz files; give the path a .npz suffix")
    arrays: dict[str, np.ndarray] = {f"x_{m}": _np(x) for m, x in dataset.features.items()}
    arrays["modalities"] = np.array(dataset.modalities, dtype=str)
    arrays["mask"] = _np(dataset.mask).astype(bool)
    if dataset.labels is not None:
        y = _np(dataset.labels)
        arrays["labels"] = y.astype(np.uint8) if y.ndim == 2 else y.astype(np.int64)
    for s, idx in dataset.splits.items():
        arrays[f"split_{s}"] = _np(idx).astype(np.int64)
    if dataset.class_names is not None:
        arrays["class_names"] = np.array(list(dataset.class_names), dtype=str)
    arrays["name"] = np.array(dataset.name, dtype=str)
    if dataset.meta:
        arrays["meta"] = np.array(json.dumps(dataset.meta, default=str), dtype=str)
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def load_npz(path: str | os.PathLike) -> MultimodalDataset:
    """Read a dataset written in the ``.npz`` schema (see module docstring); validates on load."""
    p = _existing(path)
    if _suffix(p) != ".npz":
        raise DataError(f"{p}: load_npz reads .npz files; use load_array or load_spec for other formats")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as exc:  # object arrays need pickle, which we never enable (untrusted files)
        raise DataError(f"{p}: contains object arrays ({exc}); save strings as numpy str arrays") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({exc})") from exc
    feats = {k[2:]: v for k, v in data.items() if k.startswith("x_")}
    if not feats:
        raise DataError(
            f"{p}: no feature arrays; name each modality's array x_<modality> (found keys {sorted(data)})"
        )
    if "modalities" in data:
        order = [str(m) for m in np.atleast_1d(data["modalities"])]
        if sorted(order) != sorted(feats):
            raise DataError(
                f"{p}: 'modalities' lists {order} but the x_ arrays are {sorted(feats)}; make them agree"
            )
        feats = {m: feats[m] for m in order}
    elif "mask" in data and len(feats) > 1:
        raise DataError(f"{p}: has a mask but no 'modalities' array giving its column order; add one")
    splits = {k[6:]: v for k, v in data.items() if k.startswith("split_")}
    class_names = [str(c) for c in data["class_names"]] if "class_names" in data else None
    name = str(data["name"]) if "name" in data else p.stem
    meta: dict = {}
    if "meta" in data:
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: 'meta' is not valid JSON ({exc})") from exc
    meta.setdefault("file", str(p))
    try:
        return MultimodalDataset(feats, data.get("mask"), data.get("labels"), splits, name, class_names, meta)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from exc


# ------------------------------------------------------------------- arrays
def _pick_key(p: Path, key: str | None, names: list[str]) -> str:
    """The requested variable, or the only one in the file; otherwise an error listing them."""
    if key is None:
        if len(names) != 1:
            raise _need_key(p, names)
        return names[0]
    if key not in names:
        raise _missing_key(p, key, names)
    return key


def load_mat(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """One variable of a MATLAB file, v4-v7 (scipy) or v7.3 (HDF5, transposed back to MATLAB's shape)."""
    p = _existing(path)
    import h5py

    if h5py.is_hdf5(p):
        with h5py.File(p, "r") as f:
            names = [k for k in f.keys() if not k.startswith("#")]  # '#refs#' holds cell-array internals
            key = _pick_key(p, key, names)
            obj = f[key]
            if not isinstance(obj, h5py.Dataset):
                raise DataError(f"{p}: {key!r} is a MATLAB struct or group; save it as a plain numeric array")
            arr = obj[()]
            if arr.dtype.kind == "O":
                raise DataError(f"{p}: {key!r} is a cell array; save it as a plain numeric array")
            # MATLAB stores column-major; HDF5 sees the reversed shape
            return np.ascontiguousarray(np.asarray(arr).T)
    import scipy.io

    try:
        mat = scipy.io.loadmat(p)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"{p}: not a readable MATLAB file ({exc})") from exc
    names = [k for k in mat if not k.startswith("__")]
    key = _pick_key(p, key, names)
    arr = np.asarray(mat[key])
    if arr.dtype.kind == "O":
        raise DataError(f"{p}: {key!r} is a cell array or struct; save it as a plain numeric array")
    return arr


def _header_row(first: str, delimiter: str | None) -> bool:
    for field in first.strip().split(delimiter):
        try:
            float(field)
        except ValueError:
            return True
    return False


def load_csv(
    path: str | os.PathLike,
    header: bool | None = None,
    label_column: int | str | None = None,
    delimiter: str | None = ",",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric delimited text as ``(X, y)``; ``y`` is the ``label_column`` (index or header name) or None.

    ``header=None`` detects a header row by whether the first row parses as numbers; pass ``True`` for a
    numeric header (e.g. column numbers). ``delimiter=None`` splits on whitespace. ``.gz`` is read directly.
    """
    p = _existing(path)
    import gzip

    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rt") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(f"{p}: the file is empty")
    if header is None:
        header = _header_row(first, delimiter)
    names = [c.strip().strip('"') for c in first.strip().split(delimiter)] if header else None
    try:
        a = np.loadtxt(p, delimiter=delimiter, skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DataError(
            f"{p}: not purely numeric text ({exc}); remove text columns, or pass header=True if the first "
            "row is a header"
        ) from exc
    if a.shape[0] == 0:
        raise DataError(f"{p}: has a header but no data rows")
    y = None
    if label_column is not None:
        if isinstance(label_column, str):
            if names is None or label_column not in names:
                raise DataError(
                    f"{p}: no column named {label_column!r}; header columns: {names}. Pass an index instead"
                )
            col = names.index(label_column)
        else:
            col = int(label_column)
            if not -a.shape[1] <= col < a.shape[1]:
                raise DataError(f"{p}: label column {col} out of range for {a.shape[1]} columns")
            col %= a.shape[1]
        y = a[:, col]
        if not np.all(y == np.round(y)):
            raise DataError(f"{p}: label column {label_column!r} holds non-integer values")
        y = y.astype(np.int64)
        a = np.delete(a, col, axis=1)
    return a, y


def load_array(path: str | os.PathLike, key: str | None = None, **kw: Any) -> np.ndarray:
    """One numeric array from ``.npy``, ``.npz``, ``.mat`` (v5 or v7.3), ``.h5``, ``.csv``/``.tsv``/``.txt``.

    ``key`` picks the array in multi-array files (required when there are several). Extra keywords go to
    :func:`load_csv` for text files (``header``, ``delimiter``).
    """
    p = _existing(path)
    suf = _suffix(p)
    if suf == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{p}: not a numeric .npy file ({exc})") from exc
    if suf == ".npz":
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            key = _pick_key(p, key, names)
            return z[key]
    if suf == ".mat":
        return load_mat(p, key)
    if suf in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            names: list[str] = []
            f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
            key = _pick_key(p, key, names)
            return np.asarray(f[key][()])
    if suf in (".csv", ".csv.gz", ".tsv", ".txt"):
        if key is not None:
            raise DataError(f"{p}: text files hold one table; drop key={key!r}")
        kw.setdefault("delimiter", {".tsv": "\t", ".txt": None}.get(suf, ","))
        return load_csv(p, **kw)[0]
    raise DataError(f"{p}: unsupported file type {suf!r}; use one of {', '.join(_ARRAY_SUFFIXES)}")


# --------------------------------------------------------------- embeddings
def save_embeddings(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray | torch.Tensor],
    meta: dict | None = None,
) -> Path:
    """Write named arrays (e.g. ``{"image": Z_img, "text": Z_txt, "labels": y}``) atomically.

    ``.npz``: one array per name plus a ``__meta__`` JSON string. ``.parquet`` (needs pyarrow): one
    column per name, 2-D arrays as fixed-size list columns, all with the same number of rows; ``meta``
    goes into the schema metadata as JSON.
    """
    path = Path(path).expanduser()
    if not arrays:
        raise DataError("save_embeddings needs at least one array")
    data = {str(k): _np(v) for k, v in arrays.items()}
    for k, v in data.items():
        if v.dtype.kind == "O":
            raise DataError(f"array {k!r} has dtype object; pass numeric arrays")
    meta_json = json.dumps(meta or {}, default=str)
    suf = _suffix(path)
    if suf == ".npz":
        if "__meta__" in data:
            raise DataError("'__meta__' is reserved for the metadata; rename that array")
        data["__meta__"] = np.array(meta_json, dtype=str)
        return atomic_write(path, lambda fh: np.savez_compressed(fh, **data))
    if suf == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(
                f"{path}: writing .parquet needs pyarrow; run `pip install pyarrow` (or "
                "`pip install commonspace[parquet]`), or save to .npz instead"
            ) from exc
        rows = {v.shape[0] if v.ndim else 1 for v in data.values()}
        if len(rows) != 1:
            raise DataError(f"{path}: parquet columns need equal row counts, got "
                            f"{ {k: v.shape for k, v in data.items()} }; save to .npz instead")
        cols = {}
        for k, v in data.items():
            if v.ndim == 1:
                cols[k] = pa.array(v)
            elif v.ndim == 2:
                cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            else:
                raise DataError(f"array {k!r} has shape {v.shape}; parquet takes 1-D or 2-D arrays")
        table = pa.table(cols).replace_schema_metadata({"commonspace": meta_json})
        return atomic_write(path, lambda fh: pq.write_table(table, fh))
    raise DataError(f"{path}: embeddings are saved as .npz or .parquet; change the suffix")


def load_embeddings(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read what :func:`save_embeddings` wrote: ``(arrays, meta)``."""
    p = _existing(path)
    suf = _suffix(p)
    if suf == ".npz":
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__meta__"))) if "__meta__" in arrays else {}
        return arrays, meta
    if suf == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{p}: reading .parquet needs pyarrow; run `pip install pyarrow`") from exc
        import pyarrow as pa

        table = pq.read_table(p)
        out = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        raw = (table.schema.metadata or {}).get(b"commonspace", b"{}")
        return out, json.loads(raw)
    raise DataError(f"{p}: embeddings files are .npz or .parquet")
