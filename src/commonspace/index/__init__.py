"""Nearest-neighbour indexes (FAISS) over embeddings and binary codes, plus the file-level helpers behind
``commonspace index build`` / ``commonspace index query``. See docs/index.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from commonspace.data.dataset import DataError
from commonspace.index.faiss_index import METRICS, BinaryIndex, EmbeddingIndex, load_index

__all__ = ["METRICS", "BinaryIndex", "EmbeddingIndex", "build_index_from_file", "load_index", "query_index"]


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
) -> EmbeddingIndex | BinaryIndex:
    """Index one array of an embeddings file (``commonspace embed`` output) and save the index to ``out_path``.

    ``key``: "joint", "enc_<modality>", or "codes" (binary codes -> :class:`BinaryIndex`; ``factory``
    "Flat" then means "BFlat" and ``metric`` is ignored). ``ids_key`` names the id array (default "index",
    the dataset row of each item; None: row positions). For ``enc_<m>`` only the rows where modality ``m``
    is present (``mask`` column) are indexed when ``present_only`` (missing rows are zero vectors).
    """
    from commonspace.data.io import load_embeddings

    arrays, meta = load_embeddings(emb_path)
    if key not in arrays:
        raise DataError(f"{emb_path}: no array {key!r}; it has {sorted(arrays)}. Pass key=joint, enc_<modality> "
                        "or codes")
    x = arrays[key]
    if ids_key is None:
        ids = np.arange(x.shape[0], dtype=np.int64)
    elif ids_key not in arrays:
        raise DataError(f"{emb_path}: no id array {ids_key!r}; it has {sorted(arrays)}. Pass ids_key=None to "
                        "use row positions")
    else:
        ids = arrays[ids_key]
    mods = [str(m) for m in meta.get("modalities", [])] or None
    modalities = mods
    if key.startswith("enc_"):
        modalities = [key[4:]]
        if present_only and "mask" in arrays and mods and key[4:] in mods:
            keep = np.asarray(arrays["mask"], bool)[:, mods.index(key[4:])]
            x, ids = x[keep], np.asarray(ids)[keep]
    common = dict(ids=ids, nprobe=nprobe, ef_search=ef_search, modalities=modalities, model=meta.get("model"),
                  meta={"source": str(emb_path), "key": key, "split": meta.get("split")})
    if key == "codes":
        bfactory = "BFlat" if factory == "Flat" else factory
        idx: EmbeddingIndex | BinaryIndex = BinaryIndex.build(x, factory=bfactory, **common)
    else:
        idx = EmbeddingIndex.build(x, factory=factory, metric=metric, **common)
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
