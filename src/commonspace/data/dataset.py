"""The one data format: features per named modality, a presence mask, labels and named splits.

A missing modality is stored as zeros with ``mask=False``; models read the mask, never the zeros.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "DataError", "DataWarning", "LazyArray", "MultimodalDataset", "Standardizer"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DISJOINT = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data; the message names the problem and the fix."""


def _as_tensor(x: object, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
        # torch rejects non-native byte order (big-endian .mat/HDF5 data) and wide unsigned ints
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
            arr = arr.astype(np.int64)
        return torch.as_tensor(arr)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc}); pass a numpy array or tensor") from exc


_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_EXACT = 2 ** 24  # every integer up to this is exact in float32


class DataWarning(UserWarning):
    """Input that is used, but not exactly as given (the message says what is lost)."""


def _to_float32(t: Tensor, m: str) -> Tensor:
    """float32 features, refusing values float32 cannot hold and warning where integers lose precision."""
    if t.numel() == 0:
        return t.to(torch.float32)
    if t.is_floating_point() and t.dtype == torch.float64:
        big = torch.isfinite(t) & (t.abs() > _F32_MAX)
        if big.any():
            rows = torch.nonzero(big.reshape(t.shape[0], -1).any(1)).flatten()[:5].tolist()
            raise DataError(f"modality {m!r} has values up to {float(t[big].abs().max()):.3g}, beyond float32's "
                            f"range ({_F32_MAX:.3g}), which would overflow to inf (first rows {rows}); rescale the "
                            "features (e.g. log or divide by a constant) before loading")
    elif not t.is_floating_point() and t.dtype != torch.bool:
        peak = int(t.abs().max())
        if peak > _F32_EXACT:
            warnings.warn(f"modality {m!r} holds integers up to {peak}, above 2^24 = {_F32_EXACT}: float32 "
                          "cannot represent them all exactly, so precision is lost; rescale them if the low "
                          "digits matter", DataWarning, stacklevel=4)
    return t.to(torch.float32)


#: rows per chunk when a lazy modality is scanned, loaded or standardised: about this many bytes of float32
CHUNK_BYTES = 16 << 20


