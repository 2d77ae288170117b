"""One label rule for metrics and losses (commonspace.data.labels), and checked packed Hamming codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.data.labels import canonical_labels
from commonspace.eval.hamming import hamming_metrics, pack_codes, pr_curve, unpack_codes
from commonspace.eval.retrieval import cross_modal_retrieval, retrieval_metrics
from commonspace.losses.hashing import csq_targets, relevance
from commonspace.losses.triplet import same_label

N = 24


def _emb(seed: int = 0, n: int = N, d: int = 6) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def _brute(emb: torch.Tensor, rel: np.ndarray, k: int) -> tuple[float, int]:
    """Mean P@k over queries with a relevant item (self excluded), by counting; and how many were excluded."""
    x = emb.numpy().astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    ps, excluded = [], 0
    for i in range(len(x)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        if not any(rel[i, j] for j in order):
            excluded += 1
            continue
        ps.append(sum(bool(rel[i, j]) for j in order[:k]) / k)
    return float(np.mean(ps)), excluded


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _int_column() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(0, 3, size=(N, 1)))


def _bool_column() -> torch.Tensor:
    y = torch.from_numpy(np.random.default_rng(2).random((N, 1)) < 0.5)
    y[:3] = True  # some positives and some all-False rows, whatever the draw
    y[3:6] = False
    return y


# ------------------------------------------------------------------ one relevance everywhere
@pytest.mark.parametrize("make", [_int_column, _bool_column], ids=["int (N,1) = class ids", "bool (N,1) = multi"])
def test_metrics_and_losses_read_n1_labels_alike(make) -> None:
    y = make()
    rel = relevance(y).numpy()
    if y.dtype == torch.bool:
        expected = (y.numpy() & y.numpy().T)  # share the one label; an all-False row is relevant to nothing
        assert not rel[~y[:, 0].numpy()].any()
    else:
        expected = y.numpy() == y.numpy().T  # equal class ids (class 0 too)
    assert (rel == expected).all()
    assert torch.equal(same_label(y, y), relevance(y))

    emb = _emb()
    res = retrieval_metrics(emb, emb, y, y, ks=(5,), exclude_self=True, per_query=True)
    off = rel & ~np.eye(N, dtype=bool)
    assert (res["per_query"]["relevant"] == off.sum(1)).all()
    p5, excluded = _brute(emb, off, 5)
    assert res["p@5"] == pytest.approx(p5)
    assert res["excluded_queries"] == excluded
    if y.dtype == torch.bool:
        assert excluded == int((~y).sum())  # every all-False query has no relevant item

    # Hamming metrics and cross-modal retrieval use the same rule
    codes = (emb > 0).numpy()
    ham = hamming_metrics(codes, codes, y, y, ks=(5,), exclude_self=True)
    assert ham["excluded_queries"] == excluded
    assert pr_curve(codes, codes, y, y, exclude_self=True)["queries"] == N - excluded
    cm = cross_modal_retrieval({"a": emb, "b": emb}, y, None, ["a", "b"], pairs=[("a", "a")], ks=(5,))
    assert cm["a->a"]["p@5"] == pytest.approx(p5)


def test_bool_column_ranks_as_the_same_one_label_matrix() -> None:
    """A bool (N, 1) column is the C = 1 case of multi-label: the same metrics as its 0/1 (N, 2) padding."""
    y = _bool_column()
    wide = torch.cat([y, torch.zeros_like(y)], 1).to(torch.int64)  # a second, never-set label
    emb = _emb(3)
    a = retrieval_metrics(emb, emb, y, y, ks=(3,), map_at=(5,), exclude_self=True)
    b = retrieval_metrics(emb, emb, wide, wide, ks=(3,), map_at=(5,), exclude_self=True)
    assert a == b


def test_canonical_forms() -> None:
    assert canonical_labels(torch.tensor([[2], [0]])).tolist() == [2, 0]
    assert canonical_labels(np.array([[1.0], [3.0]])).dtype == torch.int64
    col = torch.tensor([[True], [False]])
    assert torch.equal(canonical_labels(col), col)
    assert canonical_labels(torch.tensor([[0, 1], [1, 1]])).dtype == torch.bool
    for y in (torch.tensor([0, 2, 1]), torch.tensor([[True, False]])):
        assert torch.equal(canonical_labels(canonical_labels(y)), canonical_labels(y))


def test_csq_reads_an_integer_column_as_class_ids() -> None:
    ids = torch.tensor([0, 1, 2, 1])
    t1, h1 = csq_targets(ids, 8)
    t2, h2 = csq_targets(ids[:, None], 8)
    assert torch.equal(t1, t2) and torch.equal(h1, h2)


def test_mixed_or_bad_labels_are_one_line_errors() -> None:
    emb = _emb(n=4)
    ints, bools = torch.tensor([[0], [1], [0], [1]]), torch.tensor([[True], [False], [True], [True]])
    with pytest.raises(DataError) as exc:
        retrieval_metrics(emb, emb, ints, bools)
    assert "same kind" in _one_line(exc)
    with pytest.raises(DataError, match="same kind"):
        relevance(ints, bools)
    bad = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(DataError) as exc:
        relevance(bad)
    assert "0/1" in _one_line(exc)
    with pytest.raises(DataError, match="0/1"):
        retrieval_metrics(emb, emb, bad, bad)
    with pytest.raises(DataError, match="integers"):
        relevance(torch.tensor([0.5, 1.0]))
    with pytest.raises(DataError, match="no label columns"):
        relevance(torch.zeros(3, 0, dtype=torch.bool))


# ------------------------------------------------------------------ packed codes
def _packed12() -> tuple[np.ndarray, np.ndarray]:
    codes = np.random.default_rng(4).random((10, 12)) < 0.5
    return codes, pack_codes(codes)


@pytest.mark.parametrize("n_bits", [8, 17, 0])
def test_packed_n_bits_must_fit_the_bytes(n_bits: int) -> None:
    codes, p = _packed12()
    y = torch.arange(10) % 3
    with pytest.raises(DataError) as exc:
        hamming_metrics(p, p, y, y, packed=True, n_bits=n_bits)
    assert "9..16" in _one_line(exc)
    with pytest.raises(DataError, match="bytes per code"):
        unpack_codes(p, n_bits)


def test_packed_n_bits_must_be_an_integer() -> None:
    _, p = _packed12()
    with pytest.raises(DataError, match="integer"):
        unpack_codes(p, 12.5)  # type: ignore[arg-type]


def test_packed_padding_bits_must_be_zero() -> None:
    codes, p = _packed12()
    y = torch.arange(10) % 3
    ok = hamming_metrics(p, p, y, y, packed=True, n_bits=12, ks=(3,))
    assert ok == hamming_metrics(codes, codes, y, y, ks=(3,))
    bad = p.copy()
    bad[[3, 7], -1] |= 0b0000_0100  # a bit beyond bit 12
    with pytest.raises(DataError) as exc:
        hamming_metrics(p, bad, y, y, packed=True, n_bits=12)
    msg = _one_line(exc)
    assert "db_codes" in msg and "[3, 7]" in msg and "0xF0" in msg
    with pytest.raises(DataError, match=r"\[3, 7\]"):
        unpack_codes(bad, 12)
    assert (unpack_codes(bad, 16)[:, :12] == codes).all()  # all 16 bits are code bits: nothing to check


def test_index_uses_the_same_packed_check() -> None:
    pytest.importorskip("faiss")
    from commonspace.index import BinaryIndex

    codes, p = _packed12()
    bad = p.copy()
    bad[5, -1] |= 1
    with pytest.raises(DataError) as exc:
        BinaryIndex.build(bad, packed=True, n_bits=12)
    assert "[5]" in _one_line(exc)
    with pytest.raises(DataError, match="9..16"):
        BinaryIndex.build(p, packed=True, n_bits=20)
    idx = BinaryIndex.build(p, packed=True, n_bits=12)
    assert idx.bits == 12
    assert (idx.search(p, 1, packed=True)[0][:, 0] == 0).all()
    with pytest.raises(DataError, match="padding"):
        idx.search(bad, 1, packed=True)  # queries are checked against the index's 12 bits
