"""The CVS / M-CVS / RVS bench spec on UCI mfeat with tiny settings: tables, value ranges, the scaling PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from commonspace.bench.runner import BenchContext, available_specs
from commonspace.bench.specs import cvs as spec
from commonspace.data.dataset import DataError


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy shared machine spinning torch threads made this test
    ten times slower (220 s instead of 20 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ctx(tmp_path: Path) -> BenchContext:
    return BenchContext(quick=True, seeds=[0], out_dir=tmp_path, console=Console(file=open(tmp_path / "log.txt", "w")),
                        progress=False, datasets=["mfeat"], max_iterations=2)


def _values_ok(table) -> None:
    for r in table.rows:
        for vals in r.values.values():
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals), (table.title, r.method, vals)


def test_cvs_spec_tiny_run_on_mfeat(tmp_path: Path, one_thread: None) -> None:
    assert "cvs" in {s.name for s in available_specs()}
    ctx = _ctx(tmp_path)
    # tiny widths keep the test fast; the schedule, methods and tables are the real ones
    s = spec.Settings.for_ctx(ctx, dim=16, hidden=(16,), references=("pix",), batch_size=32)
    assert s.max_iterations == 2 and s.class_group_sizes == (5,)
    res = spec.run_with(ctx, s)
    titles = [t.title for t in res.tables]
    assert not res.skipped  # wikipedia is filtered out by ctx.datasets, not skipped

    summary = res.tables[0]
    assert summary.metrics == ["mAP@50", "MAP"]
    methods = [r.method for r in summary.rows]
    assert methods[:3] == ["CVS (no attention)", "CVS + attention, strict", "CVS + attention, paired"]
    assert [m for m in methods if m.startswith("M-CVS")] == [
        "M-CVS stage 1 (fou, fac), strict", "M-CVS stage 2 (+kar), strict", "M-CVS stage 3 (+pix), strict",
        "M-CVS stage 4 (+zer), strict", "M-CVS stage 4, paired"]
    assert "RVS (ref pix), strict" in methods and "RVS (ref pix), paired" in methods
    assert set(spec.CONTRASTIVE) <= set(methods)
    assert summary.rows[0].paper["mAP@50"].startswith("0.494")
    _values_ok(summary)

    pairs = res.tables[1]
    assert len(pairs.rows) == 21 and pairs.rows[-1].method == "average"  # 5 * 4 ordered pairs + average
    assert {"CVS", "CVS+att strict", "CVS+att paired", "M-CVS strict", "RVS pix strict", "contrastive InfoNCE",
            "contrastive SupCon"} <= set(pairs.metrics)
    _values_ok(pairs)

    rob5 = res.tables[2]
    assert "robustness" in rob5.title and rob5.metrics == ["MAP", "P@50", "x-MAP", "probe"]
    labels = ["CVS (no attention)", "CVS + attention", *spec.CONTRASTIVE, "M-CVS", "RVS (ref pix)"]
    assert [r.method for r in rob5.rows] == [f"{m}: {k} of 5 ({n} subsets)" for m in labels
                                             for k, n in zip(range(1, 6), (5, 10, 10, 5, 1), strict=True)]
    _values_ok(rob5)
    assert len(json.loads((tmp_path / "mfeat5_robustness.json").read_text())) == len(labels)

    t6 = next(t for t in res.tables if "Table 6 analog" in t.title)
    assert "pix->fou mAP@50" in t6.metrics and len(t6.rows) == 5  # CVS, CVS + attention x 2, contrastive x 2
    _values_ok(t6)
    rob2 = next(t for t in res.tables if t.title.startswith("mfeat pix / fou: robustness"))
    assert [r.method.split(": ")[1] for r in rob2.rows] == ["pix", "fou", "pix+fou"] * 4
    _values_ok(rob2)
    t13 = next(t for t in res.tables if "Table 13 analog" in t.title)
    assert t13.metrics == ["stage 1", "stage 2", "CVS (all classes at once)"]
    assert len(t13.rows) == 6  # first-stage / seen / all classes x two directions
    _values_ok(t13)

    targets = next(t for t in res.tables if t.title.startswith("TARGETS.md"))
    ours = [r for r in targets.rows if r.values]
    assert ours and all(len(r.values["mfeat pix->fou"]) == 1 for r in ours)
    assert any(r.paper.get("mfeat fou->pix") == ">= 0.72" for r in targets.rows)
    _values_ok(targets)

    timing = next(t for t in res.tables if "Figure 27" in t.title)
    assert [r.method for r in timing.rows] == ["2 views (+fac)", "3 views (+kar)", "4 views (+pix)",
                                               "5 views (+zer)"]
    assert all(v > 0 for r in timing.rows for vals in r.values.values() for v in vals)
    blocks = next(t for t in res.tables if "Figure 26" in t.title)
    assert [r.values["CVS total"][0] for r in blocks.rows] == [1, 3, 6, 10]
    assert [r.values["M-CVS trained"][0] for r in blocks.rows] == [1, 2, 3, 4]
    assert [r.values["RVS trained"][0] for r in blocks.rows] == [1, 1, 1, 1]
    png = tmp_path / "cvs_scaling.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".cvs_scaling.png.*"))  # no temp file left behind
    paths = res.write(tmp_path)
    assert "Table 13 analog" in paths[1].read_text() and len(titles) == 9
    for png in ("mfeat5_robustness.png", "mfeat_robustness.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_validate_stage_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMMONSPACE_CVS_STAGE_ORDER", "pix,fou,kar;fac;zer")
    s = spec.Settings.for_ctx(_ctx(tmp_path))
    assert s.stage_order == [["pix", "fou", "kar"], ["fac"], ["zer"]]
    monkeypatch.setenv("COMMONSPACE_CVS_STAGE_ORDER", "pix;fou,kar,fac,zer")
    with pytest.raises(DataError, match="at least two"):
        spec.Settings.for_ctx(_ctx(tmp_path))