def chunk_rows_for(row_elems: int, chunk_rows: int | None = None) -> int:
    """Rows per chunk: ``chunk_rows`` when given, else about :data:`CHUNK_BYTES` of float32 rows."""
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise DataError(f"chunk_rows must be at least 1, got {chunk_rows}")
        return int(chunk_rows)
    return max(1, CHUNK_BYTES // (4 * max(1, row_elems)))


def _bad_rows_message(m: str, rows: list[int]) -> str:
    return (f"modality {m!r} contains NaN or inf (first bad rows {rows}); impute or drop those values, "
            "or mark the modality missing with mask=False and zeros")


#: bytes written (or read through a map) between two releases of a memory map's pages (see :func:`release_pages`)
RELEASE_BYTES = 64 << 20
#: what one scattered row read through a map leaves mapped (the kernel maps whole page-cache folios around a fault;
#: over 1 MiB per random 1 KiB row was measured here), for maps that cannot be read with pread
_FAULT_AROUND = 2 << 20


def release_pages(arr: Any) -> None:
    """Drop the pages of a numpy memmap from this process's resident set (``madvise(MADV_DONTNEED)``).

    Pages of a file mapping stay resident in the process once touched, so reading (or writing) a whole file
    through a map would grow the resident set to the file's size; dropped pages stay in the kernel's page cache
    (the data is not lost or re-read from disk) and fault back in on the next access. Dirty pages are flushed
    first. A no-op for anything that is not a memmap, or where madvise is unavailable.
    """
    mm = getattr(arr, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mm is None or advice is None or not hasattr(mm, "madvise"):
        return
    try:
        if getattr(arr, "mode", "r") != "r":
            mm.flush()
        mm.madvise(advice)
    except (OSError, ValueError):  # closed, or refused by this kernel: only the resident-set bound is lost
        pass


class PageBudget:
    """Counts bytes moved through a memmap and releases its pages every :data:`RELEASE_BYTES`."""

    def __init__(self, arr: Any, budget: int | None = None) -> None:
        self.arr = arr
        self.budget = RELEASE_BYTES if budget is None else budget
        self.used = 0

    def add(self, nbytes: int) -> None:
        self.used += int(nbytes)
        if self.used >= self.budget:
            release_pages(self.arr)
            self.used = 0


class _RowReader:
    """Rows of a ``.npy`` memmap's file read with ``os.preadv`` into fresh arrays, never mapped.

    Reading through the map would leave every page-cache folio a fault touched mapped in this process (over 1 MiB
    per scattered row here), so an epoch of random batches would grow the resident set towards the file's size;
    a read copies exactly the rows asked for. One read per run of consecutive rows.
    """

    def __init__(self, mm: np.memmap) -> None:
        self.path = str(mm.filename)
        self.offset = int(mm.offset)
        self.dtype = mm.dtype
        self.row_shape = tuple(int(d) for d in mm.shape[1:])
        self.row_bytes = math.prod(self.row_shape) * mm.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    @staticmethod
    def usable(src: Any) -> bool:
        """A top-level, C-contiguous memmap of a named file (a slice's ``offset`` would not locate its rows)."""
        return (isinstance(src, np.memmap) and bool(getattr(src, "filename", None)) and src.flags.c_contiguous
                and isinstance(src.base, mmap.mmap) and hasattr(os, "preadv"))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) in that order."""
        out = np.empty((rows.size, *self.row_shape), self.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        rb = self.row_bytes
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        for s, e in zip([0, *cut.tolist()], [*cut.tolist(), rows.size], strict=True):
            done, want, at = 0, (e - s) * rb, self.offset + int(rows[s]) * rb
            while done < want:  # a read may return less than asked (at most ~2 GiB per call on Linux)
                got = os.preadv(self.fd, [buf[s * rb + done:e * rb]], at + done)
                if got <= 0:
                    raise DataError(f"{self.path}: the file ends before row {int(rows[s]) + done // rb}; it was "
                                    "truncated or changed while open")
                done += got
        return out

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


class LazyArray:
    """Rows of an on-disk array (a numpy memmap or an h5py dataset) that are read only when gathered.

    ``take(index)`` reads the rows with one vectorised fancy index over the sorted unique row numbers (locality
    on disk; HDF5 needs increasing order), converts to float32 and returns them in the requested order.
    A view holds an index map ``rows`` into the source instead of a copy; ``scales`` are standardisations
    ``(mean, std, keep)`` applied after the read exactly as :meth:`Standardizer.transform` applies them in
    memory (``keep`` zeroes the rows that were missing). Views of one source share its scan (finite values,
    which rows are non-zero), so subsets and selections are not re-read.
    """

    def __init__(self, source: Any, *, rows: np.ndarray | None = None,
                 scales: tuple[tuple[Tensor, Tensor, Tensor], ...] = (), label: str = "",
                 chunk_rows: int | None = None, _state: dict | None = None) -> None:
        if not hasattr(source, "shape") or not hasattr(source, "dtype") or len(source.shape) < 1:
            raise DataError(f"LazyArray needs an array-like with shape and dtype, got {type(source).__name__}")
        self.source = source
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.scales = tuple(scales)
        self.label = label
        self.chunk_rows = chunk_rows
        self._state = {} if _state is None else _state

    # ------------------------------------------------------------- shape
    @property
    def shape(self) -> tuple[int, ...]:
        n = int(self.source.shape[0]) if self.rows is None else int(self.rows.size)
        return (n, *(int(d) for d in self.source.shape[1:]))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.source.dtype)

    @property
    def ndim(self) -> int:
        return len(self.source.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        where = f" {self.label}" if self.label else ""
        return f"LazyArray({self.shape}, {self.dtype}{where}{', standardised' if self.scales else ''})"

    def _step(self) -> int:
        return chunk_rows_for(math.prod(self.shape[1:]), self.chunk_rows)

    # ------------------------------------------------------------- reads
    def _pages(self) -> PageBudget | None:
        """The page budget of a memmap source, shared by every view of it (None for HDF5 and in-memory sources)."""
        if not isinstance(self.source, np.memmap):
            return None
        if "pages" not in self._state:
            self._state["pages"] = PageBudget(self.source)
        return self._state["pages"]

    def _reader(self) -> _RowReader | None:
        """The pread reader of a memmap source, shared by every view of it (None: read through the source)."""
        if "reader" not in self._state:
            self._state["reader"] = _RowReader(self.source) if _RowReader.usable(self.source) else None
        return self._state["reader"]

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """Source rows ``rows`` (sorted, unique) in the source's dtype."""
        reader = self._reader()
        if reader is not None:
            return reader.read(rows)
        lo, hi = int(rows[0]), int(rows[-1])
        run = hi - lo + 1 == rows.size
        out = np.asarray(self.source[lo:hi + 1] if run else self.source[rows])
        pages = self._pages()
        if pages is not None:  # a map read through: a resident set bounded whatever the file's size
            pages.add(out.nbytes if run else max(out.nbytes, rows.size * _FAULT_AROUND))
        return out

    def _gather(self, src: np.ndarray) -> np.ndarray:
        """float32 source rows ``src`` in that order, read once each in increasing order."""
        if src.size == 0:
            return np.empty((0, *self.shape[1:]), dtype=np.float32)
        lo, hi = int(src[0]), int(src[-1])
        if hi - lo + 1 == src.size and (src.size == 1 or bool(np.all(np.diff(src) == 1))):
            return np.array(self._raw(src), dtype=np.float32)  # a contiguous run: one read
        uniq, inv = np.unique(src, return_inverse=True)
        return np.asarray(self._raw(uniq), dtype=np.float32)[inv.reshape(-1)]

    def take(self, index: np.ndarray | Tensor | Sequence[int]) -> Tensor:
        """float32 rows ``index`` (of this view, any order, repeats allowed) as a new tensor."""
        index = np.asarray(index.numpy() if isinstance(index, Tensor) else index, dtype=np.int64).reshape(-1)
        n = self.shape[0]
        if index.size and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(f"row index out of range for {n} rows")
        src = index if self.rows is None else self.rows[index]
        t = torch.from_numpy(self._gather(src))
        if self.scales:
            flat = t.reshape(index.size, -1)
            sel = torch.from_numpy(index)
            for mean, std, keep in self.scales:  # the same operations as Standardizer.transform in memory
                flat = (flat - mean) / std
                flat = flat * keep.index_select(0, sel).unsqueeze(1)
            t = flat.reshape(t.shape)
        return t

    def materialise(self) -> Tensor:
        """Every row as one float32 tensor, read chunk by chunk (this loads the whole modality)."""
        n = self.shape[0]
        out = torch.empty(self.shape, dtype=torch.float32)
        step = self._step()
        for s in range(0, n, step):
            out[s:s + step] = self.take(np.arange(s, min(n, s + step)))
        return out

    def view(self, index: np.ndarray | Tensor) -> LazyArray:
        """The rows ``index`` of this view, as an index map (nothing is read)."""
        index = np.asarray(index.numpy() if isinstance(index, Tensor) else index, dtype=np.int64).reshape(-1)
        rows = index if self.rows is None else self.rows[index]
        sel = torch.from_numpy(index)
        scales = tuple((mu, sd, keep.index_select(0, sel)) for mu, sd, keep in self.scales)
        return LazyArray(self.source, rows=rows, scales=scales, label=self.label, chunk_rows=self.chunk_rows,
                         _state=self._state)

    def with_scale(self, mean: Tensor, std: Tensor, keep: Tensor) -> LazyArray:
        """This view standardised by ``(x - mean) / std`` per batch, rows with ``keep=False`` zero."""
        return LazyArray(self.source, rows=self.rows, scales=(*self.scales, (mean, std, keep.to(torch.bool))),
                         label=self.label, chunk_rows=self.chunk_rows, _state=self._state)

    # ------------------------------------------------------------- validation
    def scan(self, m: str, on_chunk: Callable[[np.ndarray], None] | None = None) -> None:
        """Check the source's values in chunks (finite, within float32), recording which rows are non-zero.

        Done once per source (views share it). ``on_chunk`` sees every raw chunk in file order (the folder
        reader hashes them). The whole source is always read, so a bad value anywhere is reported with its
        first rows, after ``on_chunk`` has seen everything.
        """
        if "nonzero" in self._state or self._state.get("trusted"):
            if on_chunk is None:
                return
        src = self.source
        n = int(src.shape[0])
        kind = self.dtype.kind
        if kind not in "fiub":
            raise DataError(f"modality {m!r} has dtype {self.dtype}; expected numbers")
        nonzero = np.zeros(n, dtype=bool)
        bad: list[int] = []
        big: list[int] = []
        peak_big, peak_int = 0.0, 0
        step = chunk_rows_for(math.prod(src.shape[1:]), self.chunk_rows)
        for s in range(0, n, step):
            c = self._raw(np.arange(s, min(n, s + step)))
            if on_chunk is not None:
                on_chunk(c)
            flat = c.reshape(c.shape[0], -1)
            nonzero[s:s + c.shape[0]] = (flat != 0).any(1)
            if kind == "f":
                fin = np.isfinite(flat)
                if len(bad) < 5 and not fin.all():
                    bad += (s + np.flatnonzero(~fin.all(1))).tolist()[:5 - len(bad)]
                if c.dtype.itemsize > 4:
                    over = fin & (np.abs(flat) > _F32_MAX)
                    if over.any():
                        peak_big = max(peak_big, float(np.abs(flat[over]).max()))
                        big += (s + np.flatnonzero(over.any(1))).tolist()[:5 - len(big)]
            elif kind in "iu" and flat.size:
                peak_int = max(peak_int, int(np.abs(flat.astype(np.int64)).max()))
        if big:
            raise DataError(f"modality {m!r} has values up to {peak_big:.3g}, beyond float32's range "
                            f"({_F32_MAX:.3g}), which would overflow to inf (first rows {big[:5]}); rescale the "
                            "features (e.g. log or divide by a constant) before loading")
        if bad:
            raise DataError(_bad_rows_message(m, bad[:5]))
        if peak_int > _F32_EXACT:
            warnings.warn(f"modality {m!r} holds integers up to {peak_int}, above 2^24 = {_F32_EXACT}: float32 "
                          "cannot represent them all exactly, so precision is lost; rescale them if the low "
                          "digits matter", DataWarning, stacklevel=4)
        self._state["nonzero"] = nonzero

    def trust(self) -> None:
        """Skip the value scan: the values are taken as finite and consistent with the mask (writer checked)."""
        self._state["trusted"] = True

    def nonzero_rows(self) -> Tensor | None:
        """bool (n,): rows with a non-zero value (None when trusted without a scan).

        A standardised view counts the rows it keeps as non-zero: their values are (x - mean) / std.
        """
        if self.scales:
            return self.scales[-1][2].clone()
        nz = self._state.get("nonzero")
        if nz is None:
            return None
        return torch.from_numpy(nz if self.rows is None else nz[self.rows])

    # ------------------------------------------------------------- pickling (reopens the file, never copies it)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_state"] = {k: v for k, v in self._state.items() if k not in ("pages", "reader")}  # hold the file
        src = self.source
        if isinstance(src, np.memmap) and getattr(src, "filename", None):
            state["source"] = ("npy", str(src.filename))
        elif type(src).__module__.startswith("h5py"):
            state["source"] = ("h5", str(src.file.filename), str(src.name))
        return state

    def __setstate__(self, state: dict) -> None:
        src = state["source"]
        if isinstance(src, tuple) and src and src[0] == "npy":
            state["source"] = np.load(src[1], mmap_mode="r", allow_pickle=False)
        elif isinstance(src, tuple) and src and src[0] == "h5":
            import h5py

            state["source"] = h5py.File(src[1], "r")[src[2]]
        self.__dict__.update(state)


class _Features(Mapping):
    """``dataset.features`` when some modalities are on disk (:class:`LazyArray`).

    Looking a modality up (``data.features[m]``) returns it as one float32 tensor: a lazy modality is loaded
    whole (chunk by chunk) on first access and kept, so every existing caller works unchanged; batches,
    subsets, selections and standardisation never need this and read only the rows they use.
    """

    def __init__(self, store: Mapping[str, Tensor | LazyArray]) -> None:
        self._store = dict(store)
        self._loaded: dict[str, Tensor] = {}

    def __getitem__(self, m: str) -> Tensor:
        x = self._store[m]
        if isinstance(x, LazyArray):
            if m not in self._loaded:
                self._loaded[m] = x.materialise()
            return self._loaded[m]
        return x

    def __contains__(self, m: object) -> bool:
        return m in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def storage(self) -> dict[str, Tensor | LazyArray]:
        """What each modality is held as: a tensor, or the lazy array until it has been loaded."""
        return {m: self._loaded.get(m, x) for m, x in self._store.items()}

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{m!r}: {x!r}" if isinstance(x, LazyArray) else f"{m!r}: Tensor{tuple(x.shape)}"
                               for m, x in self.storage().items()) + "}"


