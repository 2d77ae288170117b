"""FAISS index layer: exact search against numpy, HNSW recall, binary ranking, files and errors."""

from __future__ import annotations

import numpy as np
import pytest

from commonspace.data.dataset import DataError
from commonspace.data.io import save_embeddings
from commonspace.eval.hamming import hamming_distance, pack_codes
from commonspace.index import BinaryIndex, EmbeddingIndex, build_index_from_file, load_index, query_index


def _data(n=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(20, d)).astype(np.float32)


def _topk(scores: np.ndarray, k: int, higher: bool) -> np.ndarray:
    s = -scores if higher else scores
    return np.argsort(s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_matches_bruteforce(metric):
    x, q = _data()
    ids = np.arange(len(x)) * 7 + 3
    idx = EmbeddingIndex.build(x, ids=ids, factory="Flat", metric=metric)
    vals, got = idx.search(q, 10)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        s = qn @ xn.T
    elif metric == "ip":
        s = q @ x.T
    else:
        s = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    ref = _topk(s, 10, metric != "l2")
    assert (got == ids[ref]).all()
    assert np.allclose(vals, np.take_along_axis(s, ref, 1), atol=1e-4)
    assert idx.higher_is_better == (metric != "l2")


def test_hnsw_recall_high():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(20, 32)) * 3
    x = (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 32))).astype(np.float32)
    q = x[:200] + 0.1 * rng.normal(size=(200, 32)).astype(np.float32)
    exact = EmbeddingIndex.build(x, factory="Flat").search(q, 10)[1]
    hnsw = EmbeddingIndex.build(x, factory="HNSW32", ef_search=64)
    got = hnsw.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert recall > 0.95


