"""Ranking metrics for (cross-modal) retrieval: P@K, mAP@K, MAP over the full ranking, R-precision.

Every definition is written out in ``docs/metrics.md``. In short, for one query with relevance ``rel(k)``
of the item at rank ``k`` (1-based, after exclusion) and ``R`` relevant items in the database:

* ``P@K  = (1/K) * sum_{k<=K} rel(k)``, with K capped at the database size (minus the excluded item);
* ``AP   = (1/R) * sum_k P@k * rel(k)`` over the full ranking; ``MAP`` is its mean over queries;
* ``AP@K = (1/R_K) * sum_{k<=K} P@k * rel(k)`` with ``R_K`` the relevant items among the top K
  (``ap_at_k_norm="retrieved"``, the DCMH / hashing convention) or ``min(R, K)`` (``"min"``);
* ``R-precision = P@R``.

Relevance is the one rule of :mod:`commonspace.data.labels`, the same the supervised losses train with:
equal class ids for ``(N,)`` labels (or an integer ``(N, 1)`` column), at least one shared label for bool
``(N, C)`` or 0/1 ``(N, C >= 2)`` indicators.

Ties in score are broken stably by database index (the lower index ranks first). Queries with no relevant
item in the database (``R = 0``) are left out of every metric and counted in ``excluded_queries``.

Similarities are one matmul per chunk of queries and each query's ranking is scored by a compiled kernel
(:mod:`commonspace.eval._rank_kernel`) that finds the rank of every relevant item without sorting the database,
so memory is bounded by ``chunk_size x database`` elements whatever the number of queries.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from commonspace.data.dataset import DataError
from commonspace.data.labels import canonical_labels, label_pair, pair_relevance

__all__ = ["similarity", "retrieval_metrics", "cross_modal_retrieval", "precision_ceiling", "METRICS"]

METRICS = ("cosine", "euclidean", "dot")
#: elements of one (queries x database) chunk when ``chunk_size`` is not given: 16M float32 scores (plus 5 bytes
#: each of relevance and label counts for multi-label data) per worker thread, about 67 MB per thread
_CHUNK_ELEMENTS = 1 << 24
#: the most query rows of one similarity matmul (:class:`_BlockScores`): larger blocks pack the database fewer
#: times (one-thread OpenBLAS, K = 128, D = 100k: 3.1 ns a score in blocks of 64 rows, 2.5 in blocks of 960)
_MAX_SCORE_ROWS = 256


def _score_rows(nd: int) -> int:
    """Query rows per similarity matmul against a database of ``nd`` items: a power of two, at most
    ``_MAX_SCORE_ROWS``, with a block of scores of at most ``_CHUNK_ELEMENTS``. It depends on ``nd`` alone, so the
    blocks, and with them the bits of every score, are the same in any chunking and on any number of threads."""
    return 1 << (max(1, min(_MAX_SCORE_ROWS, _CHUNK_ELEMENTS // max(nd, 1))).bit_length() - 1)


def _tensor(x: object, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc}); pass a numpy array or tensor") from exc


def _float(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def similarity(query: Tensor, database: Tensor, metric: str = "cosine") -> Tensor:
    """(Q, D) similarity, higher = more similar.

    ``cosine``: dot product of L2-normalised rows (a zero vector has similarity 0 to everything, no NaN);
    ``dot``: plain inner product; ``euclidean``: the negative Euclidean distance.
    """
    q = _float(_tensor(query, "query"))
    d = _float(_tensor(database, "database"))
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise DataError(f"query {tuple(q.shape)} and database {tuple(d.shape)} must be (Q, d) and (D, d) "
                        "with the same d")
    if q.dtype != d.dtype:
        q, d = q.to(torch.float64), d.to(torch.float64)
    if metric == "cosine":
        # normalize divides by max(norm, eps): a zero row stays zero, so its similarities are 0, not NaN
        return F.normalize(q, dim=1) @ F.normalize(d, dim=1).T
    if metric == "dot":
        return q @ d.T
    if metric == "euclidean":
        # |q|^2 + |d|^2 - 2 q.d through one matmul; clamp because rounding can make it slightly negative
        d2 = (q * q).sum(1, keepdim=True) + (d * d).sum(1) - 2.0 * (q @ d.T)
        return d2.clamp_min_(0.0).sqrt_().neg_()
    raise DataError(f"unknown metric {metric!r}; use one of {METRICS}")


def _class_index(classes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Position of each of ``q`` in the sorted, non-empty ``classes``; -1 where it is not there."""
    pos = np.searchsorted(classes, q).clip(max=classes.size - 1)
    return np.where(classes[pos] == q, pos, -1)


