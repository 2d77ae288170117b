"""Embedding files written chunk by chunk, so ``commonspace embed`` holds one batch, not the whole output.

Three kinds, chosen by the path (docs/cli.md, ``embed``):

* ``OUT.npz``: one ``<name>.npy`` member per array plus ``__meta__`` (the format :func:`~commonspace.data.io.
  save_embeddings` writes; fixed zip timestamps, so the same arrays give the same bytes);
* ``OUT.parquet`` (needs pyarrow): one column per array, 2-D arrays as fixed-size lists, one row group per chunk;
* ``OUT/`` (a path without a suffix, or an existing embeddings folder): an *embeddings folder*::

      OUT/
        meta.json      format, version, rows, the run's meta, and per array: file, shape, dtype, sha256, bytes
        <name>.npy     one per array (joint, enc_<modality>, mask, index, labels); memory-mapped on reading

Every kind is staged in a hidden temporary folder next to the target (one ``open_memmap`` file per array, filled
as the chunks come and hashed as they are written); on :meth:`EmbeddingWriter.close` the folder is renamed into
place, or the ``.npz`` / ``.parquet`` file is assembled from it in chunks and renamed over the target. A failed
or interrupted run leaves the old target untouched and no temporary behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NoReturn

import numpy as np
from numpy.lib import format as npformat
from numpy.lib.format import open_memmap

from commonspace.data.dataset import DataError, PageBudget, release_pages
from commonspace.data.io import _np, raise_if_disk_error

__all__ = ["FORMAT", "EmbeddingWriter", "embedding_kind", "is_embeddings_folder", "read_embeddings_folder",
           "write_embeddings"]

FORMAT = "commonspace-embeddings"
VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_COPY_ROWS_BYTES = 16 << 20  # rows per chunk when assembling .npz / .parquet from the staged files

Kind = Literal["npz", "parquet", "folder"]


def embedding_kind(path: str | os.PathLike) -> Kind:
    """``npz``, ``parquet`` or ``folder`` (a path without a suffix, or an existing folder), from the path."""
    p = Path(path).expanduser()
    low = p.name.lower()
    if low.endswith(".npz"):
        return "npz"
    if low.endswith(".parquet"):
        return "parquet"
    if p.is_dir() or not p.suffix or str(path).endswith(os.sep):
        return "folder"
    raise DataError(f"{p}: embeddings are written as .npz, .parquet or a folder (a path without a suffix, or "
                    "ending in /); change the suffix, or add a / for a folder")


def is_embeddings_folder(path: str | os.PathLike) -> bool:
    p = Path(path).expanduser() / "meta.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _numpy(v: Any, name: str) -> np.ndarray:
    a = _np(v)
    if a.dtype.kind not in "biuf":
        raise DataError(f"array {name!r} has dtype {a.dtype}; embeddings files take numeric or bool arrays")
    if a.ndim == 0:
        raise DataError(f"array {name!r} is a scalar; give one row per item")
    return a


class EmbeddingWriter:
    """Write row-aligned named arrays in chunks: ``with EmbeddingWriter(path, rows, meta) as w: w.write({...})``.

    ``rows`` is the total row count (known up front, so each array is one pre-sized memory map). Every chunk
    names the same arrays with the same row count; the first fixes each array's trailing shape and dtype.
    Leaving the ``with`` block normally commits (:meth:`close`); an exception aborts, leaving nothing behind.
    """

    def __init__(self, path: str | os.PathLike, rows: int, meta: Mapping[str, Any] | None = None) -> None:
        from commonspace.data.folder import _staging_dir
        from commonspace.data.io import resolve_link, sweep_replaced

        self._tmp: Path | None = None
        self.kind = embedding_kind(path)
        # a symlink: its target is replaced and the link stays valid
        self.path = resolve_link(Path(path).expanduser())
        self.rows = int(rows)
        self.meta = json.loads(json.dumps(dict(meta or {}), default=str))
        if self.rows < 0:
            raise DataError(f"rows must be >= 0, got {rows}")
        if self.kind == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise DataError(f"{self.path}: writing .parquet needs pyarrow; run `pip install pyarrow` (or "
                                "`pip install commonspace[parquet]`), or write .npz or a folder instead") from exc
        sweep_replaced(self.path)  # first: it may put back the folder a killed replacement hid
        self._replace = self._check_target()
        self._done = 0
        self._maps: dict[str, np.memmap] = {}
        self._hash: dict[str, Any] = {}  # folder kind only
        self._pages: dict[str, PageBudget] = {}
        self._needed: int | None = None
        try:
            self._tmp = _staging_dir(self.path)
        except OSError as exc:
            self._disk(exc)

    def _disk(self, exc: OSError) -> NoReturn:
        """Drop what is staged; re-raise ``exc`` (being handled), as one line when it is a full or read-only disk."""
        self.abort()  # first, so the free space the message shows is real
        raise_if_disk_error(exc, self.path, self._needed)
        raise exc

    def _check_target(self) -> bool:
        """Refuse targets that must not be replaced; True when an existing embeddings folder is to be replaced."""
        p = self.path
        if not p.parent.is_dir():
            raise DataError(f"{p}: folder {p.parent} does not exist; create it first")
        if self.kind != "folder":
            if p.is_dir():
                raise DataError(f"{p}: is a directory; give a file path to write")
            return False
        if p.exists() and not p.is_dir():
            raise DataError(f"{p}: is a file; give a folder path to write the embeddings folder into")
        if not p.is_dir() or not any(p.iterdir()):
            return False
        if not is_embeddings_folder(p):
            # a folder that is not ours is never deleted
            raise DataError(f"{p}: exists and is not an embeddings folder; refusing to replace it, choose another "
                            "path")
        return True

    # ------------------------------------------------------------------ writing
    def _open(self, chunk: Mapping[str, np.ndarray]) -> None:
        from commonspace.data.io import reserve

        assert self._tmp is not None
        staged = sum(self.rows * a[:1].nbytes + 128 for a in chunk.values())
        # a .npz or .parquet is assembled next to the staged files before they are removed
        self._needed = staged * (1 if self.kind == "folder" else 2) + 4096
        for name, a in chunk.items():
            if not _NAME.fullmatch(name) or name == "__meta__":
                raise DataError(f"array name {name!r} cannot be used (reserved, or not a file name); rename it")
            try:
                mm = open_memmap(self._tmp / f"{name}.npy", mode="w+", dtype=a.dtype, shape=(self.rows, *a.shape[1:]))
                reserve(self._tmp / f"{name}.npy")  # a full disk is ENOSPC now, not SIGBUS while the map is filled
            except OSError as exc:
                self._disk(exc)
            self._maps[name], self._pages[name] = mm, PageBudget(mm)
            if self.kind == "folder":  # only a folder's meta.json records checksums
                h = self._hash[name] = hashlib.sha256()
                with open(self._tmp / f"{name}.npy", "rb") as fh:  # the header open_memmap wrote
                    h.update(fh.read(mm.offset))

    def write(self, chunk: Mapping[str, Any]) -> None:
        """Append the next rows of every array (the same names, and the same row count, each time)."""
        arrays = {str(k): _numpy(v, str(k)) for k, v in chunk.items()}
        if not arrays:
            raise DataError("a chunk needs at least one array")
        n = {a.shape[0] for a in arrays.values()}
        if len(n) != 1:
            raise DataError(f"the arrays of one chunk have different row counts "
                            f"{ {k: a.shape[0] for k, a in arrays.items()} }")
        rows = n.pop()
        if not self._maps:
            self._open(arrays)
        if arrays.keys() != self._maps.keys():
            raise DataError(f"a chunk has arrays {sorted(arrays)}, the first had {sorted(self._maps)}")
        if self._done + rows > self.rows:
            raise DataError(f"more rows than announced: {self._done + rows} > {self.rows}")
        for name, a in arrays.items():
            mm = self._maps[name]
            if a.shape[1:] != mm.shape[1:]:
                raise DataError(f"array {name!r}: rows of shape {a.shape[1:]} after {mm.shape[1:]}")
            out = np.ascontiguousarray(a, dtype=mm.dtype)
            mm[self._done:self._done + rows] = out
            if name in self._hash:
                self._hash[name].update(out)
            self._pages[name].add(out.nbytes)
        self._done += rows

    # ------------------------------------------------------------------ committing
    def close(self) -> Path:
        """Finish the file (or folder) and move it into place; returns the path."""
        from commonspace.data.folder import _fsync, _publish

        if self._tmp is None:
            return self.path
        try:
            if not self._maps:
                raise DataError("nothing was written; an embeddings file needs at least one array")
            if self._done != self.rows:
                raise DataError(f"{self._done} rows were written, {self.rows} announced")
            files = {}
            for name, mm in self._maps.items():
                mm.flush()
                release_pages(mm)
                files[name] = {"file": f"{name}.npy", "shape": list(mm.shape), "dtype": str(mm.dtype),
                               **({"sha256": self._hash[name].hexdigest()} if name in self._hash else {}),
                               "bytes": (self._tmp / f"{name}.npy").stat().st_size}
            self._maps.clear()
            if self.kind == "folder":
                for f in files.values():
                    _fsync(self._tmp / f["file"])
                doc = {"format": FORMAT, "version": VERSION, "rows": self.rows, "meta": self.meta, "arrays": files}
                (self._tmp / "meta.json").write_text(json.dumps(doc, indent=1) + "\n")  # last: it marks completion
                _fsync(self._tmp / "meta.json")
                _publish(self._tmp, self.path, self._replace)
                self._tmp = None
                return self.path
            from commonspace.data.io import atomic_write

            tmp = self._tmp
            assert tmp is not None
            if self.kind == "npz":
                atomic_write(self.path, lambda fh: _zip_staged(fh, tmp, files, self.meta))
            else:
                staged = {name: np.load(tmp / f["file"], mmap_mode="r") for name, f in files.items()}
                atomic_write(self.path, lambda fh: _parquet_staged(fh, staged, self.meta))
                del staged
            return self.path
        except OSError as exc:
            self.abort()
            raise_if_disk_error(exc, self.path, self._needed)
            raise DataError(f"{self.path}: cannot write the embeddings ({exc}); nothing was written") from exc
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything staged; the target is left as it was."""
        getattr(self, "_maps", {}).clear()
        if getattr(self, "_tmp", None) is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temporary folder
        try:
            self.abort()
        except Exception:
            pass


