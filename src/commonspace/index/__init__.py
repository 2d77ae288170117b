"""Nearest-neighbour indexes (FAISS) over embeddings and binary codes, plus the file-level helpers behind
``commonspace index build`` / ``commonspace index query``. See docs/index.md."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from commonspace.data.dataset import DataError
from commonspace.index.faiss_index import METRICS, BinaryIndex, EmbeddingIndex, _check_ids, load_index

__all__ = ["METRICS", "BinaryIndex", "EmbeddingIndex", "build_index_from_file", "default_train_size", "load_index",
           "query_index"]


def _needs_training(factory: str, dim: int, binary: bool) -> tuple[bool, int | None]:
    """Whether a factory string gives an index that must be trained, and its IVF list count (None: no IVF)."""
    import faiss

    try:
        if binary:
            probe = faiss.index_binary_factory(8 * -(-dim // 8), str(factory))
            probe = faiss.downcast_IndexBinary(probe)
            return not probe.is_trained, getattr(probe, "nlist", None)
        probe = faiss.index_factory(dim, str(factory))
    except RuntimeError:
        return False, None  # the build below raises the one-line message for a bad factory string
    try:
        nlist = int(faiss.extract_index_ivf(probe).nlist)
    except RuntimeError:
        nlist = None
    return not probe.is_trained, nlist


def default_train_size(n: int, nlist: int | None) -> int:
    """Training rows for an index that needs training: 50 per IVF list, at least 65,536 (PQ codebooks), at most n."""
    return min(n, max(50 * (nlist or 0), 1 << 16))


def build_index_from_file(
    emb_path: str | os.PathLike,
    out_path: str | os.PathLike,
    key: str = "joint",
    factory: str = "Flat",
    metric: str = "cosine",
    ids_key: str | None = "index",
    *,
    present_only: bool = True,
    nprobe: int | None = None,
    ef_search: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    chunk_rows: int = 65536,
) -> EmbeddingIndex | BinaryIndex:
    """Index one array of an embeddings file (``commonspace embed`` output) and save the index to ``out_path``.

    ``key``: "joint", "enc_<modality>", or "codes" (binary codes -> :class:`BinaryIndex`; ``factory``
    "Flat" then means "BFlat" and ``metric`` is ignored). ``ids_key`` names the id array (default "index",
    the dataset row of each item; None: row positions). For ``enc_<m>`` only the rows where modality ``m``
    is present (``mask`` column) are indexed when ``present_only`` (missing rows are zero vectors).

    The array is read ``chunk_rows`` rows at a time (an embeddings folder is memory-mapped, so memory is the index
    plus one chunk). Indexes that need training (IVF, PQ) are trained on ``train_size`` rows drawn without
    replacement with ``seed`` (default :func:`default_train_size`), then every row is added.
    """
    from commonspace.data.io import load_embeddings

    arrays, meta = load_embeddings(emb_path)
    if key not in arrays:
        raise DataError(f"{emb_path}: no array {key!r}; it has {sorted(arrays)}. Choose --key (API: key=) joint, "
                        "enc_<modality> or codes")
    x = arrays[key]
    if x.ndim != 2:
        raise DataError(f"{emb_path}: array {key!r} has shape {x.shape}; an index takes (N, d) rows")
    if ids_key is None:
        ids = np.arange(x.shape[0], dtype=np.int64)
    elif ids_key not in arrays:
        raise DataError(f"{emb_path}: no id array {ids_key!r}; it has {sorted(arrays)}. Write the embeddings "
                        "with `commonspace embed` (it stores the rows' ids), or use row positions (API: "
                        "ids_key=None)")
    else:
        ids = np.asarray(arrays[ids_key])
    if ids.shape != (x.shape[0],):
        raise DataError(f"{emb_path}: {ids.shape} ids for {x.shape[0]} rows of {key!r}; the file is inconsistent")
    mods = [str(m) for m in meta.get("modalities", [])] or None
    modalities = mods
    rows = np.arange(x.shape[0])
    if key.startswith("enc_"):
        modalities = [key[4:]]
        if present_only and "mask" in arrays and mods and key[4:] in mods:
            rows = np.flatnonzero(np.asarray(arrays["mask"], bool)[:, mods.index(key[4:])])
    if rows.size == 0:
        raise DataError(f"{emb_path}: no row of {key!r} to index (its modality is missing everywhere)")
    ids = _check_ids(ids[rows], rows.size, 0)  # every chunk's ids at once: integers, >= 0, unique
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
    binary = key == "codes"
    bfactory = ("BFlat" if factory == "Flat" else factory) if binary else factory
    needs, nlist = _needs_training(bfactory, int(x.shape[1]), binary)
    train = None
    if needs:
        size = default_train_size(rows.size, nlist) if train_size is None else int(train_size)
        if not 1 <= size <= rows.size:
            raise DataError(f"train_size {size} must be between 1 and the {rows.size} rows to index (CLI: "
                            "--train-size)")
        if nlist is not None and size < nlist:  # said here, where the rows and --train-size are known
            more = (f" or sample more of the {rows.size} rows (--train-size; API: train_size=)"
                    if size < rows.size else "")
            fewer = re.sub(r"IVF\d+", f"IVF{max(1, size // 39)}", str(bfactory), count=1)
            raise DataError(f"index {bfactory!r} has {nlist} IVF lists and trains on {size} rows; it needs at least "
                            f"one row per list (faiss recommends 39): use fewer lists (--factory {fewer!r}){more}")
        pick = np.sort(np.random.default_rng(seed).choice(rows.size, size=size, replace=False))
        train = np.asarray(x[rows[pick]])  # sorted rows: sequential reads from a memory map
    common = dict(nprobe=nprobe, ef_search=ef_search, modalities=modalities, model=meta.get("model"),
                  meta={"source": str(emb_path), "key": key, "split": meta.get("split"),
                        "train_rows": None if train is None else int(train.shape[0]), "train_seed": seed})

    def chunk(s: int) -> np.ndarray:
        r = rows[s:s + chunk_rows]
        return np.asarray(x[r[0]:r[-1] + 1] if r[-1] - r[0] + 1 == r.size else x[r])

    first = chunk(0)
    if binary:
        idx: EmbeddingIndex | BinaryIndex = BinaryIndex.build(first, ids=ids[:first.shape[0]], factory=bfactory,
                                                              train_codes=train, **common)
    else:
        idx = EmbeddingIndex.build(first, ids=ids[:first.shape[0]], factory=factory, metric=metric,
                                   train_vectors=train, **common)
    del train
    for s in range(chunk_rows, rows.size, chunk_rows):
        part = chunk(s)
        idx._add(idx._prep(part, "vectors"), ids[s:s + part.shape[0]])  # ids checked above, all at once
    idx.save(Path(out_path))
    return idx


def query_index(
    index_path: str | os.PathLike | EmbeddingIndex | BinaryIndex,
    queries: np.ndarray | None = None,
    ids: Sequence[int] | None = None,
    k: int = 10,
    *,
    exclude_self: bool = False,
) -> list[dict]:
    """Search a saved index by query vectors (codes) or by stored ids; one dict per query.

    Each dict: ``{"query": row of queries or the query id, "by": "vector" | "id", "ids": [...],
    "values": [...], "measure": "cosine" | "ip" | "l2_squared" | "hamming"}``; values are similarities
    (descending) for cosine/ip and distances (ascending) otherwise. ``exclude_self`` (id queries) drops
    the query item from its own results.
    """
    idx = index_path if isinstance(index_path, EmbeddingIndex | BinaryIndex) else load_index(index_path)
    if (queries is None) == (ids is None):
        raise DataError("pass either queries (vectors or codes) or ids of stored items, not both / neither")
    if queries is not None:
        vals, hits = idx.search(queries, k)
        labels, by = list(range(hits.shape[0])), "vector"
    else:
        q = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        vals, hits = idx.search_by_id(q, k, exclude_self=exclude_self)
        labels, by = q, "id"
    measure = {"l2": "l2_squared"}.get(idx.metric, idx.metric)
    return [{"query": lab, "by": by, "ids": hits[i].tolist(), "values": vals[i].tolist(), "measure": measure}
            for i, lab in enumerate(labels)]
