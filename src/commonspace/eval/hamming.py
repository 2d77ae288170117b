"""Retrieval with binary codes: packing, Hamming distance, and the hashing metrics.

Definitions (written out in ``docs/metrics.md``, section "Hamming retrieval"):

* codes are ``(N, K)`` arrays/tensors in ``{-1, +1}``, ``{0, 1}`` or bool; bit ``= 1`` iff the value is
  ``> 0`` (so ``+1``/``1``/``True`` are set bits). :func:`pack_codes` stores them with ``np.packbits``
  (big-endian within a byte: bit ``j`` is bit ``7 - j % 8`` of byte ``j // 8``; the padding bits are 0);
* the ranking is by ascending Hamming distance, **ties broken by database index** (the one documented
  tie-breaking of :mod:`commonspace.eval.retrieval`, which ranks ``scores = -distance``);
* MAP, MAP@K and P@K are exactly those of :func:`~commonspace.eval.retrieval.retrieval_metrics`; queries
  with no relevant item are excluded and counted;
* "within radius r" means Hamming distance ``<= r``; a query that retrieves nothing within the radius has
  precision 0 (``empty="zero"``, counted in ``"empty_queries"``) or is skipped (``empty="skip"``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import DataError
from commonspace.data.labels import pair_relevance
from commonspace.eval.retrieval import _check_exclude, _check_labels, retrieval_metrics

__all__ = [
    "hamming_distance",
    "hamming_metrics",
    "pack_codes",
    "packed_codes",
    "pr_curve",
    "precision_at_n",
    "unpack_codes",
]

#: elements of one (queries x database) distance chunk (~16M int32 = 64 MB)
_CHUNK_ELEMENTS = 1 << 24
# popcount of every byte value: the fallback when numpy has no bitwise_count (numpy < 2.0)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _numpy(x: object, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc})") from exc


def _bits(codes: object, what: str) -> np.ndarray:
    """(N, K) bool bits from {-1,+1}, {0,1} or bool codes; anything else is an error."""
    c = _numpy(codes, what)
    if c.ndim != 2:
        raise DataError(f"{what} must be an (N, K) array of codes, got shape {c.shape}")
    if c.dtype == bool:
        return c
    if c.dtype.kind not in "iuf":
        raise DataError(f"{what} has dtype {c.dtype}; pass {{-1,+1}}, {{0,1}} or boolean codes")
    neg, zero, one = c == -1, c == 0, c == 1
    if not np.all(neg | zero | one):
        raise DataError(f"{what} holds values other than -1, 0 and 1; binarise first, e.g. codes = h > 0 "
                        "or torch.sign(h) with zeros mapped to +1")
    if neg.any() and zero.any():
        # sign() of an exact 0 gives 0: a {-1,+1} code with a 0 in it has no defined bit
        raise DataError(f"{what} mixes -1 and 0; use {{-1,+1}} or {{0,1}} codes, not both "
                        "(torch.sign maps 0 to 0: use torch.where(h >= 0, 1, -1))")
    return one


def pack_codes(codes: object) -> np.ndarray:
    """Pack (N, K) {-1,+1}/{0,1}/bool codes into uint8 (N, ceil(K/8)), bit j -> byte j//8, bit 7 - j%8."""
    return np.packbits(_bits(codes, "codes"), axis=1, bitorder="big")


