"""Hamming retrieval: packing, distances and hashing metrics against plain-python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.eval.hamming import (
    _POPCOUNT8,
    _popcount,
    hamming_distance,
    hamming_metrics,
    pack_codes,
    pr_curve,
    precision_at_n,
    unpack_codes,
)


def _ref_dist(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Hamming distance by counting differing bits, one pair at a time."""
    return [[sum(int(x != y) for x, y in zip(qa, db, strict=True)) for db in b] for qa in a]


def _ref_rank(dist_row: list[int], skip: int = -1) -> list[int]:
    """Database indices by ascending distance, ties by index, the excluded index removed."""
    return [j for j in sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j)) if j != skip]


def _relevant(a, b) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return bool(a == b) if a.size == 1 else bool(np.any((a > 0) & (b > 0)))


def _ref_metrics(qc, dc, ql, dl, k, kmap, radius, exclude_self):
    dist = _ref_dist(qc, dc)
    p, aps, apks, precs, recs, empty = [], [], [], [], [], 0
    for i in range(len(qc)):
        skip = i if exclude_self else -1
        order = _ref_rank(dist[i], skip)
        rel = [int(_relevant(ql[i], dl[j])) for j in order]
        r = sum(rel)
        if r == 0:
            continue
        hits, ap = 0, 0.0
        for pos, x in enumerate(rel, 1):
            hits += x
            ap += x * hits / pos
        aps.append(ap / r)
        kk = min(k, len(order))
        p.append(sum(rel[:kk]) / kk)
        km = min(kmap, len(order))
        hits, num = 0, 0.0
        for pos, x in enumerate(rel[:km], 1):
            hits += x
            num += x * hits / pos
        apks.append(num / hits if hits else 0.0)
        within = [j for j in order if dist[i][j] <= radius]
        rw = sum(_relevant(ql[i], dl[j]) for j in within)
        precs.append(rw / len(within) if within else 0.0)
        empty += not within
        recs.append(rw / r)
    return {"p": np.mean(p), "map": np.mean(aps), "mapk": np.mean(apks), "prec": np.mean(precs),
            "rec": np.mean(recs), "empty": empty, "queries": len(aps)}


def test_pack_round_trip_and_conventions():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (7, 13))
    p = pack_codes(bits)
    assert p.dtype == np.uint8 and p.shape == (7, 2)
    assert (unpack_codes(p, 13) == bits).all()
    assert (unpack_codes(p, 13, signed=True) == 2 * bits - 1).all()
    # {-1,+1}, {0,1} and bool give the same packing; tensors are accepted
    assert (pack_codes(2 * bits - 1) == p).all()
    assert (pack_codes(bits.astype(bool)) == p).all()
    assert (pack_codes(torch.from_numpy(2.0 * bits - 1)) == p).all()
    # documented bit order: bit 0 is the most significant bit of byte 0
    one = np.zeros((1, 9), int)
    one[0, 0] = 1
    assert pack_codes(one).tolist() == [[128, 0]]
    one[0, 0], one[0, 8] = 0, 1
    assert pack_codes(one).tolist() == [[0, 128]]


def test_pack_rejects_bad_codes():
    with pytest.raises(DataError, match="other than -1, 0 and 1"):
        pack_codes(np.array([[0.5, 1.0]]))
    with pytest.raises(DataError, match="mixes -1 and 0"):
        pack_codes(np.array([[-1, 0, 1]]))
    with pytest.raises(DataError, match="2-D|\\(N, K\\)"):
        pack_codes(np.array([1, 0]))


def test_popcount_fallback_table_matches():
    x = np.arange(256, dtype=np.uint8)
    assert (_POPCOUNT8[x] == np.array([bin(i).count("1") for i in range(256)])).all()
    w = np.random.default_rng(1).integers(0, 2**63, (5, 3), dtype=np.uint64)
    ref = np.array([[bin(int(v)).count("1") for v in row] for row in w])
    assert (_popcount(w) == ref).all()


@pytest.mark.parametrize("n_bits", [5, 8, 16, 64, 70])
def test_hamming_distance_matches_bruteforce(n_bits):
    rng = np.random.default_rng(n_bits)
    a, b = rng.integers(0, 2, (6, n_bits)), rng.integers(0, 2, (9, n_bits))
    d = hamming_distance(pack_codes(a), pack_codes(b), chunk_size=4)
    assert d.dtype == np.int32 and d.shape == (6, 9)
    assert d.tolist() == _ref_dist(a, b)


def test_hamming_distance_length_mismatch():
    with pytest.raises(DataError, match="bytes"):
        hamming_distance(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))
    with pytest.raises(DataError, match="packed codes"):
        hamming_distance(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.uint8))


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_metrics_match_bruteforce(multi, exclude_self):
    rng = np.random.default_rng(3 + multi + 2 * exclude_self)
    n, k = 30, 6  # few bits: many ties, so tie-breaking by index is exercised
    codes = rng.integers(0, 2, (n, k))
    labels = (rng.random((n, 4)) < 0.3).astype(int) if multi else rng.integers(0, 4, n)
    ref = _ref_metrics(codes, codes, labels, labels, 5, 7, 2, exclude_self)
    res = hamming_metrics(2 * codes - 1, codes, labels, labels, ks=(5,), map_at=(7,), radius=2,
                          exclude_self=True if exclude_self else None, chunk_size=7)
    assert res["queries"] == ref["queries"] and res["excluded_queries"] == n - ref["queries"]
    assert res["p@5"] == pytest.approx(ref["p"])
    assert res["map"] == pytest.approx(ref["map"])
    assert res["map@7"] == pytest.approx(ref["mapk"])
    assert res["p@r<=2"] == pytest.approx(ref["prec"])
    assert res["recall@r<=2"] == pytest.approx(ref["rec"])
    assert res["empty_queries"] == ref["empty"]
    assert res["bits"] == k and res["database"] == n