def _class_codes(ql: Tensor, dl: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Dense int32 codes of database class ids, and each query's code (-1: a class no database item has)."""
    classes, dcode = np.unique(dl.cpu().numpy(), return_inverse=True)  # a non-empty database: >= 1 class
    return _class_index(classes, ql.cpu().numpy()).astype(np.int32), dcode.astype(np.int32).reshape(-1)


_BLAS: list = []  # threadpoolctl's view of the BLAS libraries, found once (0.6 ms a lookup otherwise)


def _one_blas_thread():  # noqa: ANN202 - threadpoolctl's context manager
    """A context in which BLAS runs on one thread."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


class _BlockScores:
    """Similarities of query rows to the whole database, one fixed-shape matmul per block of ``_score_rows(D)`` rows.

    Every matmul has the same shape (the last block zero-padded) and starts at a multiple of the block, so a
    score's bits depend on the inputs alone, not on the chunking or the number of threads: OpenBLAS chooses its
    kernels by shape, and on some CPUs (an AVX-512 EPYC here) it rounds the rows of one call differently by their
    place in it. ``cosine`` arrives normalised, as ``dot``; ``euclidean`` is ``-sqrt(max(|q|^2 + |d|^2 - 2 q.d, 0))``.
    """

    def __init__(self, query: Tensor, database: Tensor, metric: str) -> None:
        q, d = _float(query), _float(database)
        self.dtype = np.float64 if torch.float64 in (q.dtype, d.dtype) else np.float32
        self.q = q.cpu().numpy().astype(self.dtype, copy=False)
        self.dt = d.cpu().numpy().astype(self.dtype, copy=False).T
        self.rows = _score_rows(self.dt.shape[1])
        self.euclidean = metric == "euclidean"
        if self.euclidean:
            self.qsq = np.einsum("ij,ij->i", self.q, self.q)
            self.dsq = np.einsum("ij,ij->i", self.dt.T, self.dt.T)

    def work(self) -> tuple[np.ndarray, np.ndarray | None]:
        """One worker's buffers: a padded block of query rows, and a block of float64 scores when they are."""
        nd = self.dt.shape[1]
        return (np.zeros((self.rows, self.q.shape[1]), self.dtype),
                np.empty((self.rows, nd), np.float64) if self.dtype == np.float64 else None)

    def __call__(self, s: int, m: int, out: np.ndarray, work: tuple[np.ndarray, np.ndarray | None]) -> None:
        """Scores of query rows ``s:s + m`` into ``out[:m]`` float32 (``out`` has whole blocks of rows)."""
        qpad, blk64 = work
        b = self.rows
        for t in range(0, m, b):
            rows = min(b, m - t)
            qb = self.q[s + t:s + t + rows]
            if rows < b:
                qpad[:rows] = qb
                qpad[rows:] = 0
                qb = qpad
            ob = out[t:t + b] if blk64 is None else blk64
            np.matmul(qb, self.dt, out=ob)
            if self.euclidean:
                ob *= -2.0
                ob += self.dsq
                ob[:rows] += self.qsq[s + t:s + t + rows, None]
                np.maximum(ob, 0.0, out=ob)
                np.sqrt(ob, out=ob)
                np.negative(ob, out=ob)
            if blk64 is not None:
                out[t:t + rows] = ob[:rows]


def _check_labels(query_labels: object, db_labels: object, nq: int, nd: int) -> tuple[Tensor, Tensor, bool]:
    """Canonical labels by the shared rule of :mod:`commonspace.data.labels` (ids or bool indicators)."""
    ql, dl, multi = label_pair(query_labels, db_labels, "query_labels", "db_labels")
    if ql.shape[0] != nq or dl.shape[0] != nd:
        raise DataError(f"{ql.shape[0]} query labels for {nq} queries and {dl.shape[0]} database labels for "
                        f"{nd} database items; give one label row per item")
    return ql, dl, multi


def _check_exclude(exclude_self: object, nq: int, nd: int) -> Tensor | None:
    if exclude_self is None or exclude_self is False:
        return None
    if exclude_self is True:
        # the query set is the database, in the same order
        if nq != nd:
            raise DataError(f"exclude_self=True needs the queries to be the database ({nq} queries, {nd} items); "
                            "pass the database index of each query instead")
        return torch.arange(nq)
    ex = _tensor(exclude_self, "exclude_self").reshape(-1)
    if ex.numel() != nq or ex.is_floating_point() or ex.dtype == torch.bool:
        raise DataError(f"exclude_self must be an integer ({nq},) tensor: the database index of each query's "
                        "own item, or -1 for none")
    ex = ex.to(torch.int64)
    if ((ex < -1) | (ex >= nd)).any():
        raise DataError(f"exclude_self holds indices outside [-1, {nd}); use -1 for 'nothing to exclude'")
    return ex


def retrieval_metrics(
    query_emb: Tensor | None,
    db_emb: Tensor | None,
    query_labels: Tensor,
    db_labels: Tensor,
    ks: Sequence[int] = (10,),
    metric: str = "cosine",
    exclude_self: Tensor | bool | None = None,
    map_at: Sequence[int] | None = None,
    scores: Tensor | None = None,
    *,
    r_precision: bool = False,
    per_query: bool = False,
    ap_at_k_norm: Literal["retrieved", "min"] = "retrieved",
    chunk_size: int | None = None,
) -> dict:
    """Rank the database for every query and score the ranking against shared labels.

    Relevance (the rule of :mod:`commonspace.data.labels`, shared with the losses): same class id for
    ``(N,)`` labels or an integer ``(N, 1)`` column; at least one shared label for bool ``(N, C)`` (C >= 1)
    or 0/1 ``(N, C)`` (C >= 2) indicators, so an all-False row is relevant to nothing.
    ``exclude_self[i]`` is the database index removed from query i's ranking (-1: none; ``True``: the
    queries are the database, item i is removed from query i's ranking). ``scores``
    (Q, D), higher = more similar, replaces the embeddings (e.g. a weighted sum of similarity matrices).

    Returns ``{"p@K": ..., "map@K": ..., "map": ..., ["r_precision": ...], "queries": evaluated,
    "excluded_queries": queries with no relevant item, "database": D}`` with means over evaluated queries,
    plus ``"per_query"`` (Q-long float arrays, NaN for excluded queries, and the ``"evaluated"`` mask)
    when ``per_query=True``.
    """
    if scores is not None:
        if query_emb is not None or db_emb is not None:
            raise DataError("pass either embeddings or precomputed scores, not both (set the embeddings to None)")
        scores = _float(_tensor(scores, "scores"))
        if scores.ndim != 2:
            raise DataError(f"scores must be a (queries, database) matrix, got shape {tuple(scores.shape)}")
        nq, nd = scores.shape
        if torch.isnan(scores).any():
            raise DataError("scores contain NaN; rankings are undefined, fix the similarity first")
        scores = scores.to(torch.float32)
    else:
        if query_emb is None or db_emb is None:
            raise DataError("pass query_emb and db_emb, or scores=")
        query_emb, db_emb = _tensor(query_emb, "query_emb"), _tensor(db_emb, "db_emb")
        if query_emb.ndim != 2 or db_emb.ndim != 2 or query_emb.shape[1] != db_emb.shape[1]:
            raise DataError(f"query_emb {tuple(query_emb.shape)} and db_emb {tuple(db_emb.shape)} must be "
                            "(Q, d) and (D, d) with the same d")
        if metric not in METRICS:
            raise DataError(f"unknown metric {metric!r}; use one of {METRICS}")
        nq, nd = query_emb.shape[0], db_emb.shape[0]
        for t, w in ((query_emb, "query_emb"), (db_emb, "db_emb")):
            if not torch.isfinite(t).all():
                raise DataError(f"the {'query' if w == 'query_emb' else 'database'} embeddings ({w}) contain NaN "
                                "or inf; similarities and rankings would be undefined (a diverged model?)")
        if metric == "cosine":
            # normalise once instead of once per chunk; then every chunk is a plain matmul
            query_emb, db_emb = F.normalize(_float(query_emb), dim=1), F.normalize(_float(db_emb), dim=1)
            metric = "dot"
    if nd == 0:
        raise DataError("the database is empty")
    ql, dl, multi = _check_labels(query_labels, db_labels, nq, nd)
    if multi:
        # 0/1 float32 once, not per chunk: the shared-label counts are one matmul per chunk
        ql, dl = ql.to(torch.float32), dl.to(torch.float32)
    ex = _check_exclude(exclude_self, nq, nd)
    ks = [int(k) for k in ks]
    map_at = [int(k) for k in (map_at or ())]
    if any(k < 1 for k in ks + map_at):
        raise DataError(f"cut-offs must be >= 1 (CLI: --k), got ks={ks} map_at={map_at}")
    if ap_at_k_norm not in ("retrieved", "min"):
        raise DataError(f"ap_at_k_norm must be 'retrieved' or 'min', got {ap_at_k_norm!r}")
    if chunk_size is not None and chunk_size < 1:
        raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
    blk = _score_rows(nd) if scores is None else 1
    if chunk_size is None:
        chunk_size = max(blk, min(1024, _CHUNK_ELEMENTS // nd) // blk * blk)
    else:
        chunk_size = -(-chunk_size // blk) * blk  # whole blocks of score rows
    if nd >= (1 << 31):
        raise DataError(f"a database of {nd} items is too large for one ranking; split it")

    from commonspace.eval._rank_kernel import rank_metrics  # numba: imported on first use, not with the package

    out_r = np.zeros(nq, dtype=np.int64)
    out_ap = np.zeros(nq, dtype=np.float64)
    out_p = np.zeros((nq, len(ks)), dtype=np.float64)
    out_apk = np.zeros((nq, len(map_at)), dtype=np.float64)
    out_rp = np.zeros(nq, dtype=np.float64)
    ks_a, map_a = np.asarray(ks, dtype=np.int64), np.asarray(map_at, dtype=np.int64)
    ex_a = np.full(nq, -1, dtype=np.int64) if ex is None else ex.cpu().numpy()
    scorer = None if scores is not None else _BlockScores(query_emb, db_emb, metric)
    starts = range(0, nq, chunk_size)
    threads_before = torch.get_num_threads()
    threads = max(1, min(threads_before, 8))
    workers = min(threads, len(starts)) if nq * nd >= (1 << 16) else 1
    # one set of buffers per worker, reused by every chunk: fresh multi-MB allocations page-fault and cost as much
    # as the arithmetic
    c = min(chunk_size, -(-nq // blk) * blk)
    free: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        free.put((torch.empty(c, nd, dtype=torch.float32),
                  torch.empty(c, nd, dtype=torch.bool) if multi else None,
                  torch.empty(c, nd, dtype=torch.float32) if multi else None,  # shared-label counts
                  None if scorer is None else scorer.work()))
    # class ids: relevance is code equality inside the kernel, never a (chunk x D) matrix
    if multi:
        qcode, dcode = np.zeros(nq, dtype=np.int32), np.zeros(0, dtype=np.int32)
    else:
        qcode, dcode = _class_codes(ql, dl)
    by_code = np.zeros((0, nd), dtype=bool)

    def chunk(s: int) -> None:
        e = min(nq, s + chunk_size)
        m = e - s
        bufs = free.get()
        buf_f, buf_rdb, buf_w, work = bufs
        try:
            sc = buf_f[:m]
            if scorer is None:
                sc.copy_(scores[s:e])
            else:
                scorer(s, m, buf_f.numpy(), work)
            if multi:
                rel_db = buf_rdb[:m]
                pair_relevance(ql[s:e], dl, out=rel_db, work=buf_w[:m])
                rel_a = rel_db.numpy()
            else:
                rel_a = by_code
            rank_metrics(sc.numpy(), rel_a, qcode[s:e], dcode, ex_a[s:e], ks_a, map_a, ap_at_k_norm == "min",
                         out_r[s:e], out_ap[s:e], out_p[s:e], out_apk[s:e], out_rp[s:e])
        finally:
            free.put(bufs)

    # each worker scores and ranks whole chunks on one BLAS and one torch thread (the kernel and the matmul release
    # the GIL): one-thread OpenBLAS runs this shape fastest, no ranking waits for a matmul, and a BLAS thread count
    # never changes a score's bits. torch's setting is process-wide, so it is restored as soon as the chunks are done
    torch.set_num_threads(1)
    try:
        with _one_blas_thread():
            if workers == 1:
                for s in starts:
                    chunk(s)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(chunk, starts))
    finally:
        torch.set_num_threads(threads_before)

    out_r = torch.from_numpy(out_r)
    out_ap = torch.from_numpy(out_ap)
    out_p = {k: torch.from_numpy(out_p[:, i]) for i, k in enumerate(ks)}
    out_apk = {k: torch.from_numpy(out_apk[:, i]) for i, k in enumerate(map_at)}
    out_rp = torch.from_numpy(out_rp) if r_precision else None
    evaluated = out_r > 0
    n_eval = int(evaluated.sum())

    def mean(v: Tensor) -> float:
        return float(v[evaluated].mean()) if n_eval else float("nan")

    res: dict = {}
    for k in ks:
        res[f"p@{k}"] = mean(out_p[k])
    for k in map_at:
        res[f"map@{k}"] = mean(out_apk[k])
    res["map"] = mean(out_ap)
    if out_rp is not None:
        res["r_precision"] = mean(out_rp)
    res["queries"] = n_eval
    res["excluded_queries"] = nq - n_eval
    res["database"] = nd
    if per_query:
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def arr(v: Tensor) -> np.ndarray:
            return torch.where(evaluated, v, nan).numpy()

        pq = {f"p@{k}": arr(out_p[k]) for k in ks}
        pq.update({f"map@{k}": arr(out_apk[k]) for k in map_at})
        pq["ap"] = arr(out_ap)
        if out_rp is not None:
            pq["r_precision"] = arr(out_rp)
        pq["relevant"] = out_r.numpy()
        pq["evaluated"] = evaluated.numpy()
        res["per_query"] = pq
    return res


def _pair_key(q: str, d: str) -> str:
    return f"{q}->{d}"


def cross_modal_retrieval(
    encoded: Mapping[str, Tensor],
    labels: Tensor,
    mask: Tensor | None,
    modalities: Sequence[str],
    pairs: Literal["all"] | Sequence[tuple[str, str]] = "all",
    ks: Sequence[int] = (10,),
    exclude_self: bool = True,
    *,
    include_same: bool = False,
    query_index: Tensor | None = None,
    database_index: Tensor | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Retrieval metrics for every (query modality -> database modality) pair, keyed ``"q->d"``.

    ``encoded[m]`` is the (N, d) common-space vector of every item for modality ``m``; ``mask`` (N, M) in
    ``modalities`` order says which modality each item has (all present when None). For pair ``q->d``
    the queries are the items of ``query_index`` (default: all) whose ``q`` is present and the database
    is the items of ``database_index`` (default: all) whose ``d`` is present.

    ``pairs="all"`` is every ordered pair of distinct modalities, plus ``m->m`` when ``include_same``;
    or list the ``(q, d)`` pairs. ``exclude_self`` matters only when ``q == d``: an item is then removed
    from its own ranking (it would trivially rank first). Across modalities the paired item is kept: it is
    a genuine, relevant match. Other keyword arguments go to :func:`retrieval_metrics`.
    """
    modalities = tuple(modalities)
    missing = [m for m in modalities if m not in encoded]
    if missing:
        raise DataError(f"encoded has no vectors for modalities {missing}; it has {sorted(encoded)}")
    y = canonical_labels(labels, "labels")  # checked once; the per-pair subsets read back the same
    n = int(y.shape[0])
    if mask is None:
        mask_t = torch.ones(n, len(modalities), dtype=torch.bool)
    else:
        mask_t = _tensor(mask, "mask").to(torch.bool)
        if tuple(mask_t.shape) != (n, len(modalities)):
            raise DataError(f"mask has shape {tuple(mask_t.shape)}; expected ({n}, {len(modalities)}) = "
                            f"(items, modalities in order {list(modalities)})")
    for m in modalities:
        if int(encoded[m].shape[0]) != n:
            raise DataError(f"encoded[{m!r}] has {encoded[m].shape[0]} rows but there are {n} labels")
    if pairs == "all":
        pair_list = [(a, b) for a in modalities for b in modalities if a != b or include_same]
    else:
        pair_list = [tuple(p) for p in pairs]
        bad = [p for p in pair_list if len(p) != 2 or p[0] not in modalities or p[1] not in modalities]
        if bad:
            raise DataError(f"pairs {bad} name unknown modalities; known: {list(modalities)}")
    qi = torch.arange(n) if query_index is None else _tensor(query_index, "query_index").to(torch.int64)
    di = torch.arange(n) if database_index is None else _tensor(database_index, "database_index").to(torch.int64)

    out: dict[str, dict] = {}
    for q, d in pair_list:
        qsel = qi[mask_t[qi, modalities.index(q)]]
        dsel = di[mask_t[di, modalities.index(d)]]
        if qsel.numel() == 0 or dsel.numel() == 0:
            raise DataError(f"pair {q}->{d}: no item has {q if qsel.numel() == 0 else d} present in the "
                            "chosen queries/database")
        ex = None
        if exclude_self and q == d:
            # database position of each query's own item (-1 when the item is not in the database)
            where = torch.full((n,), -1, dtype=torch.int64)
            where[dsel] = torch.arange(dsel.numel())
            ex = where[qsel]
        out[_pair_key(q, d)] = retrieval_metrics(
            _tensor(encoded[q], q)[qsel], _tensor(encoded[d], d)[dsel], y[qsel], y[dsel], ks=ks,
            exclude_self=ex, **kwargs)
    return out


def precision_ceiling(labels: object, ks: tuple[int, ...] = (10, 50), db_labels: object | None = None
                      ) -> dict[str, np.ndarray]:
    """The best achievable P@K of each query given only the class counts: ``min(K', R) / K'``.

    ``R`` = database items of the query's class, ``K'`` = K capped at the database size, both without the query
    itself when ``db_labels`` is None (the queries are the database, as in ``retrieval_metrics(exclude_self=
    True)``). Returns ``{"p@K": (Q,) float array}``, NaN where ``R = 0`` (such queries are left out of P@K).
    """
    q = np.asarray(labels).reshape(-1)
    d = q if db_labels is None else np.asarray(db_labels).reshape(-1)
    if q.size == 0 or d.size == 0:
        raise DataError("precision_ceiling needs at least one query and one database label")
    classes, counts = np.unique(d, return_counts=True)
    pos = _class_index(classes, q)
    own = db_labels is None
    r = np.where(pos >= 0, counts[pos], 0) - int(own)
    size = d.size - int(own)
    out = {}
    for k in ks:
        kk = max(1, min(int(k), size))
        out[f"p@{k}"] = np.where(r > 0, np.minimum(r, kk) / kk, np.nan)
    return out