def _string_labels(x: object) -> bool:
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind is None and isinstance(x, list | tuple) and x:
        kind = "U" if isinstance(x[0], str | bytes) else None
    return kind in ("U", "S", "O")


@dataclass
class Batch:
    """A mini-batch as tensors. ``mask[:, j]`` says whether ``modalities[j]`` is present."""

    features: dict[str, Tensor]
    mask: Tensor
    modalities: tuple[str, ...]
    labels: Tensor | None = None
    index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def present(self, modality: str) -> Tensor:
        """Boolean (B,) presence of one modality."""
        return self.mask[:, self.modalities.index(modality)]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {k: v.to(device, non_blocking=True) for k, v in self.features.items()},
            self.mask.to(device),
            self.modalities,
            None if self.labels is None else self.labels.to(device),
            None if self.index is None else self.index.to(device),
        )

    def only(self, keep: Sequence[str]) -> Batch:
        """The same batch with every modality outside ``keep`` marked missing (zeroed)."""
        unknown = set(keep) - set(self.modalities)
        if unknown:
            raise DataError(f"unknown modalities {sorted(unknown)}; this batch has {list(self.modalities)}")
        mask = self.mask.clone()
        feats = dict(self.features)
        for j, m in enumerate(self.modalities):
            if m not in keep:
                mask[:, j] = False
                feats[m] = torch.zeros_like(feats[m])
        return Batch(feats, mask, self.modalities, self.labels, self.index)


