"""The bench runner and the BiDNN spec on builtin data (tiny settings), plus report rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from commonspace.bench.report import BenchResult, ResultTable, Row
from commonspace.bench.runner import BenchContext, available_specs, run_spec


def test_report_renders_ours_beside_paper(tmp_path: Path) -> None:
    t = ResultTable("t", ["P@10"], [Row("m", {"P@10": [0.5, 0.7]}, {"P@10": "61.3"}), Row("n", {"P@10": [0.1]})])
    assert t.header() == ["method", "P@10 (ours)", "P@10 (paper)"]
    assert t.body()[0] == ["m", "60.00 ± 10.00", "61.3"]
    assert t.body()[1] == ["n", "10.00", "-"]
    res = BenchResult("x", "paper", [t], skipped=[("wiki", "absent")])
    paths = res.write(tmp_path)
    assert json.loads(paths[0].read_text())["tables"][0]["rows"][0]["mean_std"]["P@10"] == pytest.approx([0.6, 0.1])
    assert "wiki: absent" in paths[1].read_text()


def test_bidnn_spec_runs_on_digits_and_skips_missing_wikipedia(tmp_path: Path) -> None:
    assert "bidnn" in {s.name for s in available_specs()}
    ctx = BenchContext(quick=True, seeds=[0], out_dir=tmp_path, data_root=tmp_path / "nowhere",
                       console=Console(file=open(tmp_path / "log.txt", "w")), progress=False,
                       datasets=["digits", "wikipedia"], max_iterations=30)
    res = run_spec("bidnn", ctx)
    assert [k for k, _ in res.skipped] == ["wikipedia"]
    assert "wikipedia" in res.skipped[0][1].lower()
    p10 = res.tables[0]
    methods = {r.method for r in p10.rows}
    assert {"raw A", "raw B", "linear combination", "AE #1 (concatenated)", "AE #2 (separate branches)",
            "BiDNN embedded A+B", "BiDNN expanded A+B", "contrastive (InfoNCE) embedded A+B"} <= methods
    for r in p10.rows:
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in r.values["P@10"])
    assert "contrastive (InfoNCE)" in {r.method for r in res.tables[1].rows}
    rob = res.tables[2]
    assert "robustness" in rob.title
    assert [r.method for r in rob.rows] == [f"{m}: {s}" for m in ("raw", "AE #1 (concatenated)",
                                                                   "AE #2 (separate branches)", "linear CCA",
                                                                   "contrastive (InfoNCE)", "BiDNN")
                                            for s in ("left", "right", "left+right")]
    for r in rob.rows:
        assert all(0.0 <= v <= 1.0 for vals in r.values.values() for v in vals)
    assert (tmp_path / "digits_robustness.png").exists() and (tmp_path / "digits_robustness.json").exists()
    assert (tmp_path / "bidnn.json").exists() and (tmp_path / "bidnn.md").exists()


def test_ssl_spec_runs_on_digits(tmp_path: Path) -> None:
    ctx = BenchContext(quick=True, seeds=[0], out_dir=tmp_path, console=Console(file=open(tmp_path / "log.txt", "w")),
                       progress=False, datasets=["digits-halves"], max_iterations=1)
    res = run_spec("ssl", ctx)
    table, detail = res.tables
    # Table 1: the paper's MJLL by PCD beside the paper's figures, the CD MJLL as a control without them
    assert [r.method for r in table.rows] == ["MJLL (PCD)", "MJLL (CD)", "SSL H(Hx||Hy)", "SSL H(Hy||Hx)",
                                              "SSL corr (CCA)"]
    assert table.rows[0].paper["both"] == "1.57" and table.rows[1].paper == {}
    for r in table.rows:
        assert set(r.values) == {"both", "left", "right"}
        assert all(0.0 <= v[0] <= 1.0 for v in r.values.values())
    assert r.paper["left"] == "13.23"
    # the headline single-modality column is the joint-code probe on inferred codes; --quick has no own probes
    assert detail.metrics == [f"{m}: joint probe, {k}" for m in ("left", "right") for k in ("inferred", "dropped")]
    for t, d in zip(table.rows, detail.rows, strict=True):
        assert t.values["left"] == d.values["left: joint probe, inferred"]


def test_runner_sets_the_specs_threads_records_them_and_restores(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from commonspace.bench import runner
    from commonspace.bench.runner import BenchSpec

    seen: list[int] = []

    def run(ctx: BenchContext) -> BenchResult:
        seen.append(torch.get_num_threads())
        if ctx.quick:
            raise RuntimeError("spec failed")
        return BenchResult("threads-probe", "none")

    available_specs()  # load the real specs first, so the probe is removed again after the test
    monkeypatch.setitem(runner._SPECS, "threads-probe", BenchSpec("threads-probe", "none", "test only", run, threads=1))
    before = torch.get_num_threads()
    console = Console(file=open(tmp_path / "log.txt", "w"))
    res = run_spec("threads-probe", BenchContext(out_dir=tmp_path, console=console))
    assert seen[-1] == 1 and res.settings["torch_threads"] == 1
    assert torch.get_num_threads() == before
    res = run_spec("threads-probe", BenchContext(out_dir=tmp_path, console=console, threads=2))
    assert seen[-1] == 2 and res.settings["torch_threads"] == 2
    with pytest.raises(RuntimeError, match="spec failed"):  # restored on failure too
        run_spec("threads-probe", BenchContext(quick=True, out_dir=tmp_path, console=console))
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        run_spec("threads-probe", BenchContext(out_dir=tmp_path, console=console, threads=0))
