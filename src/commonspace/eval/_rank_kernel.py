"""Compiled per-query ranking metrics, the core of :func:`commonspace.eval.retrieval.retrieval_metrics`.

Full-ranking MAP, P@K, mAP@K and R-precision need only the exact rank of every *relevant* item, not a sorted
database. For one query the kernel

1. spreads the D scores over about D/16 buckets (at most 8192), linear in the score between the extremes of every
   8th score (the rest clamp to the end buckets): a monotone map, so every item of a lower bucket ranks above
   every item of a higher one;
2. counts the items per bucket; the running sum is the rank of each bucket's first item;
3. writes each item's ranking key (descending score, then database index, relevance in bit 0, one uint64) into
   its bucket's slots: one counting-sort pass;
4. ranks each relevant item within its bucket by counting the smaller keys there, and its ordinal among the
   relevant items the same way; a bucket of more than 64 items is split again in its own key range
   (``_rank_crowded``), so the work stays linear for clustered scores.

Where crowded buckets hold more than an eighth of a row (clustered scores), one more pass counts the relevant items
per bucket first: a bucket without any needs only its count and one of relevant items only is a run of consecutive
ranks, so only the keys of mixed buckets are written and ranked. The crowded split does the same for its parts.

Numpy's sort, argsort and searchsorted cost 25-70 ns an element on the 2-core reference machine; these passes cost
about 4-5 on random scores and 2.3-2.4 on tightly clustered ones (docs/metrics.md, "Speed and memory"). Sums run in
ranking order, term by term as ``docs/metrics.md`` writes them, in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

#: database items per score bucket, on average, and the most buckets (their counts stay in the L1 cache)
_ITEMS_PER_BUCKET = 16
_MAX_BUCKETS = 8192
#: a bucket with more items than this is split again (``_rank_crowded``); smaller ones rank each relevant item by
#: counting the smaller keys
_COMPARE_MAX = 64
#: the most parts a crowded bucket is split into, and the deepest pending parts (at most 8 splits deep)
_SUB_BUCKETS = 4096
_STACK = 8 * _SUB_BUCKETS + 8
#: every how many scores the bucket range is sampled from
_RANGE_STRIDE = 8
#: relevant items are counted per bucket when more than 1/_PURE_SHARE of the items sit in crowded buckets
_PURE_SHARE = 8


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled once and cached on disk beside this file (or in the user's cache folder)."""
    try:
        return njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # no writable cache folder anywhere: compile in each process instead
        return njit(nogil=True)(fn)


@njit(inline="always")
def _key(x, j, relevant):  # pragma: no cover - compiled
    """One integer that orders two items: ascending = descending score (IEEE bits in two's complement order, -0.0
    as +0.0 so the zeros tie), then database index; bit 0 carries relevance."""
    sign = np.uint32(0x80000000)
    x = np.uint32(0) if x == sign else x
    x = ~(x ^ ((np.uint32(0) - (x >> np.uint32(31))) | sign))
    return (np.uint64(x) << np.uint64(32)) | (np.uint64(j) << np.uint64(1)) | np.uint64(relevant)


@njit(nogil=True, inline="always")
def _rank_small(seg, first, n_rel, ordpos, relk):  # pragma: no cover - compiled
    """Rank each relevant key of a small bucket by counting the smaller keys there; returns the new ``n_rel``."""
    one = np.uint64(1)
    n = seg.size
    nr = 0
    for t in range(n):
        # the bucket's relevant keys, gathered without a branch
        relk[nr] = seg[t]
        nr += np.int64(seg[t] & one)
    for v in range(nr):
        c = relk[v]
        # rank within the bucket = keys below this one; ordinal = relevant keys below it
        w = np.int64(0)
        for u in range(n):
            w += np.int64(seg[u] < c)
        wr = np.int64(0)
        for u in range(nr):
            wr += np.int64(relk[u] < c)
        ordpos[n_rel + wr] = first + w
    return n_rel + nr


@njit(inline="always")
def _part(key, kmin, per, parts):  # pragma: no cover - compiled
    """The part of a crowded bucket that ``key`` goes to: linear in its score key, from ``kmin``."""
    return min(np.int64(np.float64((key >> np.uint64(32)) - kmin) * per), parts - 1)


@njit(inline="always")
def _emit_run(first, n, n_rel, ordpos):  # pragma: no cover - compiled
    """``n`` relevant items and nothing else from rank ``first``: their ranks follow each other whatever their
    order, so nothing in the run needs ranking."""
    for t in range(n):
        ordpos[n_rel + t] = first + t
    return n_rel + n