def unpack_codes(packed: object, n_bits: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_codes`: (N, n_bits) uint8 {0,1} codes, or int8 {-1,+1} with ``signed=True``.

    ``n_bits`` and the padding are checked as in :func:`packed_codes` (no set bit is dropped silently).
    """
    p, n_bits = packed_codes(packed, n_bits, "packed")
    bits = np.unpackbits(p, axis=1, count=n_bits, bitorder="big")
    return (2 * bits.astype(np.int8) - 1) if signed else bits


def _packed(x: object, what: str) -> np.ndarray:
    p = _numpy(x, what)
    if p.ndim != 2 or p.dtype != np.uint8:
        raise DataError(f"{what} must be packed codes: a uint8 (N, bytes) array from pack_codes, got "
                        f"{p.dtype} {p.shape}")
    return p


def packed_codes(x: object, n_bits: int | None, what: str = "packed") -> tuple[np.ndarray, int]:
    """Checked packed codes: the uint8 (N, B) array and its code length K (``n_bits``, default ``8 * B``).

    K must fill the last byte, ``8 * B - 7 <= K <= 8 * B``, and the padding bits beyond K must be zero (as
    :func:`pack_codes` writes them): set padding bits would count in every Hamming distance. The one check
    used by the metrics here and by :class:`commonspace.index.BinaryIndex`.
    """
    p = _packed(x, what)
    nb = p.shape[1]
    if n_bits is None:
        return p, 8 * nb
    try:
        k = operator.index(n_bits)  # an int, not 60.5 silently truncated
    except TypeError as exc:
        raise DataError(f"n_bits must be an integer, got {n_bits!r}") from exc
    if not max(0, 8 * nb - 7) <= k <= 8 * nb:
        fit = f"{8 * nb - 7}..{8 * nb}" if nb else "0"
        raise DataError(f"n_bits={k} does not match {nb} bytes per code in {what} (fits {fit} bits); pass the "
                        "code length the codes were packed with, or repack with pack_codes")
    pad = 8 * nb - k
    if pad:
        # big-endian bits: the padding is the low ``pad`` bits of the last byte
        bad = np.flatnonzero(p[:, -1] & np.uint8((1 << pad) - 1))
        if bad.size:
            raise DataError(f"{what}: {bad.size} rows (first {bad[:5].tolist()}) have non-zero padding bits "
                            f"beyond n_bits={k}; pack with pack_codes, or zero them with "
                            f"codes[:, -1] &= 0x{(0xFF << pad) & 0xFF:02X}")
    return p, k


def _words(p: np.ndarray) -> np.ndarray:
    """(N, W) uint64 words of packed codes (zero-padded to 8 bytes): one XOR + popcount per 64 bits."""
    nb = p.shape[1]
    w = -(-nb // 8)
    if nb != 8 * w:
        p = np.concatenate([p, np.zeros((p.shape[0], 8 * w - nb), np.uint8)], axis=1)
    return np.ascontiguousarray(p).view(np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def _distance_words(qw: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """(Q, D) int32 Hamming distances between uint64-word codes; one (Q, D) pass per word."""
    out = np.zeros((qw.shape[0], dw.shape[0]), dtype=np.int32)
    for j in range(qw.shape[1]):
        out += _popcount(np.bitwise_xor(qw[:, j, None], dw[None, :, j]))
    return out


def hamming_distance(q_packed: object, db_packed: object, chunk_size: int | None = None) -> np.ndarray:
    """(Q, D) int32 Hamming distances between packed codes (uint8, from :func:`pack_codes`).

    Chunked over queries (``chunk_size`` rows at a time) so temporaries stay ~64 MB.
    """
    q, d = _packed(q_packed, "q_packed"), _packed(db_packed, "db_packed")
    if q.shape[1] != d.shape[1]:
        raise DataError(f"query codes have {q.shape[1]} bytes but database codes {d.shape[1]}; "
                        "pack codes of the same length")
    qw, dw = _words(q), _words(d)
    cs = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, d.shape[0]))
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    for s in range(0, q.shape[0], cs):
        out[s:s + cs] = _distance_words(qw[s:s + cs], dw)
    return out


# ------------------------------------------------------------------ metrics
def _prepare(q_codes: object, db_codes: object, packed: bool, n_bits: int | None) -> tuple[np.ndarray,
                                                                                         np.ndarray, int]:
    """Packed (Q, B), (D, B) codes and the code length K."""
    if packed:
        q, k = packed_codes(q_codes, n_bits, "q_codes")
        d, _ = packed_codes(db_codes, n_bits, "db_codes")
    else:
        qb, db = _bits(q_codes, "q_codes"), _bits(db_codes, "db_codes")
        if qb.shape[1] != db.shape[1]:
            raise DataError(f"q_codes have {qb.shape[1]} bits but db_codes {db.shape[1]}; use one code length")
        k = qb.shape[1]
        q, d = np.packbits(qb, axis=1), np.packbits(db, axis=1)
    if q.shape[1] != d.shape[1]:
        raise DataError(f"q_codes have {q.shape[1]} bytes but db_codes {d.shape[1]}; use one code length")
    if d.shape[0] == 0:
        raise DataError("the database is empty")
    return q, d, k


class _Chunks:
    """Walk the queries in chunks: Hamming distances and relevance (Q_chunk, D), the excluded item removed."""

    def __init__(self, q_codes: object, db_codes: object, q_labels: object, db_labels: object,
                 exclude_self: object, packed: bool, n_bits: int | None, chunk_size: int | None) -> None:
        q, d, self.n_bits = _prepare(q_codes, db_codes, packed, n_bits)
        self.nq, self.nd = q.shape[0], d.shape[0]
        self.qw, self.dw = _words(q), _words(d)
        # canonical labels go on to retrieval_metrics (they read back the same); 0/1 float32 copies of
        # multi-label indicators make the per-chunk relevance one matmul
        self.ql, self.dl, self.multi = _check_labels(q_labels, db_labels, self.nq, self.nd)
        self._qr, self._dr = self.ql, self.dl
        if self.multi:
            self._qr, self._dr = self.ql.to(torch.float32), self.dl.to(torch.float32)
        self.ex = _check_exclude(exclude_self, self.nq, self.nd)
        self.chunk = chunk_size or max(1, min(1024, _CHUNK_ELEMENTS // self.nd))

    def __iter__(self):
        for s in range(0, self.nq, self.chunk):
            e = min(self.nq, s + self.chunk)
            dist = _distance_words(self.qw[s:e], self.dw)
            rel = pair_relevance(self._qr[s:e], self._dr).numpy()
            ex = None
            if self.ex is not None:
                ex = self.ex[s:e]
                has = (ex >= 0).numpy()
                rows, cols = np.nonzero(has)[0], ex.numpy()[has]
                # the excluded item is beyond every radius and never relevant: it is out of the ranking
                dist[rows, cols] = self.n_bits + 1
                rel[rows, cols] = False
            yield s, e, dist, rel, ex


def _radius_counts(dist: np.ndarray, rel: np.ndarray, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, items and relevant items at each distance 0..K: two (Q, K+1) int64 count matrices."""
    m = dist.shape[0]
    # one bincount over (row, distance) cells; distance K+1 (the excluded item) falls in a dropped column
    flat = (np.arange(m, dtype=np.int64)[:, None] * (n_bits + 2) + dist).ravel()
    size = m * (n_bits + 2)
    every = np.bincount(flat, minlength=size).reshape(m, n_bits + 2)[:, :n_bits + 1]
    relev = np.bincount(flat, weights=rel.ravel(), minlength=size).reshape(m, n_bits + 2)[:, :n_bits + 1]
    return every, relev.astype(np.int64)


def _radius_pr(every: np.ndarray, relev: np.ndarray, r_count: np.ndarray, empty: str) -> tuple[np.ndarray, ...]:
    """Per-query precision and recall within each radius (columns), NaN precision where skipped."""
    ret = np.cumsum(every, axis=1)
    hit = np.cumsum(relev, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(ret > 0, hit / np.maximum(ret, 1), 0.0 if empty == "zero" else np.nan)
        rec = hit / np.maximum(r_count, 1)[:, None]
    return prec, rec, ret == 0


def _check_empty(empty: str) -> None:
    if empty not in ("zero", "skip"):
        raise DataError(f"empty must be 'zero' or 'skip', got {empty!r}")


def hamming_metrics(
    q_codes: object,
    db_codes: object,
    q_labels: object,
    db_labels: object,
    ks: Sequence[int] = (10,),
    map_at: Sequence[int] | None = None,
    radius: int | None = 2,
    exclude_self: Tensor | bool | None = None,
    *,
    empty: Literal["zero", "skip"] = "zero",
    packed: bool = False,
    n_bits: int | None = None,
    ap_at_k_norm: Literal["retrieved", "min"] = "retrieved",
    chunk_size: int | None = None,
) -> dict:
    """Hashing retrieval metrics of binary codes: MAP, MAP@K, P@K, and precision/recall within ``radius``.

    Codes are (N, K) {-1,+1}/{0,1}/bool (or packed uint8 with ``packed=True``; ``n_bits`` then defaults to
    8 x bytes, and is checked with the padding by :func:`packed_codes`). Ranking is by ascending Hamming
    distance, ties broken by database index. Relevance (the shared rule of :mod:`commonspace.data.labels`),
    the exclusion of queries with no relevant item and ``exclude_self`` are those of ``retrieval_metrics``.

    Returns ``{"p@K", "map@K", "map", "p@r<=R", "recall@r<=R", "empty_queries", "queries",
    "excluded_queries", "database", "bits"}``; ``empty_queries`` counts evaluated queries with nothing
    within the radius (precision 0 with ``empty="zero"``, left out of the radius precision with "skip").
    """
    _check_empty(empty)
    if radius is not None and radius < 0:
        raise DataError(f"radius must be >= 0, got {radius}")
    it = _Chunks(q_codes, db_codes, q_labels, db_labels, exclude_self, packed, n_bits, chunk_size)
    ks, map_at = list(ks), list(map_at or ())
    parts: dict[str, list[np.ndarray]] = {}
    for s, e, dist, rel, ex in it:
        # distances are small integers: exact in float32, so -distance ranks exactly as the distances
        res = retrieval_metrics(None, None, it.ql[s:e], it.dl, ks=ks, map_at=map_at,
                                scores=torch.from_numpy(-dist.astype(np.float32)), exclude_self=ex,
                                per_query=True, ap_at_k_norm=ap_at_k_norm)["per_query"]
        if radius is not None:
            r = min(radius, it.n_bits)
            within = dist <= r
            ret = within.sum(1)
            hit = (within & rel).sum(1)
            res["_ret"], res["_hit"] = ret, hit
        for key, v in res.items():
            parts.setdefault(key, []).append(np.asarray(v))
    pq = {key: np.concatenate(v) for key, v in parts.items()}
    ev = pq["evaluated"]
    n_eval = int(ev.sum())

    def mean(v: np.ndarray) -> float:
        v = v[ev]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    out: dict = {f"p@{k}": mean(pq[f"p@{k}"]) for k in ks}
    out.update({f"map@{k}": mean(pq[f"map@{k}"]) for k in map_at})
    out["map"] = mean(pq["ap"])
    if radius is not None:
        ret, hit = pq["_ret"], pq["_hit"].astype(np.float64)
        prec = np.where(ret > 0, hit / np.maximum(ret, 1), 0.0 if empty == "zero" else np.nan)
        out[f"p@r<={radius}"] = mean(prec)
        out[f"recall@r<={radius}"] = mean(hit / np.maximum(pq["relevant"], 1))
        out["empty_queries"] = int(((ret == 0) & ev).sum())
    out["queries"] = n_eval
    out["excluded_queries"] = it.nq - n_eval
    out["database"] = it.nd
    out["bits"] = it.n_bits
    return out


def pr_curve(
    q_codes: object,
    db_codes: object,
    q_labels: object,
    db_labels: object,
    exclude_self: Tensor | bool | None = None,
    *,
    empty: Literal["zero", "skip"] = "zero",
    packed: bool = False,
    n_bits: int | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Precision and recall within every Hamming radius r = 0..K (the hashing precision-recall curve).

    Per query: retrieved = items at distance <= r, precision = relevant retrieved / retrieved (0 when
    nothing is retrieved, or skipped with ``empty="skip"``), recall = relevant retrieved / R; both
    averaged over queries with R > 0. Returns ``{"radius", "precision", "recall", "empty_queries"
    (per radius), "queries", "excluded_queries", "database", "bits"}`` with (K+1,) arrays.
    """
    _check_empty(empty)
    it = _Chunks(q_codes, db_codes, q_labels, db_labels, exclude_self, packed, n_bits, chunk_size)
    nb = it.n_bits + 1
    p_sum, r_sum = np.zeros(nb), np.zeros(nb)
    p_n, n_empty = np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    n_eval = 0
    for _, _, dist, rel, _ in it:
        every, relev = _radius_counts(dist, rel, it.n_bits)
        r_count = rel.sum(1)
        ev = r_count > 0
        n_eval += int(ev.sum())
        prec, rec, emp = _radius_pr(every[ev], relev[ev], r_count[ev], empty)
        p_sum += np.nansum(prec, axis=0)
        p_n += (~np.isnan(prec)).sum(0)
        r_sum += rec.sum(0)
        n_empty += emp.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(p_n > 0, p_sum / np.maximum(p_n, 1), np.nan)
        recall = r_sum / n_eval if n_eval else np.full(nb, np.nan)
    return {"radius": np.arange(nb), "precision": precision, "recall": recall, "empty_queries": n_empty,
            "queries": n_eval, "excluded_queries": it.nq - n_eval, "database": it.nd, "bits": it.n_bits}


def precision_at_n(
    q_codes: object,
    db_codes: object,
    q_labels: object,
    db_labels: object,
    ns: Sequence[int] | None = None,
    exclude_self: Tensor | bool | None = None,
    *,
    packed: bool = False,
    n_bits: int | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Precision of the top N (ranked by Hamming distance, ties by index) for each N in ``ns``.

    ``ns`` defaults to 1, 100, 200, ... up to the database size (at most ~100 points). N is capped at the
    database size (minus the excluded item), as P@K in ``retrieval_metrics``. Returns
    ``{"n": (len(ns),) array, "precision": array, "queries", "excluded_queries", "database", "bits"}``.
    """
    it = _Chunks(q_codes, db_codes, q_labels, db_labels, exclude_self, packed, n_bits, chunk_size)
    if ns is None:
        step = max(1, -(-it.nd // 100))
        ns = sorted({1, *range(step, it.nd + 1, step), it.nd})
    ns = [int(n) for n in ns]
    if any(n < 1 for n in ns):
        raise DataError(f"every N must be >= 1, got {ns}")
    parts: dict[str, list[np.ndarray]] = {}
    for s, e, dist, _, ex in it:
        res = retrieval_metrics(None, None, it.ql[s:e], it.dl, ks=ns, scores=torch.from_numpy(-dist.astype(
            np.float32)), exclude_self=ex, per_query=True)["per_query"]
        for key, v in res.items():
            parts.setdefault(key, []).append(np.asarray(v))
    ev = np.concatenate(parts["evaluated"])
    n_eval = int(ev.sum())
    uniq = list(dict.fromkeys(ns))
    precision = np.array([np.concatenate(parts[f"p@{n}"])[ev].mean() if n_eval else np.nan for n in uniq])
    return {"n": np.array(uniq), "precision": precision, "queries": n_eval, "excluded_queries": it.nq - n_eval,
            "database": it.nd, "bits": it.n_bits}