@dataclass
class MultimodalDataset:
    """Paired features of several modalities with presence mask, labels and named splits.

    ``features``: name -> (N, d) or (N, C, H, W) array. ``mask``: bool (N, M) in ``modalities`` order
    (all present when omitted). ``labels``: int (N,) single-label or 0/1 (N, C) multi-label.
    ``splits``: name -> integer indices (train / val / test, or query / database / train).
    Validation runs on construction and raises :class:`DataError` with the fix.
    """

    features: Mapping[str, object]
    mask: object | None = None
    labels: object | None = None
    splits: Mapping[str, object] = field(default_factory=dict)
    name: str = "dataset"
    class_names: Sequence[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = self.features.storage() if isinstance(self.features, _Features) else self.features
        if not isinstance(given, Mapping) or not given:
            raise DataError("features must be a non-empty mapping of modality name -> array")
        feats: dict[str, Tensor | LazyArray] = {}
        n: int | None = None
        first = ""
        for m, x in given.items():
            if not isinstance(m, str) or not _NAME.match(m):
                raise DataError(
                    f"modality name {m!r} is not a valid name; use letters, digits, '_' or '-' "
                    "starting with a letter"
                )
            if isinstance(x, LazyArray):
                # on disk: shapes checked here, values in chunks by scan() (once per source), nothing loaded
                if x.ndim not in (2, 4):
                    raise DataError(
                        f"modality {m!r} has shape {x.shape}; expected (N, d) vectors or (N, C, H, W) "
                        "feature maps (reshape 1-d data to (N, 1))"
                    )
                if any(d == 0 for d in x.shape[1:]):
                    raise DataError(f"modality {m!r} has shape {x.shape}, with no features; drop the modality "
                                    "or give it at least one feature per sample")
                if n is None:
                    n, first = x.shape[0], m
                elif x.shape[0] != n:
                    raise DataError(
                        f"modality {m!r} has {x.shape[0]} samples but {first!r} has {n}; every modality needs "
                        "one row per sample (use the mask and zero rows for missing modalities)"
                    )
                x.scan(m)
                feats[m] = x
                continue
            t = _as_tensor(x, f"modality {m!r}")
            if t.ndim not in (2, 4):
                raise DataError(
                    f"modality {m!r} has shape {tuple(t.shape)}; expected (N, d) vectors or (N, C, H, W) "
                    "feature maps (reshape 1-d data to (N, 1))"
                )
            if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                          torch.uint8, torch.bool)):
                raise DataError(f"modality {m!r} has dtype {t.dtype}; expected numbers")
            if any(d == 0 for d in t.shape[1:]):
                raise DataError(f"modality {m!r} has shape {tuple(t.shape)}, with no features; drop the modality "
                                "or give it at least one feature per sample")
            t = _to_float32(t, m)
            if n is None:
                n, first = int(t.shape[0]), m
            elif int(t.shape[0]) != n:
                raise DataError(
                    f"modality {m!r} has {t.shape[0]} samples but {first!r} has {n}; every modality needs "
                    "one row per sample (use the mask and zero rows for missing modalities)"
                )
            bad = ~torch.isfinite(t)
            if bad.any():
                rows = torch.nonzero(bad.reshape(t.shape[0], -1).any(1)).flatten()[:5].tolist()
                raise DataError(
                    f"modality {m!r} contains NaN or inf (first bad rows {rows}); impute or drop those values, "
                    "or mark the modality missing with mask=False and zeros"
                )
            feats[m] = t.contiguous()
        assert n is not None
        if n == 0:
            raise DataError("the dataset has no samples")
        lazy = any(isinstance(x, LazyArray) for x in feats.values())
        # in memory: the plain dict of tensors it always was; with modalities on disk: a mapping that loads on access
        self.features = _Features(feats) if lazy else feats
        self.modalities: tuple[str, ...] = tuple(feats)
        self.n = n

        if self.mask is None:
            mask = torch.ones(n, len(feats), dtype=torch.bool)
        else:
            mask = _as_tensor(self.mask, "mask")
            if mask.shape != (n, len(feats)):
                raise DataError(
                    f"mask has shape {tuple(mask.shape)}; expected ({n}, {len(feats)}) = (samples, modalities "
                    f"in order {list(self.modalities)})"
                )
            if mask.dtype != torch.bool:
                if not torch.all((mask == 0) | (mask == 1)):
                    raise DataError("mask must be boolean or 0/1")
                mask = mask.to(torch.bool)
        for j, m in enumerate(self.modalities):
            x = feats[m]
            nonzero = x.nonzero_rows() if isinstance(x, LazyArray) else (x.reshape(n, -1) != 0).any(1)
            if nonzero is None:  # a trusted lazy source: its writer checked this
                continue
            contradict = (~mask[:, j]) & nonzero
            if contradict.any():
                rows = torch.nonzero(contradict).flatten()[:5].tolist()
                raise DataError(
                    f"mask says modality {m!r} is missing for {int(contradict.sum())} samples (first {rows}) "
                    "but their features are not zero; zero those rows or set the mask to True"
                )
        self.mask = mask

        if self.labels is not None:
            if _string_labels(self.labels):
                sample = [str(v) for v in np.asarray(self.labels, dtype=object).reshape(-1)[:3]]
                raise DataError(f"labels are strings (e.g. {sample}); map them to integer class ids first: "
                                "names, y = numpy.unique(labels, return_inverse=True), then pass labels=y and "
                                "class_names=names")
            y = _as_tensor(self.labels, "labels")
            if y.ndim == 2 and y.shape[1] == 1 and y.dtype != torch.bool:
                y = y[:, 0]  # an integer column is a label vector (as MATLAB stores one); bool stays multi-label
            if y.ndim not in (1, 2) or y.shape[0] != n:
                raise DataError(
                    f"labels have shape {tuple(y.shape)}; expected ({n},) class ids or ({n}, C) 0/1 multi-label "
                    "indicators, one row per sample"
                )
            if y.is_floating_point():
                if not torch.all(torch.isfinite(y)) or not torch.all(y == torch.round(y)):
                    raise DataError("labels must be integers (class ids or 0/1 indicators), not real numbers")
            if y.ndim == 1:
                y = y.to(torch.int64)
                if (y < 0).any():
                    raise DataError("single-label class ids must be >= 0")
            else:
                if not torch.all((y == 0) | (y == 1)):
                    raise DataError("multi-label labels must be 0/1 indicators of shape (N, C)")
                y = y.to(torch.bool)
            self.labels = y
        splits: dict[str, Tensor] = {}
        for s, idx in dict(self.splits).items():
            t = _as_tensor(idx, f"split {s!r}")
            if t.dtype == torch.bool:
                if t.shape != (n,):
                    raise DataError(f"boolean split {s!r} must have shape ({n},)")
                t = torch.nonzero(t).flatten()
            if t.is_floating_point() and not torch.all(t == torch.round(t)):
                # a silent cast would truncate 1.5 -> 1 and address the wrong rows
                raise DataError(f"split {s!r} has non-integer indices; pass integer row indices")
            t = t.reshape(-1).to(torch.int64)
            if t.numel() == 0:
                raise DataError(f"split {s!r} is empty; give it at least one sample or leave it out")
            if t.min() < 0 or t.max() >= n:
                raise DataError(f"split {s!r} has indices outside [0, {n}); indices must address rows")
            if torch.unique(t).numel() != t.numel():
                raise DataError(f"split {s!r} lists some samples twice; remove the duplicates")
            splits[s] = t
        present = [s for s in _DISJOINT if s in splits]
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                if np.intersect1d(splits[a].numpy(), splits[b].numpy()).size:
                    raise DataError(f"splits {a!r} and {b!r} share samples; train/val/test must be disjoint")
        self.splits = splits

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return self.n

    def _store(self) -> dict[str, Tensor | LazyArray]:
        """Each modality as held: a tensor, or a :class:`LazyArray` read per batch (never loads anything)."""
        if isinstance(self.features, _Features):
            return self.features.storage()
        return self.features

    @property
    def lazy_modalities(self) -> tuple[str, ...]:
        """The modalities read from disk per batch (memory-mapped or HDF5), not held in memory."""
        return tuple(m for m, x in self._store().items() if isinstance(x, LazyArray))

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per-modality feature shape without the sample axis."""
        return {m: tuple(x.shape[1:]) for m, x in self._store().items()}

    @property
    def empty_rows(self) -> Tensor:
        """Indices of rows with no modality present (they carry no data to train on, query or retrieve)."""
        return torch.nonzero(~self.mask.any(1)).flatten()

    @property
    def multilabel(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    @property
    def num_classes(self) -> int | None:
        if self.labels is None:
            return None
        return int(self.labels.shape[1]) if self.multilabel else int(self.labels.max()) + 1

    def split(self, name: str) -> Tensor:
        """Indices of a named split; raises with the available names."""
        if name not in self.splits:
            raise DataError(f"no split {name!r} in {self.name!r}; available: {sorted(self.splits)}")
        return self.splits[name]

    def check_modalities(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            # a bare string would be read as a sequence of one-letter names
            raise DataError(f"pass a list of modality names, e.g. [{names!r}], not a string")
        unknown = [m for m in names if m not in self.features]
        if unknown:
            raise DataError(f"unknown modalities {unknown}; {self.name!r} has {list(self.modalities)}")

    def batch(self, index: Tensor | Sequence[int] | None = None) -> Batch:
        """Gather rows directly from the in-memory tensors, or from the files of lazy modalities (sorted reads,
        float32 out); no per-sample loop either way."""
        if index is None:
            index = torch.arange(self.n)
        index = torch.as_tensor(index, dtype=torch.int64)
        return Batch(
            {m: x.take(index) if isinstance(x, LazyArray) else x.index_select(0, index)
             for m, x in self._store().items()},
            self.mask.index_select(0, index),
            self.modalities,
            None if self.labels is None else self.labels.index_select(0, index),
            index,
        )

    def iter_batches(
        self,
        index: Tensor | str | None = None,
        batch_size: int = 256,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Mini-batches over a split name or index tensor."""
        if isinstance(index, str):
            index = self.split(index)
        elif index is None:
            index = torch.arange(self.n)
        if shuffle:
            index = index[torch.randperm(index.numel(), generator=generator)]
        for s in range(0, index.numel(), batch_size):
            yield self.batch(index[s:s + batch_size])

    def subset(self, index: Tensor | str, name: str | None = None) -> MultimodalDataset:
        """A new dataset holding only these rows (splits are dropped)."""
        if isinstance(index, str):
            name = name or f"{self.name}[{index}]"
            index = self.split(index)
        store = self._store()
        if any(isinstance(x, LazyArray) for x in store.values()):
            index = torch.as_tensor(index, dtype=torch.int64)
            feats = {m: x.view(index) if isinstance(x, LazyArray) else x.index_select(0, index)
                     for m, x in store.items()}  # lazy rows become an index map; nothing is read
            return MultimodalDataset(feats, self.mask.index_select(0, index),
                                     None if self.labels is None else self.labels.index_select(0, index), {},
                                     name or self.name, self.class_names, dict(self.meta))
        b = self.batch(index)
        return MultimodalDataset(b.features, b.mask, b.labels, {}, name or self.name, self.class_names,
                                 dict(self.meta))

    def select(self, modalities: Sequence[str]) -> MultimodalDataset:
        """Keep only some modalities (in the given order)."""
        self.check_modalities(modalities)
        cols = [self.modalities.index(m) for m in modalities]
        store = self._store()
        return MultimodalDataset({m: store[m] for m in modalities}, self.mask[:, cols], self.labels,
                                 self.splits, self.name, self.class_names, dict(self.meta))

    def replace(self, features: Mapping[str, Tensor] | None = None, mask: Tensor | None = None,
                splits: Mapping[str, Tensor] | None = None) -> MultimodalDataset:
        """A copy with some parts replaced (revalidated; lazy modalities stay on disk)."""
        feats = self._store() if features is None else features
        feats = feats.storage() if isinstance(feats, _Features) else dict(feats)
        return MultimodalDataset(feats,
                                 self.mask if mask is None else mask, self.labels,
                                 dict(self.splits if splits is None else splits), self.name, self.class_names,
                                 dict(self.meta))

    def drop_modalities(self, fraction: float, split: str | None = None, seed: int = 0,
                        keep: str | None = None) -> MultimodalDataset:
        """Mark one modality missing for ``fraction`` of the samples in ``split`` (all rows if None).

        Each affected sample loses one modality chosen uniformly at random, never ``keep``; at least
        one modality always stays.
        """
        if not 0.0 <= fraction <= 1.0:
            raise DataError(f"fraction must be in [0, 1], got {fraction}")
        if len(self.modalities) < 2:
            raise DataError("dropping modalities needs at least two modalities")
        if keep is not None:
            self.check_modalities([keep])
        g = torch.Generator().manual_seed(seed)
        idx = self.split(split) if split else torch.arange(self.n)
        full = idx[self.mask[idx].all(1)]
        k = int(round(fraction * idx.numel()))
        if k > full.numel():
            raise DataError(f"cannot drop a modality from {k} samples: only {full.numel()} are complete")
        chosen = full[torch.randperm(full.numel(), generator=g)[:k]]
        choices = [j for j, m in enumerate(self.modalities) if m != keep]
        which = torch.tensor(choices)[torch.randint(len(choices), (k,), generator=g)]
        mask = self.mask.clone()
        mask[chosen, which] = False
        return self.with_mask(mask)

    def with_mask(self, mask: Tensor) -> MultimodalDataset:
        """A copy with presence ``mask`` (N, M) in this dataset's modality order, which may only remove
        modalities: the rows it marks missing are zeroed (the library's one convention for a missing modality)."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise DataError(f"mask has shape {tuple(mask.shape)}; expected {tuple(self.mask.shape)} = (samples, "
                            f"modalities in order {list(self.modalities)})")
        if bool((mask & ~self.mask).any()):
            raise DataError("with_mask can only mark modalities missing, not present; build a new dataset to add "
                            "modalities")
        feats = {}
        store = self._store()
        for j, m in enumerate(self.modalities):
            gone = self.mask[:, j] & ~mask[:, j]
            x = store[m]
            if bool(gone.any()):
                if isinstance(x, LazyArray):  # zeroed as each batch is read: nothing is loaded
                    x = x.with_scale(torch.zeros(()), torch.ones(()), mask[:, j])
                else:
                    x = x.clone()
                    x[gone] = 0
            feats[m] = x
        return self.replace(feats, mask)

    def value_range(self, m: str) -> tuple[float, float] | None:
        """``(min, max)`` of modality ``m`` over the rows where it is present (None if it is missing everywhere);
        a lazy modality is read chunk by chunk, never whole."""
        self.check_modalities([m])
        rows = torch.nonzero(self.mask[:, self.modalities.index(m)]).flatten()
        if rows.numel() == 0:
            return None
        x = self._store()[m]
        if not isinstance(x, LazyArray):
            v = x.index_select(0, rows)
            return float(v.min()), float(v.max())
        lo, hi = math.inf, -math.inf
        step = x._step()
        for s in range(0, rows.numel(), step):
            c = x.take(rows[s:s + step])
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        return lo, hi

    def summary(self) -> dict:
        return {
            "name": self.name,
            "samples": self.n,
            "modalities": {m: list(d) for m, d in self.dims.items()},
            "missing": {m: int((~self.mask[:, j]).sum()) for j, m in enumerate(self.modalities)},
            "labels": None if self.labels is None else ("multi" if self.multilabel else "single"),
            "classes": self.num_classes,
            "splits": {s: int(i.numel()) for s, i in self.splits.items()},
        }


def _chunked_moments(x: LazyArray, rows: Tensor) -> tuple[Tensor, Tensor]:
    """float32 mean and (biased) std of ``x``'s ``rows`` in one chunked float64 pass.

    Rows that fit in one chunk use exactly the in-memory computation; more are merged chunk by chunk
    (Chan et al.'s pairwise update of mean and sum of squared deviations).
    """
    step = x._step()
    if rows.numel() <= step:
        c = x.take(rows).reshape(rows.numel(), -1).double()
        return c.mean(0).float(), c.std(0, unbiased=False).float()
    count, mean, m2 = 0, None, None
    for s in range(0, rows.numel(), step):
        c = x.take(rows[s:s + step]).reshape(-1, math.prod(x.shape[1:])).double()
        b = c.shape[0]
        cm = c.mean(0)
        cm2 = ((c - cm) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = b, cm, cm2
            continue
        delta = cm - mean
        total = count + b
        mean = mean + delta * (b / total)
        m2 = m2 + cm2 + delta ** 2 * (count * b / total)
        count = total
    assert mean is not None and m2 is not None
    return mean.float(), (m2 / count).sqrt().float()


class Standardizer:
    """Per-modality feature standardisation fitted on one split, over present samples only.

    On lazy (on-disk) modalities the statistics come from one chunked pass and the transform is applied per
    batch as rows are read, so neither loads the modality.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps
        self.mean: dict[str, Tensor] = {}
        self.std: dict[str, Tensor] = {}

    @classmethod
    def for_vectors(cls, data: MultimodalDataset, split: str = "train",
                    skip: Sequence[str] = ()) -> Standardizer | None:
        """Fitted on ``split`` when every modality is a feature vector, leaving ``skip`` alone; None when there
        is nothing to standardise (image-shaped features, or every modality skipped)."""
        if not data.features or not all(len(d) == 1 for d in data.dims.values()):
            return None
        if set(data.modalities) <= set(skip):
            return None
        return cls().fit(data, split, skip=skip)

    def fit(self, data: MultimodalDataset, split: str | None = "train",
            skip: Sequence[str] = ()) -> Standardizer:
        """Fit on ``split``; modalities in ``skip`` (read on their own scale, e.g. counts) are left as they are."""
        idx = data.split(split) if split else torch.arange(data.n)
        for j, m in enumerate(data.modalities):
            if m in skip:
                continue
            rows = idx[data.mask[idx, j]]
            if rows.numel() == 0:
                raise DataError(f"modality {m!r} is missing for every sample of split {split!r}; cannot fit")
            held = data._store()[m]
            if isinstance(held, LazyArray):
                mean, sd = _chunked_moments(held, rows)
            else:
                x = held.index_select(0, rows).reshape(rows.numel(), -1).double()
                mean, sd = x.mean(0).float(), x.std(0, unbiased=False).float()
            self.mean[m] = mean
            self.std[m] = torch.where(sd > self.eps, sd, torch.ones_like(sd))
        return self

    def transform(self, data: MultimodalDataset) -> MultimodalDataset:
        if not self.mean:
            raise DataError("Standardizer.transform called before fit")
        data.check_modalities(list(self.mean))
        feats: dict[str, Tensor | LazyArray] = {}
        for j, m in enumerate(data.modalities):
            x = data._store()[m]
            if m not in self.mean:
                feats[m] = x
                continue
            if isinstance(x, LazyArray):  # standardised per batch as it is read; nothing is loaded
                width = math.prod(x.shape[1:])
                if width != self.mean[m].numel():
                    raise DataError(f"modality {m!r} has {width} features; the standardiser was fitted "
                                    f"on {self.mean[m].numel()}")
                feats[m] = x.with_scale(self.mean[m], self.std[m], data.mask[:, j].clone())
                continue
            flat = x.reshape(x.shape[0], -1)
            if flat.shape[1] != self.mean[m].numel():
                raise DataError(f"modality {m!r} has {flat.shape[1]} features; the standardiser was fitted "
                                f"on {self.mean[m].numel()}")
            z = (flat - self.mean[m]) / self.std[m]
            z = z * data.mask[:, j:j + 1]  # missing stays zero
            feats[m] = z.reshape(x.shape)
        return data.replace(feats)

    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for m in self.mean:
            out[f"{m}.mean"] = self.mean[m]
            out[f"{m}.std"] = self.std[m]
        return out

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Standardizer:
        for k, v in state.items():
            m, kind = k.rsplit(".", 1)
            (self.mean if kind == "mean" else self.std)[m] = v
        return self
