"""Nearest-neighbour indexes over embeddings (float) and binary codes, one thin layer over FAISS.

* :class:`EmbeddingIndex`: float vectors, any ``faiss.index_factory`` string ("Flat", "HNSW32",
  "IVF256,Flat", ...), metric "cosine" (L2-normalise, then inner product), "ip" or "l2".
* :class:`BinaryIndex`: binary codes ({-1,+1}, {0,1} or bool, packed with
  :func:`commonspace.eval.hamming.pack_codes`), any ``faiss.index_binary_factory`` string ("BFlat",
  "BHNSW32", "BIVF256"); distance = Hamming.

Both keep their own int64 ids (faiss sees positions 0..n-1), so every factory accepts arbitrary unique ids,
and both save to ONE ``.npz`` file (the faiss-serialised index as bytes, the ids, JSON metadata; no pickle).
File format and factory strings: ``docs/index.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commonspace.data.dataset import DataError
from commonspace.data.io import atomic_write, read_npz, write_npz
from commonspace.eval.hamming import _bits, packed_codes

__all__ = ["BinaryIndex", "EmbeddingIndex", "METRICS", "load_index"]

METRICS = ("cosine", "ip", "l2")
FORMAT = "commonspace-index"
VERSION = 1
#: faiss recommends at least this many training points per IVF list (it warns below it)
_IVF_POINTS_PER_LIST = 39


def _faiss():
    import faiss

    return faiss


def _numpy(x: object, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc})") from exc


def _check_ids(ids: object, n: int, start: int) -> np.ndarray:
    if ids is None:
        return np.arange(start, start + n, dtype=np.int64)
    a = _numpy(ids, "ids").reshape(-1)
    if a.size != n:
        raise DataError(f"got {a.size} ids for {n} vectors; give one id per vector")
    if a.size and a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise DataError(f"ids must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise DataError("ids must be >= 0 (-1 marks 'no result' in search output)")
    u, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"ids are not unique: {u[counts > 1][:5].tolist()} appear more than once")
    return a


class _Index:
    """Shared machinery: id bookkeeping, search_by_id, save/load. Subclasses wrap one faiss index."""

    kind = ""

    def __init__(self, index: Any, ids: np.ndarray, meta: dict) -> None:
        self._index = index
        self._ids = ids
        self.meta = meta
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None

    # ---------------------------------------------------------- properties
    @property
    def faiss_index(self) -> Any:
        """The wrapped faiss index (positions 0..n-1 are the rows of :attr:`ids`)."""
        return self._index

    @property
    def ids(self) -> np.ndarray:
        return self._ids.copy()

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def factory(self) -> str:
        return self.meta["factory"]

    @property
    def modalities(self) -> list[str] | None:
        return self.meta.get("modalities")

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    @property
    def higher_is_better(self) -> bool:
        """True when search values are similarities (cosine, ip), False for distances (l2, hamming)."""
        return self.meta["metric"] in ("cosine", "ip")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(factory={self.factory!r}, metric={self.meta['metric']!r}, "
                f"dim={self.meta['dim']}, ntotal={self.ntotal})")

    # ------------------------------------------------------------- hooks
    def _prep(self, x: object, what: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw_search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._index.search(x, k)
        except (RuntimeError, TypeError, OverflowError) as exc:  # faiss's SWIG/C++ text is no message
            raise DataError(f"searching the {self.factory!r} index failed: {_faiss_msg(exc)}") from exc

    def _missing_value(self) -> float | int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _enable_reconstruct(self) -> None:
        """IVF indexes reconstruct only through a direct map (position -> list entry); make one."""
        ivf = self._ivf()
        if ivf is not None and ivf.direct_map.type == 0:
            ivf.make_direct_map()

    def _ivf(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------ adding
    def _train_and_add(self, x: np.ndarray, train: np.ndarray | None, ids: np.ndarray) -> None:
        if not self._index.is_trained:
            t = x if train is None else train
            self._check_train_size(t.shape[0], from_vectors=train is None)
            try:
                self._index.train(t)
            except RuntimeError as exc:
                raise DataError(f"training the {self.factory!r} index failed: {_faiss_msg(exc)}") from exc
        if x.shape[0]:
            self._add(x, ids)

    def _check_train_size(self, n: int, from_vectors: bool) -> None:
        ivf = self._ivf()
        src = "vectors" if from_vectors else "train_vectors"
        if ivf is not None and n < ivf.nlist:
            fewer = max(1, n // _IVF_POINTS_PER_LIST)
            raise DataError(
                f"index {self.factory!r} has {ivf.nlist} IVF lists and must be trained on at least {ivf.nlist} "
                f"{src} (faiss recommends >= {_IVF_POINTS_PER_LIST * ivf.nlist}); got {n}. Pass more "
                f"train_vectors= or use fewer lists (about {fewer} for {n} vectors)")
        if n == 0:
            raise DataError(f"index {self.factory!r} needs training and there are no vectors; pass train_vectors=")

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not self._index.is_trained:
            raise DataError(f"index {self.factory!r} is not trained; build it with vectors or train_vectors first")
        self._index.add(x)
        self._ids = np.concatenate([self._ids, ids]) if self._ids.size else ids
        self._lookup = None

    def add(self, x: object, ids: object = None) -> None:
        """Append vectors (codes) with their ids (default: max existing id + 1 onward)."""
        self._add_checked(self._prep(x, "vectors"), ids)

    def _add_checked(self, x: np.ndarray, ids: object) -> None:
        start = int(self._ids.max()) + 1 if self._ids.size else 0
        ids = _check_ids(ids, x.shape[0], start)
        clash = np.intersect1d(ids, self._ids)
        if clash.size:
            raise DataError(f"ids already in the index: {clash[:5].tolist()}; ids must be unique")
        if x.shape[0]:
            self._add(x, ids)

    # ----------------------------------------------------------- search
    def search(self, queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(values, ids)``, each (Q, min(k, ntotal)).

        Values are similarities (cosine, ip: descending) or distances (squared L2, Hamming: ascending).
        An approximate index may find fewer than k items (e.g. IVF with a small nprobe): id -1, value
        -inf (similarities), +inf (l2) or ``bits + 1`` (Hamming).
        """
        x = self._prep(queries, "queries")
        return self._search_prepared(x, k)

    def _search_prepared(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            raise DataError("the index is empty; add vectors before searching")
        k = _check_k(k)
        k = min(k, self.ntotal)
        vals, pos = self._raw_search(x, k)
        missing = pos < 0
        ids = np.where(missing, -1, self._ids[np.where(missing, 0, pos)])
        if missing.any():
            vals = vals.copy()
            vals[missing] = self._missing_value()
        return vals, ids

    def positions(self, ids: object) -> np.ndarray:
        """Row positions of the given ids in the index; an error names ids that are not stored."""
        q = _id_array(ids, "ids")
        if self._lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._lookup = (order, self._ids[order])
        order, sorted_ids = self._lookup
        at = np.searchsorted(sorted_ids, q).clip(max=max(0, sorted_ids.size - 1))
        found = (sorted_ids.size > 0) & (sorted_ids[at] == q) if sorted_ids.size else np.zeros(q.shape, bool)
        if not np.all(found):
            held = (f"it holds {sorted_ids.size} ids from {int(sorted_ids[0])} to {int(sorted_ids[-1])}"
                    if sorted_ids.size else "it is empty")
            raise DataError(f"ids not in the index: {q[~found][:5].tolist()}; {held}")
        return order[at]

    def reconstruct(self, ids: object) -> np.ndarray:
        """Stored vectors (float: L2-normalised for cosine) or packed codes (binary) of the given ids."""
        pos = self.positions(ids)
        self._enable_reconstruct()
        try:
            return np.stack([self._index.reconstruct(int(p)) for p in pos]) if pos.size else \
                self._empty_rows()
        except RuntimeError as exc:
            raise DataError(f"index {self.factory!r} cannot reconstruct stored vectors, so it cannot search by "
                            f"id ({_faiss_msg(exc)}); query with the vectors instead") from exc

    def _empty_rows(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def search_by_id(self, item_id: int | Sequence[int], k: int, exclude_self: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Search with stored items as queries (their reconstructed vectors); ``(values, ids)`` (Q, k).

        The item itself is normally the first hit; ``exclude_self=True`` drops it (k results remain).
        For lossy encodings (PQ, SQ) the query is the reconstruction, so it is approximate.
        """
        k = _check_k(k)  # before the lookup: k=0 is not "the index holds only that item"
        q_ids = _id_array(item_id, "item_id")
        if q_ids.size == 0:
            raise DataError("no stored item to query by: give at least one id (CLI: --ids 3,17)")
        x = self.reconstruct(q_ids)
        if not exclude_self:
            return self._search_prepared(x, k)
        if self.ntotal < 2:
            raise DataError(f"the index holds only item {int(self._ids[0])}, and a query by id leaves the item "
                            "itself out (API: exclude_self=True): no neighbour is left; add items, or query by "
                            "vector (--queries)")
        k = min(k, self.ntotal - 1)
        vals, ids = self._search_prepared(x, k + 1)
        keep = ids != q_ids[:, None]
        # rows where the item was not found among k+1 keep their first k hits
        keep[keep.sum(1) > k, k] = False
        return vals[keep].reshape(len(q_ids), k), ids[keep].reshape(len(q_ids), k)

    # ------------------------------------------------------------- tuning
    def _check_search_params(self, nprobe: object, ef_search: object) -> tuple[int | None, int | None]:
        """Both as ints faiss can take (size_t / int): anything else gets its C++ signature as the message."""
        if nprobe is not None:
            ivf = self._ivf()
            if ivf is None:
                raise DataError(f"nprobe applies to IVF indexes; {self.factory!r} is not one")
            nprobe = _check_count(nprobe, "nprobe (CLI: --nprobe)", 2**63 - 1,
                                  f"(the index has {ivf.nlist} lists; nprobe={ivf.nlist} visits them all)")
        if ef_search is not None:
            if self._hnsw() is None:
                raise DataError(f"ef_search applies to HNSW indexes; {self.factory!r} is not one")
            ef_search = _check_count(ef_search, "ef_search", 2**31 - 1, "(HNSW's candidate list: 16 to 512 is "
                                     "usual)")
        return nprobe, ef_search

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """IVF ``nprobe`` (lists visited) and HNSW ``efSearch`` (candidate list size); saved with the index."""
        nprobe, ef_search = self._check_search_params(nprobe, ef_search)
        if nprobe is not None:
            self._ivf().nprobe = nprobe
            self.meta["nprobe"] = nprobe
        if ef_search is not None:
            self._hnsw().efSearch = ef_search
            self.meta["ef_search"] = ef_search

    def _hnsw(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- io
    def _serialize(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index as one ``.npz`` (faiss bytes, ids, JSON metadata), atomically."""
        meta = dict(self.meta, format=FORMAT, version=VERSION, kind=self.kind, ntotal=self.ntotal)
        arrays = {"faiss_index": self._serialize(), "ids": self._ids,
                  "meta": np.array(json.dumps(meta, default=str), dtype=str)}
        # uncompressed: float vectors barely compress and a 256 MB index would take seconds to deflate
        needed = sum(a.nbytes for a in arrays.values()) + 4096  # for the one-line message on a full disk
        return atomic_write(path, lambda fh: write_npz(fh, arrays, compress=False), needed)

    @classmethod
    def load(cls, path: str | os.PathLike) -> _Index:
        """Read an index written by :meth:`save`; the class must match the file's kind."""
        idx = load_index(path)
        if not isinstance(idx, cls):
            raise DataError(f"{path}: holds a {type(idx).__name__}, not a {cls.__name__}; use load_index")
        return idx


def _faiss_msg(exc: BaseException) -> str:
    """The useful last line of a faiss C++ error, without SWIG's signature text."""
    import re

    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = lines[-1] if lines else str(exc)
    msg = msg.split(": Error: ")[-1] if ": Error: " in msg else msg
    # "in method 'IndexFlat_search', argument 3 of type 'faiss::idx_t'": C++ names, no use to the reader
    sig = re.search(r"in method '\w+', argument \d+ of type '([^']+)'", msg)
    if sig:
        what = "a value out of range" if isinstance(exc, OverflowError) else "an argument of the wrong type"
        return f"faiss got {what} (it expects {sig.group(1).replace('faiss::', '')})"
    return msg or type(exc).__name__


def _whole(v: object) -> int | None:
    """``v`` as an int when it is a whole number (10 or 10.0, not True or 1.5), else None."""
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    return int(v) if isinstance(v, float | np.floating) and float(v).is_integer() else None


def _check_k(k: object) -> int:
    """``k`` as a positive int; the CLI option is ``--k``."""
    kk = _whole(k)
    if kk is None or kk < 1:
        raise DataError(f"k (CLI: --k) must be an integer >= 1, got {k!r}")
    return kk


def _check_count(v: object, name: str, top: int, hint: str) -> int:
    """A faiss search parameter: an integer in [1, top]."""
    vv = _whole(v)
    if vv is None or not 1 <= vv <= top:
        raise DataError(f"{name} must be an integer from 1 to {top}, got {v!r} {hint}")
    return vv


def _id_array(ids: object, what: str) -> np.ndarray:
    """Query ids as int64: integers only (1.5 is not rounded to 1), and within int64."""
    try:
        a = np.atleast_1d(_numpy(ids, what)).reshape(-1)
    except OverflowError as exc:
        raise DataError(f"{what}: ids must be integers from 0 to {2**63 - 1}") from exc
    if a.size and a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.size and a.dtype.kind not in "iu":
        raise DataError(f"{what}: ids must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > 2**63 - 1:
        raise DataError(f"{what}: ids must be integers from 0 to {2**63 - 1}")
    return a.astype(np.int64)


class EmbeddingIndex(_Index):
    """Float embeddings in a faiss index; cosine = L2-normalise then inner product."""

    kind = "float"

    @classmethod
    def build(
        cls,
        vectors: object,
        ids: object = None,
        factory: str = "Flat",
        metric: str = "cosine",
        train_vectors: object = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        *,
        modalities: Sequence[str] | None = None,
        model: str | None = None,
        meta: dict | None = None,
    ) -> EmbeddingIndex:
        """Index (N, d) ``vectors`` under ``ids`` (default 0..N-1) with a faiss factory string.

        ``train_vectors`` train IVF/PQ indexes (default: the vectors themselves). ``modalities`` and
        ``model`` record where the vectors came from (saved in the file); ``meta`` adds JSON-able fields.
        """
        faiss = _faiss()
        if metric not in METRICS:
            raise DataError(f"unknown metric {metric!r}; use one of {METRICS}")
        x = _float_rows(vectors, "vectors", None, metric)
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(x.shape[1], str(factory), fmetric)
        except RuntimeError as exc:
            raise DataError(f"faiss cannot build {factory!r} with metric {metric!r}: {_faiss_msg(exc)}. "
                            "See docs/index.md for factory strings") from exc
        m = {"factory": str(factory), "metric": metric, "dim": int(x.shape[1]),
             "modalities": list(modalities) if modalities is not None else None, "model": model,
             "extra": dict(meta or {})}
        self = cls(index, np.zeros(0, np.int64), m)
        self._check_search_params(nprobe, ef_search)  # before training: a refusal costs nothing
        t = None if train_vectors is None else _float_rows(train_vectors, "train_vectors", x.shape[1], metric)
        self._train_and_add(x, t, _check_ids(ids, x.shape[0], 0))
        self.set_search_params(nprobe, ef_search)
        return self

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    def _prep(self, x: object, what: str) -> np.ndarray:
        return _float_rows(x, what, self.dim, self.metric)

    def _missing_value(self) -> float:
        return float("inf") if self.metric == "l2" else float("-inf")

    def _empty_rows(self) -> np.ndarray:
        return np.zeros((0, self.dim), np.float32)

    def _ivf(self) -> Any:
        try:
            return _faiss().extract_index_ivf(self._index)
        except RuntimeError:
            return None

    def _hnsw(self) -> Any:
        idx = _faiss().downcast_index(self._index)
        return getattr(idx, "hnsw", None)

    def _serialize(self) -> np.ndarray:
        return _faiss().serialize_index(self._index)


def _float_rows(x: object, what: str, dim: int | None, metric: str) -> np.ndarray:
    """(N, d) C-contiguous float32, finite, checked against the index dimension; normalised for cosine."""
    a = _numpy(x, what)
    if a.ndim == 1 and dim is not None and a.size == dim:
        a = a[None, :]  # one query vector
    if a.ndim != 2:
        raise DataError(f"{what} must be a 2-D (N, d) array, got shape {a.shape}")
    if a.dtype.kind not in "iuf":
        raise DataError(f"{what} must be numeric, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise DataError(f"index holds {dim}-d vectors, got {a.shape[1]}-d {what}")
    if a.shape[1] == 0:
        raise DataError(f"{what} have 0 dimensions")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{what} contain NaN or inf")
    if metric == "cosine":
        # divide by max(norm, eps) like torch's normalize: zero vectors stay zero (similarity 0, not NaN)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a


class BinaryIndex(_Index):
    """Binary codes in a faiss binary index; distance = Hamming (ties in faiss order, see docs/index.md)."""

    kind = "binary"

    @classmethod
    def build(
        cls,
        codes: object,
        ids: object = None,
        factory: str = "BFlat",
        train_codes: object = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        *,
        packed: bool = False,
        n_bits: int | None = None,
        modalities: Sequence[str] | None = None,
        model: str | None = None,
        meta: dict | None = None,
    ) -> BinaryIndex:
        """Index (N, K) {-1,+1}/{0,1}/bool ``codes`` (or packed uint8 with ``packed=True``).

        faiss needs whole bytes: K bits are padded with zero bits to a multiple of 8, which changes no
        Hamming distance. ``factory`` is a ``faiss.index_binary_factory`` string: "BFlat", "BHNSW32",
        "BIVF256" (needs training: ``train_codes`` or the codes themselves).
        """
        faiss = _faiss()
        c, bits = _code_rows(codes, "codes", None, packed, n_bits)
        try:
            index = faiss.index_binary_factory(8 * c.shape[1], str(factory))
        except RuntimeError as exc:
            raise DataError(f"faiss cannot build binary index {factory!r}: {_faiss_msg(exc)}. Binary factories "
                            "start with B: 'BFlat', 'BHNSW32', 'BIVF256'") from exc
        m = {"factory": str(factory), "metric": "hamming", "dim": int(8 * c.shape[1]), "bits": int(bits),
             "modalities": list(modalities) if modalities is not None else None, "model": model,
             "extra": dict(meta or {})}
        self = cls(index, np.zeros(0, np.int64), m)
        self._check_search_params(nprobe, ef_search)  # before training: a refusal costs nothing
        t = None
        if train_codes is not None:
            t, _ = _code_rows(train_codes, "train_codes", self, packed, n_bits)
        self._train_and_add(c, t, _check_ids(ids, c.shape[0], 0))
        self.set_search_params(nprobe, ef_search)
        return self

    @property
    def bits(self) -> int:
        """Code length K (before padding to whole bytes)."""
        return int(self.meta["bits"])

    @property
    def dim(self) -> int:
        return self.bits

    @property
    def metric(self) -> str:
        return "hamming"

    def _prep(self, x: object, what: str) -> np.ndarray:
        return _code_rows(x, what, self, False, None)[0]

    def search(self, queries: object, k: int, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(hamming distances int32, ids)``; queries as unpacked codes or packed with ``packed=True``."""
        return self._search_prepared(_code_rows(queries, "queries", self, packed, None)[0], k)

    def add(self, codes: object, ids: object = None, packed: bool = False) -> None:
        """Append codes (unpacked, or packed uint8 with ``packed=True``) with their ids."""
        self._add_checked(_code_rows(codes, "codes", self, packed, None)[0], ids)

    def _missing_value(self) -> int:
        return self.bits + 1

    def _empty_rows(self) -> np.ndarray:
        return np.zeros((0, self.dim // 8), np.uint8)

    def _ivf(self) -> Any:
        idx = _faiss().downcast_IndexBinary(self._index)
        return idx if hasattr(idx, "nlist") else None

    def _hnsw(self) -> Any:
        idx = _faiss().downcast_IndexBinary(self._index)
        return getattr(idx, "hnsw", None)

    def _serialize(self) -> np.ndarray:
        return _faiss().serialize_index_binary(self._index)


def _code_rows(x: object, what: str, index: BinaryIndex | None, packed: bool, n_bits: int | None
               ) -> tuple[np.ndarray, int]:
    """Packed uint8 (N, bytes) codes and their bit count, checked against the index's code length."""
    if packed:
        p = _numpy(x, what)
        if p.ndim == 1:
            p = p[None, :]
        if n_bits is None and index is not None and p.ndim == 2 and p.shape[1] * 8 == index.meta["dim"]:
            n_bits = index.bits  # packed queries/additions: their padding must be zero too
        p, bits = packed_codes(p, n_bits, what)
    else:
        a = _numpy(x, what)
        if a.ndim == 1:
            a = a[None, :]
        b = _bits(a, what)
        bits = b.shape[1]
        p = np.packbits(b, axis=1, bitorder="big")
    if index is not None:
        if p.shape[1] * 8 != index.meta["dim"] or bits != index.bits:
            raise DataError(f"index holds {index.bits}-bit codes, got {bits}-bit {what}")
    if p.shape[1] == 0:
        raise DataError(f"{what} have 0 bits")
    return np.ascontiguousarray(p), bits


def load_index(path: str | os.PathLike) -> EmbeddingIndex | BinaryIndex:
    """Read a file written by ``EmbeddingIndex.save`` / ``BinaryIndex.save``; returns the right class."""
    faiss = _faiss()
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: index file not found")
    z = read_npz(p, "index file")
    if not {"faiss_index", "ids", "meta"} <= set(z):
        raise DataError(f"{p}: not a commonspace index file (arrays {sorted(z)}); "
                        "build one with EmbeddingIndex.build(...).save(path)")
    try:
        raw, ids, meta = z["faiss_index"], z["ids"].astype(np.int64), json.loads(str(z["meta"]))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{p}: not a readable index file ({exc})") from exc
    from commonspace.data.meta import check_index

    meta = check_index(meta, p, format=FORMAT, version=VERSION)  # every key the index reads, typed, by kind
    kind = meta.pop("kind")
    ntotal = meta.pop("ntotal")
    for key in ("format", "version"):
        meta.pop(key, None)
    try:
        if kind == "float":
            idx: _Index = EmbeddingIndex(faiss.deserialize_index(raw), ids, meta)
        elif kind == "binary":
            idx = BinaryIndex(faiss.deserialize_index_binary(raw), ids, meta)
        else:
            raise DataError(f"{p}: unknown index kind {kind!r}")
    except RuntimeError as exc:
        raise DataError(f"{p}: the faiss index bytes are damaged ({_faiss_msg(exc)})") from exc
    if idx.ntotal != ntotal or ids.size != ntotal:
        raise DataError(f"{p}: holds {idx.ntotal} vectors and {ids.size} ids, metadata says {ntotal}")
    # search parameters are runtime settings in some faiss versions: re-apply what was chosen
    idx.set_search_params(meta.get("nprobe"), meta.get("ef_search"))
    return idx

