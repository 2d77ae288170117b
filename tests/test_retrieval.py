"""Retrieval metrics against hand-computed cases, sklearn and a slow reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from commonspace.data.dataset import DataError
from commonspace.eval import cross_modal_retrieval, retrieval_metrics, similarity


def reference(scores, qlab, dlab, ks=(), map_at=(), exclude=None, norm="retrieved"):
    """Slow, obvious implementation of docs/metrics.md: Python loops over a (-score, index) sort."""
    scores = np.asarray(scores, dtype=np.float32)
    qlab, dlab = np.asarray(qlab), np.asarray(dlab)
    out = []
    for i in range(scores.shape[0]):
        items = [j for j in range(scores.shape[1]) if exclude is None or j != exclude[i]]
        items.sort(key=lambda j: (-float(scores[i, j]), j))
        if qlab.ndim == 1:
            rel = [int(dlab[j] == qlab[i]) for j in items]
        else:
            rel = [int((dlab[j] * qlab[i]).sum() > 0) for j in items]
        R = sum(rel)
        if R == 0:
            out.append(None)
            continue
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        row = {"ap": sum(p for p, r in zip(prec, rel, strict=True) if r) / R, "rp": sum(rel[:R]) / R}
        for k in ks:
            kk = min(k, len(rel))
            row[f"p@{k}"] = sum(rel[:kk]) / kk
        for k in map_at:
            kk = min(k, len(rel))
            num = sum(prec[j] for j in range(kk) if rel[j])
            den = sum(rel[:kk]) if norm == "retrieved" else min(R, kk)
            row[f"map@{k}"] = num / den if den else 0.0
        out.append(row)
    return out


def mean_of(rows, key):
    return float(np.mean([r[key] for r in rows if r is not None]))


# ----------------------------------------------------------------- hand-computed


def test_single_query_by_hand_with_tie():
    # database index:     0    1    2    3    4
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.5, 0.1]])
    db_labels = torch.tensor([1, 0, 0, 1, 1])
    # ranking: 0 (0.9), 2 (0.7), 1 (0.5), 3 (0.5; tie with 1, lower index first), 4 (0.1)
    # relevance in rank order: 1 0 0 1 1;  R = 3
    # P@1 = 1, P@2 = 1/2, P@3 = 1/3, P@4 = 2/4, P@5 = 3/5
    # AP   = (P@1 + P@4 + P@5) / 3 = (1 + 0.5 + 0.6) / 3 = 0.7
    # AP@3 = P@1 / R_3 = 1 / 1 = 1          (min-norm: 1 / min(3, 3) = 1/3)
    # AP@4 = (P@1 + P@4) / R_4 = 1.5 / 2    (min-norm: 1.5 / 3 = 0.5)
    # R-precision = P@3 = 1/3
    r = retrieval_metrics(None, None, torch.tensor([1]), db_labels, ks=(1, 2, 3, 4, 5, 10), map_at=(3, 4),
                          scores=scores, r_precision=True)
    assert r["p@1"] == pytest.approx(1.0)
    assert r["p@2"] == pytest.approx(0.5)
    assert r["p@3"] == pytest.approx(1 / 3)
    assert r["p@4"] == pytest.approx(0.5)
    assert r["p@5"] == pytest.approx(0.6)
    assert r["p@10"] == pytest.approx(0.6)  # K capped at the database size
    assert r["map"] == pytest.approx(0.7)
    assert r["map@3"] == pytest.approx(1.0)
    assert r["map@4"] == pytest.approx(0.75)
    assert r["r_precision"] == pytest.approx(1 / 3)
    assert r["queries"] == 1 and r["excluded_queries"] == 0 and r["database"] == 5

    m = retrieval_metrics(None, None, torch.tensor([1]), db_labels, map_at=(3, 4), scores=scores,
                          ap_at_k_norm="min")
    assert m["map@3"] == pytest.approx(1 / 3)
    assert m["map@4"] == pytest.approx(0.5)

    # the tie decides: ranking item 3 before item 1 would give AP = (1 + 2/3 + 3/5) / 3
    flipped = retrieval_metrics(None, None, torch.tensor([1]), torch.tensor([1, 1, 0, 0, 1]),
                                scores=torch.tensor([[0.9, 0.5, 0.7, 0.5, 0.1]]))
    assert flipped["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_exclude_self_by_hand():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.5, 0.1]])
    db_labels = torch.tensor([1, 0, 0, 1, 1])
    # without item 0: ranking 2, 1, 3, 4 -> relevance 0 0 1 1, R = 2
    # AP = (P@3 + P@4) / 2 = (1/3 + 2/4) / 2;  P@1 = 0;  P@10 capped at 4 -> 2/4
    r = retrieval_metrics(None, None, torch.tensor([1]), db_labels, ks=(1, 10), map_at=(3,), scores=scores,
                          exclude_self=torch.tensor([0]))
    assert r["map"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert r["p@1"] == 0.0
    assert r["p@10"] == pytest.approx(0.5)
    assert r["map@3"] == pytest.approx(1 / 3)  # R_3 = 1 (item 3 at rank 3)


def test_multilabel_by_hand():
    q = torch.tensor([[1, 0, 1]])
    db = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]])
    # shares a label: 0 1 1 1 0
    scores = torch.tensor([[0.8, 0.6, 0.6, 0.2, 0.9]])
    # ranking 4, 0, 1, 2 (tie 1/2 by index), 3 -> relevance 0 0 1 1 1
    # AP = (1/3 + 2/4 + 3/5) / 3;  P@2 = 0;  P@3 = 1/3
    r = retrieval_metrics(None, None, q, db.bool(), ks=(2, 3), scores=scores)
    assert r["map"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3)
    assert r["p@2"] == 0.0
    assert r["p@3"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------- against sklearn and the reference


def _random_set(seed, nq, nd, dim, classes, multi, p=0.3):
    """Random query and database embeddings with class ids, or multi-label indicators (each on with prob. p)."""
    g = torch.Generator().manual_seed(seed)
    q, d = torch.randn(nq, dim, generator=g), torch.randn(nd, dim, generator=g)
    if multi:
        return q, d, torch.rand(nq, classes, generator=g) < p, torch.rand(nd, classes, generator=g) < p, g
    return q, d, torch.randint(0, classes, (nq,), generator=g), torch.randint(0, classes, (nd,), generator=g), g


@pytest.mark.parametrize("multi", [False, True])
def test_map_matches_sklearn_without_ties(multi):
    q, d, ql, dl, _ = _random_set(0, 40, 300, 16, 5 if multi else 6, multi)
    r = retrieval_metrics(q, d, ql, dl, metric="dot", per_query=True)
    s = (q @ d.T).numpy()
    ap = r["per_query"]["ap"]
    checked = 0
    for i in range(40):
        assert np.unique(s[i]).size == s.shape[1]  # sklearn merges tied scores into one threshold
        rel = (dl == ql[i]).numpy() if not multi else ((dl & ql[i]).any(1)).numpy()
        if rel.sum() == 0:
            assert np.isnan(ap[i])
            continue
        assert ap[i] == pytest.approx(average_precision_score(rel, s[i]), abs=1e-6)
        checked += 1
    assert checked == r["queries"]
    assert r["map"] == pytest.approx(float(np.nanmean(ap)), abs=1e-12)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("norm", ["retrieved", "min"])
def test_against_reference_with_many_ties(multi, norm):
    g = torch.Generator().manual_seed(1)
    nq, nd = 30, 50
    scores = torch.randint(0, 4, (nq, nd), generator=g).float()  # heavy ties
    if multi:
        ql, dl = torch.rand(nq, 4, generator=g) < 0.3, torch.rand(nd, 4, generator=g) < 0.3
    else:
        ql, dl = torch.randint(0, 5, (nq,), generator=g), torch.randint(0, 5, (nd,), generator=g)
    ex = torch.randint(-1, nd, (nq,), generator=g)
    ks, map_at = (1, 5, 20, 100), (5, 20, 100)
    r = retrieval_metrics(None, None, ql, dl, ks=ks, map_at=map_at, scores=scores, exclude_self=ex,
                          ap_at_k_norm=norm, r_precision=True, per_query=True)
    ref = reference(scores, ql.int(), dl.int(), ks, map_at, ex.tolist(), norm)
    n_eval = sum(x is not None for x in ref)
    assert r["queries"] == n_eval and r["excluded_queries"] == nq - n_eval
    pq = r["per_query"]
    for i, row in enumerate(ref):
        if row is None:
            assert not pq["evaluated"][i] and np.isnan(pq["ap"][i])
            continue
        assert pq["ap"][i] == pytest.approx(row["ap"], abs=1e-6)
        assert pq["r_precision"][i] == pytest.approx(row["rp"], abs=1e-12)
        for k in ks:
            assert pq[f"p@{k}"][i] == pytest.approx(row[f"p@{k}"], abs=1e-12)
        for k in map_at:
            assert pq[f"map@{k}"][i] == pytest.approx(row[f"map@{k}"], abs=1e-6)
    assert r["map"] == pytest.approx(mean_of(ref, "ap"), abs=1e-6)
    assert r["p@5"] == pytest.approx(mean_of(ref, "p@5"), abs=1e-12)


def test_retrieved_norm_gives_zero_when_nothing_relevant_in_top_k():
    scores = torch.tensor([[0.9, 0.8, 0.1]])
    r = retrieval_metrics(None, None, torch.tensor([1]), torch.tensor([0, 0, 1]), map_at=(2,), scores=scores)
    assert r["map@2"] == 0.0 and r["queries"] == 1


# ----------------------------------------------------------------- conventions


def test_no_relevant_queries_are_excluded_and_counted():
    g = torch.Generator().manual_seed(2)
    q, d = torch.randn(20, 8, generator=g), torch.randn(60, 8, generator=g)
    ql, dl = torch.randint(0, 3, (20,), generator=g), torch.randint(0, 3, (60,), generator=g)
    ql[[3, 7, 11]] = 9  # no database item has class 9
    r = retrieval_metrics(q, d, ql, dl, ks=(5,), map_at=(10,))
    keep = ql != 9
    r2 = retrieval_metrics(q[keep], d, ql[keep], dl, ks=(5,), map_at=(10,))
    assert r["excluded_queries"] == 3 and r["queries"] == 17
    for key in ("p@5", "map@10", "map"):
        assert r[key] == pytest.approx(r2[key], abs=1e-12)


def test_exclude_self_on_a_set_querying_itself():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 8, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    with_self = retrieval_metrics(x, x, y, y, ks=(1,))
    assert with_self["p@1"] == 1.0  # each item finds itself first
    r = retrieval_metrics(x, x, y, y, ks=(1, 100), exclude_self=torch.arange(50), per_query=True)
    ref = reference((torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T),
                    y, y, (1, 100), (), list(range(50)))
    assert r["p@1"] == pytest.approx(mean_of(ref, "p@1"))
    assert r["p@100"] == pytest.approx(mean_of(ref, "p@100"))  # capped at 49 items
    assert r["map"] == pytest.approx(mean_of(ref, "ap"), abs=1e-6)


def test_single_item_class_with_exclude_self_is_excluded():
    x = torch.eye(3)
    y = torch.tensor([0, 0, 1])
    r = retrieval_metrics(x, x, y, y, exclude_self=torch.arange(3))
    assert r["excluded_queries"] == 1 and r["queries"] == 2


@pytest.mark.parametrize("multi", [False, True])
def test_chunking_does_not_change_results(multi):
    q, d, ql, dl, g = _random_set(4, 203, 157, 12, 6 if multi else 7, multi, p=0.2)
    ex = torch.randint(-1, 157, (203,), generator=g)
    kw = dict(ks=(1, 10), map_at=(10, 50), exclude_self=ex, r_precision=True, per_query=True)
    full = retrieval_metrics(q, d, ql, dl, chunk_size=10_000, **kw)
    for cs in (1, 17, 64):
        part = retrieval_metrics(q, d, ql, dl, chunk_size=cs, **kw)
        for key, v in full["per_query"].items():
            np.testing.assert_allclose(part["per_query"][key], v, rtol=1e-6, atol=0, equal_nan=True)
        assert part["queries"] == full["queries"]


@pytest.mark.parametrize("multi", [False, True])
def test_threads_and_chunks_give_the_same_bits(multi):
    """Worker threads, one BLAS thread each, and any chunking: the same per-query values, bit for bit."""
    q, d, ql, dl, _ = _random_set(8, 600, 2000, 32, 5 if multi else 9, multi)
    kw = dict(ks=(1, 10), map_at=(10,), r_precision=True, per_query=True)
    old = torch.get_num_threads()
    runs = []
    try:
        for threads, chunk in ((1, None), (2, None), (2, 7), (2, 600)):
            torch.set_num_threads(threads)
            runs.append(retrieval_metrics(q, d, ql, dl, chunk_size=chunk, **kw)["per_query"])
            assert torch.get_num_threads() == threads  # the workers' one-thread setting is undone
    finally:
        torch.set_num_threads(old)
    for other in runs[1:]:
        for key, v in runs[0].items():
            np.testing.assert_array_equal(other[key], v)


def test_scores_equal_embeddings_path():
    g = torch.Generator().manual_seed(5)
    q, d = torch.randn(30, 8, generator=g), torch.randn(40, 8, generator=g)
    ql, dl = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (40,), generator=g)
    for metric in ("cosine", "dot", "euclidean"):
        a = retrieval_metrics(q, d, ql, dl, metric=metric, map_at=(5,))
        b = retrieval_metrics(None, None, ql, dl, scores=similarity(q, d, metric), map_at=(5,))
        assert a["map"] == pytest.approx(b["map"], abs=1e-6)
        assert a["map@5"] == pytest.approx(b["map@5"], abs=1e-6)


def test_similarity_definitions_and_zero_vectors():
    g = torch.Generator().manual_seed(6)
    q, d = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    q[2] = 0
    d[3] = 0
    cos = similarity(q, d, "cosine")
    assert torch.isfinite(cos).all()
    assert (cos[2] == 0).all() and (cos[:, 3] == 0).all()
    expect = torch.nn.functional.cosine_similarity(q[0:1], d[0:1])
    assert cos[0, 0] == pytest.approx(float(expect), abs=1e-6)
    assert torch.allclose(similarity(q, d, "euclidean"), -torch.cdist(q, d), atol=1e-5)
    assert torch.allclose(similarity(q, d, "dot"), q @ d.T)
    with pytest.raises(DataError, match="unknown metric"):
        similarity(q, d, "manhattan")
    # a zero query ties everything at 0: the ranking is the database order, no NaN anywhere
    r = retrieval_metrics(torch.zeros(1, 4), d, torch.tensor([1]), torch.tensor([0, 1, 0, 0, 1, 0, 0]),
                          ks=(2,))
    assert r["p@2"] == 0.5 and r["map"] == pytest.approx((1 / 2 + 2 / 5) / 2)


def test_negative_zero_ties_with_zero():
    # -0.0 and +0.0 are the same score: tie broken by index
    scores = torch.tensor([[-0.0, 0.0, -0.0]])
    r = retrieval_metrics(None, None, torch.tensor([1]), torch.tensor([1, 0, 0]), ks=(1,), scores=scores)
    assert r["p@1"] == 1.0
    r = retrieval_metrics(None, None, torch.tensor([1]), torch.tensor([0, 0, 1]), scores=scores)
    assert r["map"] == pytest.approx(1 / 3)


def test_infinite_scores_rank_correctly():
    scores = torch.tensor([[float("-inf"), 0.0, float("inf"), -1e30]])
    r = retrieval_metrics(None, None, torch.tensor([1]), torch.tensor([1, 0, 0, 0]), scores=scores,
                          exclude_self=torch.tensor([2]))
    # without item 2: ranking 1, 3, 0 -> item 0 is last of 3
    assert r["map"] == pytest.approx(1 / 3)


def test_input_errors_name_the_problem():
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(DataError, match="same d"):
        retrieval_metrics(x, torch.randn(4, 2), y, y)
    with pytest.raises(DataError, match="one label row per item"):
        retrieval_metrics(x, x, y[:3], y)
    with pytest.raises(DataError, match="exclude_self"):
        retrieval_metrics(x, x, y, y, exclude_self=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics(None, None, y, y, scores=torch.full((4, 4), float("nan")))
    with pytest.raises(DataError, match="either embeddings or precomputed scores"):
        retrieval_metrics(x, x, y, y, scores=torch.zeros(4, 4))
    with pytest.raises(DataError, match="both"):
        retrieval_metrics(x, x, y, torch.ones(4, 2))


# ----------------------------------------------------------------- cross-modal


def test_cross_modal_pairs_use_present_items_only():
    g = torch.Generator().manual_seed(7)
    n = 60
    enc = {"img": torch.randn(n, 8, generator=g), "txt": torch.randn(n, 8, generator=g)}
    y = torch.randint(0, 4, (n,), generator=g)
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[:10, 0] = False  # no image for items 0-9
    mask[50:, 1] = False  # no text for items 50-59
    out = cross_modal_retrieval(enc, y, mask, ("img", "txt"), ks=(5,), map_at=(10,))
    assert set(out) == {"img->txt", "txt->img"}
    img, txt = torch.arange(10, n), torch.arange(0, 50)
    ref = retrieval_metrics(enc["img"][img], enc["txt"][txt], y[img], y[txt], ks=(5,), map_at=(10,))
    assert out["img->txt"] == ref
    assert out["img->txt"]["queries"] + out["img->txt"]["excluded_queries"] == 50
    assert out["txt->img"]["database"] == 50

    same = cross_modal_retrieval(enc, y, mask, ("img", "txt"), pairs=[("img", "img")], ks=(1,))
    assert set(same) == {"img->img"}
    assert same["img->img"]["p@1"] < 1.0  # the item itself is not retrieved
    everything = cross_modal_retrieval(enc, y, mask, ("img", "txt"), include_same=True)
    assert set(everything) == {"img->txt", "txt->img", "img->img", "txt->txt"}
    keep_self = cross_modal_retrieval(enc, y, mask, ("img", "txt"), pairs=[("img", "img")], ks=(1,),
                                      exclude_self=False)
    assert keep_self["img->img"]["p@1"] == 1.0


def test_cross_modal_query_and_database_splits():
    g = torch.Generator().manual_seed(8)
    n = 40
    enc = {"a": torch.randn(n, 4, generator=g), "b": torch.randn(n, 4, generator=g)}
    y = torch.randint(0, 3, (n,), generator=g)
    qi, di = torch.arange(0, 10), torch.arange(5, 40)  # overlapping on 5..9
    out = cross_modal_retrieval(enc, y, None, ("a", "b"), pairs=[("a", "a"), ("a", "b")],
                                query_index=qi, database_index=di)
    ex = torch.tensor([-1] * 5 + list(range(5)))  # queries 5..9 are database rows 0..4
    ref = retrieval_metrics(enc["a"][qi], enc["a"][di], y[qi], y[di], exclude_self=ex)
    assert out["a->a"] == ref
    assert out["a->b"] == retrieval_metrics(enc["a"][qi], enc["b"][di], y[qi], y[di])
    with pytest.raises(DataError, match="unknown modalities"):
        cross_modal_retrieval(enc, y, None, ("a", "b"), pairs=[("a", "c")])


def test_exclude_self_true_means_same_set():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    assert retrieval_metrics(x, x, y, y, exclude_self=True) == retrieval_metrics(x, x, y, y,
                                                                                exclude_self=torch.arange(30))
    with pytest.raises(DataError, match="exclude_self=True"):
        retrieval_metrics(x[:5], x, y[:5], y, exclude_self=True)


def _lexsort_reference(scores, rel, exclude, ks, map_at, norm):
    """Vectorised reference: rank by (-score, index) with np.lexsort, drop the excluded item, score each row."""
    nq, nd = scores.shape
    rel = rel.copy()
    order = np.lexsort((np.broadcast_to(np.arange(nd), (nq, nd)), -scores.astype(np.float64)), axis=-1)
    out = {"ap": [], "rp": [], **{f"p@{k}": [] for k in ks}, **{f"map@{k}": [] for k in map_at}}
    for i in range(nq):
        o = order[i][order[i] != exclude[i]] if exclude[i] >= 0 else order[i]
        r = rel[i, o].astype(np.float64)
        R = r.sum()
        hits = np.cumsum(r)
        prec = hits / np.arange(1, r.size + 1)
        out["ap"].append((prec * r).sum() / R if R else np.nan)
        out["rp"].append(hits[int(R) - 1] / R if R else np.nan)
        for k in ks:
            kk = min(k, r.size)
            out[f"p@{k}"].append(hits[kk - 1] / kk if R else np.nan)
        for k in map_at:
            kk = min(k, r.size)
            den = hits[kk - 1] if norm == "retrieved" else min(R, kk)
            out[f"map@{k}"].append(((prec * r)[:kk].sum() / den if den else 0.0) if R else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def _scores(kind: str, nq: int, nd: int, g: torch.Generator) -> torch.Tensor:
    if kind == "ties":
        s = torch.randint(-40, 40, (nq, nd), generator=g).float() / 8  # many exact ties, negative zeros too
        s[:, :50] = -0.0
    elif kind == "continuous":  # small buckets: each relevant item ranked by counting smaller keys
        s = torch.randn(nq, nd, generator=g)
    elif kind == "clustered":  # one far outlier puts nearly every item in one bucket, which is sorted
        s = torch.randn(nq, nd, generator=g) * 1e-3
        s[:, 7] = 1e6
        s[:, 11] = -1e6
    elif kind == "nested":  # clusters within clusters: crowded buckets split several levels deep
        scale = 10.0 ** -torch.randint(1, 7, (nq, nd), generator=g).float()
        s = 1.0 + torch.randn(nq, nd, generator=g) * scale
        s[:, 3] = 1e6
    else:  # every score equal: one bucket, already in index order
        s = torch.full((nq, nd), 0.25)
    return s


def _scores_by_relevance(rel: np.ndarray, outlier: bool, g: torch.Generator) -> torch.Tensor:
    """Relevant items score higher, with an overlap: buckets of relevant items only, of none and mixed ones; with
    ``outlier``, all of them inside one crowded bucket, so the crowded split meets all three kinds of part."""
    s = torch.from_numpy(rel).float() + 0.3 * torch.randn(rel.shape, generator=g)
    if outlier:
        s[:, 5] = 1e4
    return s


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["ties", "continuous", "clustered", "nested", "constant", "by_relevance",
                                  "by_relevance_crowded"])
def test_ranking_kernel_equals_a_lexsort_reference_at_size(multi, threads, kind):
    """Issue 15: the bucketed ranking kernel gives what a plain (-score, index) lexsort gives, ties (-0.0 = 0.0)
    and exclusion included, for every path through the kernel, in every chunking and in parallel threads."""
    g = torch.Generator().manual_seed(7)
    nq, nd = 120, 3000
    scores = None if kind.startswith("by_relevance") else _scores(kind, nq, nd, g)
    if multi:
        ql, dl = torch.rand(nq, 6, generator=g) < 0.3, torch.rand(nd, 6, generator=g) < 0.3
        rel = (ql.float() @ dl.float().T > 0).numpy()
    else:
        ql, dl = torch.randint(0, 7, (nq,), generator=g), torch.randint(0, 7, (nd,), generator=g)
        rel = (ql[:, None] == dl[None, :]).numpy()
    ex = torch.randint(-1, nd, (nq,), generator=g)
    if scores is None:
        scores = _scores_by_relevance(rel, kind.endswith("crowded"), g)
    rel[np.arange(nq), ex.numpy()] &= ex.numpy() < 0  # the excluded item is never relevant
    ks, map_at = (1, 10, 500, 5000), (10, 100)
    ref = _lexsort_reference(scores.numpy(), rel, ex.numpy(), ks, map_at, "retrieved")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for chunk in (None, 1, 37):
            r = retrieval_metrics(None, None, ql, dl, ks=ks, map_at=map_at, scores=scores, exclude_self=ex,
                                  r_precision=True, per_query=True, chunk_size=chunk)
            pq = r["per_query"]
            np.testing.assert_allclose(pq["ap"], ref["ap"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(pq["r_precision"], ref["rp"], rtol=0, atol=1e-12)
            for k in ks:
                np.testing.assert_allclose(pq[f"p@{k}"], ref[f"p@{k}"], rtol=0, atol=1e-12)
            for k in map_at:
                np.testing.assert_allclose(pq[f"map@{k}"], ref[f"map@{k}"], rtol=0, atol=1e-12)
    finally:
        torch.set_num_threads(old)
