"""Smoke test of `commonspace bench ima` with tiny settings (small noisy-digits pairs, 1 epoch)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from commonspace.bench.runner import BenchContext, available_specs, run_spec
from commonspace.bench.specs import ima as ima_spec


def test_ima_spec_registered():
    assert "ima" in {s.name for s in available_specs()}


def test_bench_ima_tiny(tmp_path, monkeypatch, one_thread):
    # 30 / 10 / 20 images and utterances per class: small, and the cached default speech pool is reused
    monkeypatch.setitem(ima_spec.LOAD_KW, "noisy-digits", {"n_per_class": {"train": 30, "val": 10, "test": 20}})
    monkeypatch.setattr(ima_spec, "QUICK_RHOS", (0.3, 0.8))
    ctx = BenchContext(quick=True, seeds=[0], max_iterations=1, datasets=["noisy-digits"], out_dir=tmp_path,
                       progress=False, console=Console(width=200, quiet=True))
    res = run_spec("ima", ctx)
    if not res.tables and res.skipped:  # no eSpeak NG: nothing to synthesise the speech with
        pytest.skip(str(res.skipped))
    assert res.settings["datasets"] == ["noisy-digits"]
    assert res.settings["epochs"] == 1 and res.settings["rhos"] == [0.3, 0.8]
    titles = [t.title for t in res.tables]
    assert len(titles) == 5
    imp, best, ret, cls, _ = res.tables
    assert [r.method for r in imp.rows] == ["rho = 0.3", "rho = 0.8"]
    for r in imp.rows:
        for v in r.values.values():
            assert len(v) == 1 and 0.0 <= v[0] <= 1.0
    assert {r.method for r in best.rows} == {"y < 0.5, best rho by test F1 (the paper's reading)",
                                              "y < 0.5, rho chosen by val F1",
                                              "2-means threshold, best rho by test F1",
                                              "2-means threshold, rho chosen by val F1 (used for the representations)"}
    assert best.rows[0].values["rho image"][0] in (0.3, 0.8)
    methods = [r.method for r in ret.rows]
    assert len(methods) == 15  # 5 methods x (both, image, speech)
    assert "IMA weighted (image+speech)" in methods and "DAE (speech)" in methods
    dae = next(r for r in ret.rows if r.method == "DAE (image+speech)")
    assert dae.paper["P@10 2-d"] == "0.5975" and dae.paper["P@50 50-d"] == "0.7818"
    for r in ret.rows:
        for k in ("P@10 2-d", "P@50 2-d", "P@10 50-d", "P@50 50-d"):
            assert 0.0 <= r.values[k][0] <= 1.0
    for r in cls.rows:
        assert set(r.values) == {f"{k} {d}-d" for d in (2, 50)
                                 for k in ("accuracy", "accuracy image noise", "accuracy speech noise")}
    # IMA weighted and unweighted coincide from one modality
    w = next(r for r in ret.rows if r.method == "IMA weighted (image)")
    u = next(r for r in ret.rows if r.method == "IMA unweighted (image)")
    assert w.values == u.values
    for png in ("ima_noisy-digits_importance.png", "ima_noisy-digits_tsne.png"):
        p = tmp_path / png
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "ima.json").read_text())
    assert data["name"] == "ima" and len(data["tables"]) == 5
    assert "P@10 2-d" in (tmp_path / "ima.md").read_text()