def _zip_staged(fh: IO[bytes], tmp: Path, files: Mapping[str, dict], meta: dict) -> None:
    """The staged ``.npy`` files as members of one ``.npz`` (byte copies in blocks), plus ``__meta__``."""
    import zipfile
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        def member(name: str) -> IO[bytes]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same arrays, same bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            return zf.open(info, "w", force_zip64=True)

        for f in files.values():
            with member(f["file"]) as out, open(tmp / f["file"], "rb") as src:
                shutil.copyfileobj(src, out, 8 << 20)
        buf = io.BytesIO()
        npformat.write_array(buf, np.array(json.dumps(meta), dtype=str), allow_pickle=False)
        with member("__meta__.npy") as out:
            out.write(buf.getvalue())


def _parquet_staged(fh: IO[bytes], staged: Mapping[str, np.ndarray], meta: dict) -> None:
    """The staged arrays as one parquet table, a row group per block of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for k, v in staged.items():
        if v.ndim > 2:
            raise DataError(f"array {k!r} has shape {v.shape}; parquet takes 1-D or 2-D arrays (write .npz or a "
                            "folder instead)")
    rows = next(iter(staged.values())).shape[0]
    width = max(int(np.prod(v.shape[1:])) * v.dtype.itemsize for v in staged.values()) or 1
    step = max(1, _COPY_ROWS_BYTES // width)

    def table(s: int, e: int) -> pa.Table:
        cols = {}
        for k, v in staged.items():
            a = np.ascontiguousarray(v[s:e])
            cols[k] = pa.array(a) if a.ndim == 1 else pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)),
                                                                                         a.shape[1])
        return pa.table(cols).replace_schema_metadata({"commonspace": json.dumps(meta)})

    first = table(0, min(rows, step))
    with pq.ParquetWriter(fh, first.schema) as w:
        w.write_table(first)
        for s in range(step, rows, step):
            w.write_table(table(s, min(rows, s + step)))


def write_embeddings(path: str | os.PathLike, chunks: Iterable[Mapping[str, Any]], rows: int,
                     meta: Mapping[str, Any] | None = None) -> Path:
    """Stream ``chunks`` (dicts of row-aligned arrays, e.g. :meth:`MultimodalModel.iter_embeddings`) to ``path``."""
    with EmbeddingWriter(path, rows, meta) as w:
        for c in chunks:
            w.write(c)
    return w.path


# ------------------------------------------------------------------ reading
def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}; the embeddings folder is damaged: write it again with `commonspace embed`")


def read_embeddings_folder(path: str | os.PathLike, mmap: bool = True, verify: bool = True
                           ) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of an embeddings folder; arrays are read-only memory maps unless ``mmap=False``.

    ``verify`` checks each file's sha256 against meta.json (one chunked read; nothing is held).
    """
    p = Path(path).expanduser()
    mp = p / "meta.json"
    if not mp.is_file():
        raise DataError(f"{p}: not an embeddings folder (no meta.json); write one with `commonspace embed --out "
                        f"{p.name}/`")
    try:
        doc = json.loads(mp.read_text())
    except (OSError, ValueError) as exc:
        raise _damaged(mp, f"meta.json cannot be read ({exc})") from exc
    from commonspace.data.meta import check_embeddings_folder

    doc = check_embeddings_folder(doc, mp, format=FORMAT, version=VERSION)  # every key used below, typed
    arrays: dict[str, np.ndarray] = {}
    for name, f in doc["arrays"].items():
        fp = p / f["file"]
        if not _NAME.fullmatch(name) or fp.parent != p or not fp.is_file():
            raise _damaged(fp, f"array {name!r} is missing")
        if fp.stat().st_size != f.get("bytes"):
            raise _damaged(fp, f"{fp.stat().st_size} bytes, meta.json says {f.get('bytes')}")
        if verify:
            h = hashlib.sha256()
            with open(fp, "rb") as fh:
                while block := fh.read(8 << 20):
                    h.update(block)
            if h.hexdigest() != f.get("sha256"):
                raise _damaged(fp, "checksum mismatch")
        try:
            a = np.load(fp, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise _damaged(fp, f"not a numeric .npy file ({exc})") from exc
        if list(a.shape) != list(f.get("shape", [])) or str(a.dtype) != f.get("dtype"):
            raise _damaged(fp, f"shape {a.shape} / dtype {a.dtype} differ from meta.json")
        arrays[name] = a
    return arrays, dict(doc.get("meta") or {})