@_compiled
def _rank_crowded(buf, tmp, lo, n, n_rel, ordpos, relk, stack, part):  # pragma: no cover - compiled
    """Rank the relevant keys of a crowded bucket ``buf[lo:lo + n]`` that holds relevant and other items (its first
    item has rank ``lo``).

    The bucket is split again, linearly in its own key range, and its parts are taken in ranking order: one
    without relevant items is skipped and one of relevant items only is a run (``_emit_run``), so only the keys of
    mixed parts are written out; a part of one key is ties, already in index order; small parts are counted;
    crowded ones are split in turn. Each split narrows the key range at least 16-fold, so a bucket is split at most
    8 times deep, whatever the scores' clustering.
    """
    one = np.uint64(1)
    low = np.int64(0xFFFFFFFF)
    trash = tmp.size - 1  # where the keys of unmixed parts go: one slot, never read
    cnt, fill, inc, nrel = part[0], part[1], part[2], part[3]
    stack[0, 0] = lo
    stack[0, 1] = n
    stack[0, 2] = 0
    top = 1
    while top > 0:
        top -= 1
        a = stack[top, 0]
        m = stack[top, 1]
        if stack[top, 2]:
            n_rel = _emit_run(a, m, n_rel, ordpos)
            continue
        seg = buf[a:a + m]
        if m <= _COMPARE_MAX:
            n_rel = _rank_small(seg, a, n_rel, ordpos, relk)
            continue
        kmin = seg[0] >> np.uint64(32)
        kmax = kmin
        for t in range(1, m):
            k = seg[t] >> np.uint64(32)
            kmin = min(kmin, k)
            kmax = max(kmax, k)
        if kmin == kmax:
            # one score: ties, which the stable scatters kept in database order
            for t in range(m):
                if seg[t] & one:
                    ordpos[n_rel] = a + t
                    n_rel += 1
            continue
        parts = min(m // 4, _SUB_BUCKETS)
        per = parts / (np.float64(kmax - kmin) + 1.0)
        # items per part, relevant ones counted in the high 32 bits of the same counter
        cnt[:parts] = 0
        for t in range(m):
            cnt[_part(seg[t], kmin, per, parts)] += np.int64(1) + (np.int64(seg[t] & one) << np.int64(32))
        pos = a
        for p in range(parts):
            c = cnt[p] & low
            r = cnt[p] >> np.int64(32)
            mixed = 0 < r < c
            nrel[p] = r
            cnt[p] = pos  # from here on: the part's first rank
            fill[p] = pos if mixed else trash
            inc[p] = np.int64(mixed)
            pos += c
        cnt[parts] = pos
        for t in range(m):
            p = _part(seg[t], kmin, per, parts)
            f = fill[p]
            tmp[f] = seg[t]
            fill[p] = f + inc[p]
        # the parts with relevant items, pushed last to first so that they pop in ranking order
        for p in range(parts - 1, -1, -1):
            start = cnt[p]
            c = cnt[p + 1] - start
            if nrel[p] > 0:
                if inc[p]:
                    buf[start:start + c] = tmp[start:start + c]
                stack[top, 0] = start
                stack[top, 1] = c
                stack[top, 2] = 1 - inc[p]
                top += 1
    return n_rel


@_compiled
def _rank_pure_buckets(buf, tmp, cnt, nrel, inc, nb, ordpos, relk, stack, part):  # pragma: no cover - compiled
    """The relevant ranks of a row whose relevant items were counted per bucket: buckets without any are skipped,
    buckets of relevant items only are runs, mixed ones are ranked. Returns how many there are."""
    n_rel = 0
    for b in range(nb):
        first = cnt[b]
        n = cnt[b + 1] - first
        if not inc[b]:
            if nrel[b] > 0:
                n_rel = _emit_run(first, n, n_rel, ordpos)
        elif n > _COMPARE_MAX:
            n_rel = _rank_crowded(buf, tmp, first, n, n_rel, ordpos, relk, stack, part)
        else:
            n_rel = _rank_small(buf[first:first + n], first, n_rel, ordpos, relk)
    return n_rel


@_compiled
def rank_metrics(sc, rel, qcode, dcode, ex, ks, map_at, min_norm, r_out, ap_out, p_out, apk_out,
                 rp_out):  # pragma: no cover
    """Per-query R, AP, P@K, AP@K and R-precision for rows of ``sc`` (m, D) float32, higher = better.

    ``rel`` (m, D) bool is relevance; when it has no rows, item j is relevant to query i where
    ``dcode[j] == qcode[i]`` (dense class codes; -1 matches nothing). ``ex`` (m,) is the database index left out
    of each row's ranking (-1: none; it is never relevant). Ties rank by database index. Results go to the
    ``*_out`` arrays, row-aligned with ``sc``.
    """
    m, d = sc.shape
    nb = max(1, min(d // _ITEMS_PER_BUCKET, _MAX_BUCKETS))
    bk = np.empty(d, np.uint16)
    cnt = np.empty(nb + 1, np.int32)  # items per bucket, then the rank of each bucket's first item
    nrel = np.empty(nb + 1, np.int32)  # relevant items per bucket (when counted), the excluded item's last
    fill = np.empty(nb + 1, np.int32)  # bucket nb holds the excluded item, after every ranked one
    inc = np.empty(nb + 1, np.int32)  # 1 for a mixed bucket, whose keys are written out; 0 sends them to the trash
    buf = np.empty(d + 1, np.uint64)  # the keys of mixed buckets grouped by bucket; buf[d] is the trash slot
    relk = np.empty(_COMPARE_MAX + 1, np.uint64)
    tmp = np.empty(d + 1, np.uint64)
    stack = np.empty((_STACK, 3), np.int64)
    part = np.empty((4, _SUB_BUCKETS + 1), np.int64)
    ordpos = np.empty(d, np.int64)  # rank of the o-th relevant item (o = 0, 1, ...)
    cum = np.empty(d, np.float64)  # sum of o / rank over the first o relevant items
    by_code = rel.shape[0] == 0
    for i in range(m):
        s = sc[i]
        su = s.view(np.uint32)
        e = ex[i]
        qc = qcode[i]
        # the bucket range from a sample of the scores: items beyond it join the first or last bucket, which keeps
        # the map monotone (only those buckets grow)
        lo32 = np.float32(np.inf)
        hi32 = np.float32(-np.inf)
        for j in range(0, d, _RANGE_STRIDE):
            lo32 = min(lo32, s[j])
            hi32 = max(hi32, s[j])
        hi = np.float64(hi32)
        span = hi - np.float64(lo32)
        scale = (nb - 1) / span if span > 0 and np.isfinite(span) else 0.0
        top = np.float64(nb - 1)
        # separate passes: the elementwise ones vectorise, the histogram and the scatter cannot
        if scale > 0:
            for j in range(d):
                # clamped as floats before the conversion: an infinite score maps to an end bucket, not to garbage
                bk[j] = np.int64(min(max((hi - np.float64(s[j])) * scale, 0.0), top))
        else:
            bk[:] = 0
        cnt[:] = 0
        for j in range(d):
            cnt[bk[j]] += 1
        n_db = d
        if e >= 0:
            cnt[bk[e]] -= 1
            bk[e] = nb
            n_db -= 1
        tot = 0
        crowded = 0
        for b in range(nb):
            c = cnt[b]
            cnt[b] = tot
            fill[b] = tot
            tot += c
            crowded += c if c > _COMPARE_MAX else 0
        cnt[nb] = tot
        fill[nb] = tot
        # clustered scores crowd buckets, often with items of one kind only: a bucket with no relevant item needs
        # only its count, and one of relevant items only is a run of ranks. So where crowded buckets hold a fair
        # share of the items, one more pass counts the relevant items per bucket and only the keys of mixed buckets
        # are written out (the others go to the trash slot, buf[d]). Elsewhere that pass would cost more than it saves
        pure = crowded * _PURE_SHARE > d
        if pure:
            nrel[:] = 0
            if by_code:
                for j in range(d):
                    nrel[bk[j]] += dcode[j] == qc
            else:
                r = rel[i]
                for j in range(d):
                    nrel[bk[j]] += r[j]
            for b in range(nb):
                mixed = 0 < nrel[b] < cnt[b + 1] - cnt[b]
                inc[b] = mixed
                if not mixed:
                    fill[b] = d
            inc[nb] = 0
            fill[nb] = d
        if pure and by_code:
            for j in range(d):
                b = bk[j]
                f = fill[b]
                buf[f] = _key(su[j], j, dcode[j] == qc)
                fill[b] = f + inc[b]
        elif pure:
            r = rel[i]
            for j in range(d):
                b = bk[j]
                f = fill[b]
                buf[f] = _key(su[j], j, r[j])
                fill[b] = f + inc[b]
        elif by_code:
            for j in range(d):
                b = bk[j]
                buf[fill[b]] = _key(su[j], j, dcode[j] == qc)
                fill[b] += 1
        else:
            r = rel[i]
            for j in range(d):
                b = bk[j]
                buf[fill[b]] = _key(su[j], j, r[j])
                fill[b] += 1
        n_rel = 0
        if pure:
            n_rel = _rank_pure_buckets(buf, tmp, cnt, nrel, inc, nb, ordpos, relk, stack, part)
        else:
            for b in range(nb):
                first = cnt[b]
                n = cnt[b + 1] - first
                if n > _COMPARE_MAX:
                    n_rel = _rank_crowded(buf, tmp, first, n, n_rel, ordpos, relk, stack, part)
                else:
                    n_rel = _rank_small(buf[first:first + n], first, n_rel, ordpos, relk)
        ap = 0.0
        for o in range(n_rel):
            ap += (o + 1.0) / (ordpos[o] + 1.0)
            cum[o] = ap
        # ranks rise with the ordinal, so the relevant items above a cut-off are a prefix of ordpos
        r_out[i] = n_rel
        den_r = max(n_rel, 1)
        ap_out[i] = ap / den_r
        rp_out[i] = np.searchsorted(ordpos[:n_rel], n_rel) / den_r
        for q in range(ks.size):
            k = min(max(n_db, 1), ks[q])
            p_out[i, q] = np.searchsorted(ordpos[:n_rel], k) / k
        for q in range(map_at.size):
            k = min(max(n_db, 1), map_at[q])
            h = np.searchsorted(ordpos[:n_rel], k)
            den = min(n_rel, k) if min_norm else h
            apk_out[i, q] = cum[h - 1] / max(den, 1) if den > 0 and h > 0 else 0.0