def test_ivf_train_and_nprobe_exact():
    x, q = _data(2000, 8)
    idx = EmbeddingIndex.build(x, factory="IVF8,Flat", metric="l2", nprobe=8)  # all lists: exact
    ref = EmbeddingIndex.build(x, factory="Flat", metric="l2").search(q, 5)
    got = idx.search(q, 5)
    assert (got[1] == ref[1]).all()
    idx.set_search_params(nprobe=1)
    assert idx.meta["nprobe"] == 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_round_trip_and_search_by_id(tmp_path, factory):
    x, q = _data(400, 12)
    ids = np.arange(400)[::-1] * 2
    idx = EmbeddingIndex.build(x, ids=ids, factory=factory, nprobe=2 if "IVF" in factory else None,
                               modalities=["image", "text"], model="bidnn", meta={"note": "t"})
    path = idx.save(tmp_path / "i.npz")
    back = EmbeddingIndex.load(path)
    v1, i1 = idx.search(q, 7)
    v2, i2 = back.search(q, 7)
    assert (i1 == i2).all() and np.array_equal(v1, v2)
    assert back.modalities == ["image", "text"] and back.model == "bidnn" and back.meta["extra"] == {"note": "t"}
    assert back.factory == factory and back.metric == "cosine" and back.dim == 12 and len(back) == 400
    assert back.meta.get("nprobe") == idx.meta.get("nprobe")
    # querying by a stored id returns the item itself first (cosine 1)
    vals, hits = back.search_by_id([ids[0], ids[5], ids[399]], 3)
    assert hits[:, 0].tolist() == [ids[0], ids[5], ids[399]]
    assert np.allclose(vals[:, 0], 1.0, atol=1e-5)
    _, hits = back.search_by_id(ids[5], 3, exclude_self=True)
    assert ids[5] not in hits[0] and hits.shape == (1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.npz"]  # atomic: no temp file left


def test_add_ids_and_uniqueness():
    x, _ = _data(50, 4)
    idx = EmbeddingIndex.build(x[:20], ids=np.arange(20) + 100)
    idx.add(x[20:30])  # default ids continue after the largest
    assert idx.ids[-1] == 129 and len(idx) == 30
    with pytest.raises(DataError, match="already in the index"):
        idx.add(x[30:31], ids=[100])
    with pytest.raises(DataError, match="not unique"):
        EmbeddingIndex.build(x[:3], ids=[1, 1, 2])
    with pytest.raises(DataError, match="ids not in the index"):
        idx.search_by_id(5, 3)


def test_errors():
    x, _ = _data(100, 64)
    idx = EmbeddingIndex.build(x)
    with pytest.raises(DataError, match="index holds 64-d vectors, got 32"):
        idx.search(np.zeros((2, 32), np.float32), 3)
    with pytest.raises(DataError, match="index holds 64-d vectors, got 32"):
        idx.add(np.zeros((2, 32), np.float32))
    with pytest.raises(DataError, match="unknown metric"):
        EmbeddingIndex.build(x, metric="hamming")
    empty = EmbeddingIndex.build(np.zeros((0, 8), np.float32))
    with pytest.raises(DataError, match="empty"):
        empty.search(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(DataError, match="at least 256 vectors.*got 100"):
        EmbeddingIndex.build(x, factory="IVF256,Flat")
    with pytest.raises(DataError, match="faiss cannot build"):
        EmbeddingIndex.build(x, factory="NoSuchIndex")
    with pytest.raises(DataError, match="NaN"):
        idx.search(np.full((1, 64), np.nan), 3)
    # k beyond the index size is capped
    assert idx.search(x[:2], 1000)[1].shape == (2, 100)


def test_binary_matches_bruteforce_hamming(tmp_path):
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 2, (600, 24))
    q = rng.integers(0, 2, (15, 24))
    ref = np.sort(hamming_distance(pack_codes(q), pack_codes(codes)), axis=1)[:, :10]
    for factory, kw in (("BFlat", {}), ("BHNSW32", {"ef_search": 256}), ("BIVF4", {"nprobe": 4})):
        idx = BinaryIndex.build(2 * codes - 1, factory=factory, **kw)
        dist, hits = idx.search(q, 10)
        # ties aside: the distances of the top 10 equal the exact ones, and each hit is at that distance
        assert (dist == ref).all(), factory
        for i in range(15):
            assert (hamming_distance(pack_codes(q[i:i + 1]), pack_codes(codes[hits[i]]))[0] == dist[i]).all()
        d0, h0 = idx.search_by_id([3, 9], 2)
        assert h0[:, 0].tolist() == [3, 9] and (d0[:, 0] == 0).all()
        back = load_index(idx.save(tmp_path / f"{factory}.npz"))
        assert isinstance(back, BinaryIndex) and back.bits == 24
        d2, h2 = back.search(q, 10)
        assert (d2 == dist).all() and (h2 == hits).all()
    with pytest.raises(DataError, match="24-bit codes, got 16-bit"):
        idx.search(q[:, :16], 3)
    packed = BinaryIndex.build(pack_codes(codes), packed=True, n_bits=24)
    assert (packed.search(pack_codes(q), 5, packed=True)[0] == ref[:, :5]).all()
    with pytest.raises(DataError, match="EmbeddingIndex"):
        EmbeddingIndex.load(tmp_path / "BFlat.npz")


def test_file_helpers(tmp_path):
    x, _ = _data(30, 8)
    rng = np.random.default_rng(0)
    mask = np.ones((30, 2), bool)
    mask[:5, 1] = False
    enc_txt = x.copy()
    enc_txt[:5] = 0
    emb = tmp_path / "emb.npz"
    save_embeddings(emb, {"joint": x, "enc_image": x, "enc_text": enc_txt, "mask": mask,
                          "index": np.arange(30) + 1000, "labels": rng.integers(0, 3, 30),
                          "codes": (x > 0).astype(np.int8) * 2 - 1},
                    meta={"model": "bidnn", "modalities": ["image", "text"], "split": "test"})
    idx = build_index_from_file(emb, tmp_path / "joint.npz")
    assert idx.modalities == ["image", "text"] and idx.model == "bidnn" and len(idx) == 30
    res = query_index(tmp_path / "joint.npz", ids=[1003, 1010], k=4)
    assert [r["ids"][0] for r in res] == [1003, 1010] and res[0]["by"] == "id" and res[0]["measure"] == "cosine"
    res = query_index(tmp_path / "joint.npz", queries=x[:2], k=3)
    assert res[1]["query"] == 1 and res[1]["ids"][0] == 1001 and len(res[1]["values"]) == 3
    txt = build_index_from_file(emb, tmp_path / "txt.npz", key="enc_text", factory="HNSW32", metric="l2")
    assert len(txt) == 25 and txt.modalities == ["text"] and 1000 not in txt.ids
    codes = build_index_from_file(emb, tmp_path / "codes.npz", key="codes")
    assert isinstance(codes, BinaryIndex) and codes.factory == "BFlat" and codes.bits == 8
    res = query_index(tmp_path / "codes.npz", ids=[1000], k=2, exclude_self=True)
    assert 1000 not in res[0]["ids"] and res[0]["measure"] == "hamming"
    with pytest.raises(DataError, match="no array 'enc_audio'"):
        build_index_from_file(emb, tmp_path / "a.npz", key="enc_audio")
    with pytest.raises(DataError, match="not both"):
        query_index(tmp_path / "joint.npz", queries=x[:1], ids=[1000], k=3)
    with pytest.raises(DataError, match="not a commonspace index"):
        load_index(emb)