def test_radius_by_hand_and_empty_conventions():
    db = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    dl = np.array([0, 1, 0, 0])
    q = np.array([[0, 0, 0, 0], [1, 1, 1, 0]])
    ql = np.array([0, 0])
    res = hamming_metrics(q, db, ql, dl, radius=1)
    # query 0: within 1 -> items 0 (rel), 1 (not): precision 1/2, recall 1/3
    # query 1: distances 3, 2, 1, 1 -> items 2 (rel), 3 (rel): precision 1, recall 2/3
    assert res["p@r<=1"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["recall@r<=1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert res["empty_queries"] == 0
    # radius 0: query 1 retrieves nothing -> precision 0 ("zero") or left out ("skip")
    r0 = hamming_metrics(q, db, ql, dl, radius=0)
    assert r0["empty_queries"] == 1 and r0["p@r<=0"] == pytest.approx(0.5)
    assert hamming_metrics(q, db, ql, dl, radius=0, empty="skip")["p@r<=0"] == pytest.approx(1.0)
    curve = pr_curve(q, db, ql, dl)
    assert curve["radius"].tolist() == [0, 1, 2, 3, 4]
    assert curve["precision"][1] == pytest.approx(0.75) and curve["recall"][1] == pytest.approx(0.5)
    assert curve["precision"][0] == pytest.approx(0.5) and curve["empty_queries"][0] == 1
    assert curve["recall"][-1] == pytest.approx(1.0) and curve["precision"][-1] == pytest.approx(0.75)
    assert pr_curve(q, db, ql, dl, empty="skip")["precision"][0] == pytest.approx(1.0)


def test_pr_curve_matches_metrics_at_every_radius():
    rng = np.random.default_rng(5)
    c = rng.integers(0, 2, (40, 8))
    y = rng.integers(0, 3, 40)
    curve = pr_curve(c, c, y, y, exclude_self=True, chunk_size=9)
    for r in range(9):
        m = hamming_metrics(c, c, y, y, radius=r, exclude_self=True)
        assert curve["precision"][r] == pytest.approx(m[f"p@r<={r}"])
        assert curve["recall"][r] == pytest.approx(m[f"recall@r<={r}"])


def test_ties_broken_by_database_index():
    # every database item is at distance 1 from the query; relevant items at indices 1 and 3
    db = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    q = np.array([[0, 0]])
    res = hamming_metrics(q, db, np.array([1]), np.array([0, 1, 0, 1]), ks=(1, 2), radius=None)
    # ranking 0, 1, 2, 3: AP = (1/2)(1/2 + 2/4)
    assert res["map"] == pytest.approx(0.5)
    assert res["p@1"] == 0.0 and res["p@2"] == 0.5
    pn = precision_at_n(q, db, np.array([1]), np.array([0, 1, 0, 1]), ns=[1, 2, 3, 4, 10])
    assert pn["precision"].tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5, 0.5])


def test_precision_at_n_default_grid_and_packed_input():
    rng = np.random.default_rng(2)
    c = rng.integers(0, 2, (50, 12))
    y = rng.integers(0, 3, 50)
    pn = precision_at_n(c, c, y, y)
    assert pn["n"][0] == 1 and pn["n"][-1] == 50
    m = hamming_metrics(c, c, y, y, ks=(1, 50), radius=None)
    assert pn["precision"][0] == pytest.approx(m["p@1"])
    assert pn["precision"][-1] == pytest.approx(m["p@50"])
    packed = hamming_metrics(pack_codes(c), pack_codes(c), y, y, ks=(1,), packed=True, n_bits=12)
    assert packed["map"] == pytest.approx(m["map"]) and packed["bits"] == 12


def test_metric_errors():
    c = np.zeros((3, 4), int)
    with pytest.raises(DataError, match="bits"):
        hamming_metrics(c, np.zeros((3, 5), int), [0, 1, 2], [0, 1, 2])
    with pytest.raises(DataError, match="empty"):
        hamming_metrics(c, c, [0, 1, 2], [0, 1, 2], empty="nan")
    with pytest.raises(DataError, match="labels"):
        hamming_metrics(c, c, [0, 1], [0, 1, 2])


def test_plots_write_valid_pngs(tmp_path):
    from commonspace.eval.plots import plot_lines, plot_pr_curves, plot_precision_at_n

    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, (40, 8))
    y = rng.integers(0, 3, 40)
    pr = pr_curve(c, c, y, y, exclude_self=True)
    pn = precision_at_n(c, c, y, y, exclude_self=True)
    png = b"\x89PNG\r\n\x1a\n"
    out = [
        plot_pr_curves({"8 bits": (pr["precision"], pr["recall"])}, tmp_path / "pr.png", title="PR"),
        plot_precision_at_n({"8 bits": (pn["n"], pn["precision"])}, tmp_path / "pn.png"),
        plot_lines({"a": ([1, 2, 3], [0.1, 0.2, 0.3]), "b": ([1, 2], [0.5, 0.4])}, tmp_path / "l.png",
                   xlabel="x", ylabel="y", logx=True),
    ]
    for p in out:
        data = p.read_bytes()
        assert data[:8] == png and len(data) > 1000
    # atomic writes leave no temp files behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["l.png", "pn.png", "pr.png"]
    with pytest.raises(DataError, match="png"):
        plot_lines({"a": ([1], [1])}, tmp_path / "x.jpg")
    with pytest.raises(DataError, match="points"):
        plot_lines({"a": ([1, 2], [1])}, tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()
