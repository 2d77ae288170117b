"""`commonspace bench ima` with tiny settings (small noisy-digits pairs, 1 epoch), and its P@K ceiling by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from commonspace.bench.runner import BenchContext, available_specs, run_spec
from commonspace.bench.specs import ima as ima_spec
from commonspace.data import DataError
from commonspace.eval.retrieval import precision_ceiling, retrieval_metrics


def test_ima_spec_registered():
    assert "ima" in {s.name for s in available_specs()}


def test_precision_ceiling_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    c = precision_ceiling(y, ks=(3, 10))
    # R = other items of the class: 2, 2, 2, 1, 1, 0 (class 2 has no other item: NaN, left out like
    # retrieval_metrics' excluded queries); K = 10 is capped at the 5 other items
    np.testing.assert_allclose(c["p@3"], [2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, np.nan])
    np.testing.assert_allclose(c["p@10"], [2 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5, np.nan])
    assert np.nanmean(c["p@3"]) == pytest.approx((3 * 2 / 3 + 2 * 1 / 3) / 5)
    # a separate database: nothing excluded; a query class absent from it has no ceiling
    d = precision_ceiling(np.array([0, 1, 3]), ks=(2,), db_labels=np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(d["p@2"], [1.0, 0.5, np.nan])
    # FSDD's test split: 33 pairs per class -> 32 relevant others, P@50 <= 0.64, P@10 <= 1
    fsdd = precision_ceiling(np.repeat(np.arange(10), 33))
    assert np.allclose(fsdd["p@50"], 32 / 50) and np.allclose(fsdd["p@10"], 1.0)
    with pytest.raises(DataError):
        precision_ceiling(np.array([], dtype=int))


def test_precision_ceiling_is_what_a_perfect_embedding_scores():
    # each item at its class's corner: every relevant item ranks above every other, so P@K reaches the ceiling
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 57)
    e = torch.eye(4, dtype=torch.float64)[torch.as_tensor(y)] * 10
    r = retrieval_metrics(e, e, torch.as_tensor(y), torch.as_tensor(y), ks=(5, 20), metric="euclidean",
                          exclude_self=True)
    c = precision_ceiling(y, ks=(5, 20))
    assert r["p@5"] == pytest.approx(np.nanmean(c["p@5"])) and r["p@20"] == pytest.approx(np.nanmean(c["p@20"]))
    assert np.nanmean(c["p@20"]) < 1.0  # classes of ~14 items cannot fill 20 ranks


def test_bench_ima_tiny(tmp_path, monkeypatch, one_thread):
    # 50 synthesised utterances per digit (cached after the first run) -> 30 / 5 / 15 per class and split; the
    # paper-scale split pairs 40 test images per class with the 15 test utterances, reused 2-3 times each
    monkeypatch.setitem(ima_spec.LOAD_KW, "noisy-digits", {"speech_per_digit": 50, "n_per_class": {"test_paper": 40}})
    monkeypatch.setattr(ima_spec, "QUICK_RHOS", (0.3, 0.8))
    ctx = BenchContext(quick=True, seeds=[0], max_iterations=1, datasets=["noisy-digits"], out_dir=tmp_path,
                       progress=False, console=Console(width=200, quiet=True))
    res = run_spec("ima", ctx)
    if not res.tables and res.skipped:  # no eSpeak NG: nothing to synthesise the speech with
        pytest.skip(str(res.skipped))
    assert res.settings["datasets"] == ["noisy-digits"]
    assert res.settings["epochs"] == 1 and res.settings["rhos"] == [0.3, 0.8]
    assert len(res.tables) == 7
    imp, best, ret_paper, ret, cls, rob, _ = res.tables
    assert [r.method for r in imp.rows] == ["rho = 0.3", "rho = 0.8"]
    assert set(imp.metrics) == {f"{m} {k}" for m in ("image", "speech")
                                for k in ("P", "R", "F1", "F1 2-means", "F1 quantile", "AUC")}
    for r in imp.rows:
        for v in r.values.values():
            assert len(v) == 1 and 0.0 <= v[0] <= 1.0
    assert [r.method for r in best.rows] == [b[0] for b in ima_spec.BEST]
    rows = {r.method: r.values for r in best.rows}
    assert rows[ima_spec.BEST[0][0]]["threshold image"] == [0.5]  # the y < 0.5 rule
    assert rows[ima_spec.BEST[0][0]]["rho image"][0] in (0.3, 0.8)
    for label, *_ in ima_spec.BEST:
        assert 0.0 < rows[label]["threshold speech"][0] < 1.0 and 0.0 <= rows[label]["AUC image"][0] <= 1.0
    # two retrieval databases, each with its ceiling row first: 44 / 17 pairs per class
    assert "paper-scale" in ret_paper.title and "test split" in ret.title
    assert any(n.startswith("Reuse: an item with real speech shares its recording with 1.8 other") for n in
               ret_paper.notes)  # 40 draws of 15 utterances: 10 used 3 times, 5 twice: (10*3*2 + 5*2*1) / 40 = 1.75
    assert not any(n.startswith("Reuse") for n in ret.notes)
    for table, per_class in ((ret_paper, 44), (ret, 17)):
        ceiling, *methods = table.rows
        assert ceiling.method.startswith("ceiling")
        assert ceiling.values["P@10 50-d"] == [1.0]
        assert ceiling.values["P@50 2-d"] == [pytest.approx((per_class - 1) / 50)]
        assert len(methods) == 18  # 6 methods x (both, image, speech)
        for r in methods:
            for k in ("P@10 2-d", "P@50 2-d", "P@10 50-d", "P@50 50-d"):
                assert 0.0 <= r.values[k][0] <= ceiling.values[k][0] + 1e-12
        # IMA weighted and unweighted coincide from one modality
        w = next(r for r in methods if r.method == "IMA weighted (image)")
        u = next(r for r in methods if r.method == "IMA unweighted (image)")
        assert w.values == u.values
    dae = next(r for r in ret_paper.rows if r.method == "DAE (image+speech)")
    assert dae.paper["P@10 2-d"] == "0.5975" and dae.paper["P@50 50-d"] == "0.7818"
    assert not any(r.paper for r in ret.rows)  # the paper's figures sit beside the paper-scale database only
    for r in cls.rows:
        assert set(r.values) == {f"{k} {d}-d" for d in (2, 50)
                                 for k in ("accuracy", "accuracy image noise", "accuracy speech noise")}
    # robustness: every 50-d model (IMA once: its unweighted code is the same model) x the 3 subsets
    methods = [m for m in ima_spec.METHODS if m != "IMA unweighted"]
    assert [r.method for r in rob.rows] == [f"{m}: {s}" for m in methods for s in ("image", "speech", "image+speech")]
    for r in rob.rows:
        assert 0.0 <= r.values["MAP"][0] <= 1.0 and 0.0 <= r.values["probe"][0] <= 1.0
    assert len(json.loads((tmp_path / "ima_noisy-digits_robustness.json").read_text())) == len(methods)
    for png in ("ima_noisy-digits_importance.png", "ima_noisy-digits_tsne.png", "ima_noisy-digits_robustness.png"):
        p = tmp_path / png
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "ima.json").read_text())
    assert data["name"] == "ima" and len(data["tables"]) == 7
    assert "P@10 2-d" in (tmp_path / "ima.md").read_text()
