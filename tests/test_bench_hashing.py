"""The ``hashing`` bench spec with tiny settings: rows, MAP values in [0, 1], PNG curves, clean skips."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from commonspace.bench.runner import BenchContext, available_specs, run_spec
from commonspace.bench.specs import hashing
from commonspace.data.builtin.two_digits import build_two_digit_set


def _fake_audio():
    """Stand-in utterance features (no FSDD needed): digit-dependent means plus noise."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 10)
    x = (rng.normal(size=(y.size, 8)) + np.eye(10, 8)[y] * 2).astype(np.float32)
    take = np.arange(y.size) % 10
    return x, y, {"train": np.flatnonzero(take < 6), "val": np.flatnonzero(take == 6),
                  "test": np.flatnonzero(take > 6)}


def _ctx(tmp_path: Path, data_root: Path | None,
         datasets: tuple[str, ...] = ("wikipedia", "two-digits", "mfeat-pairs")) -> BenchContext:
    return BenchContext(quick=True, seeds=[0], out_dir=tmp_path, data_root=data_root,
                        console=Console(file=open(tmp_path / "log.txt", "w")), progress=False,
                        datasets=list(datasets), max_iterations=1)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch, a 300-item Wikipedia train subset, 200-item two-digit (synthetic audio) and mfeat-pair sets."""
    tiny_settings = []
    for s in hashing.SETTINGS:
        if s.key == "wikipedia":
            plan = dataclasses.replace(s.quick, train_cap=300)
        else:
            plan = dataclasses.replace(s.quick, sizes={"n": 200, "n_query": 40, "n_train": 100, "n_val": 30},
                                       hp={**s.quick.hp, "image_width": 16})
        tiny_settings.append(dataclasses.replace(s, quick=plan))
    monkeypatch.setattr(hashing, "SETTINGS", tiny_settings)
    x, y, splits = _fake_audio()
    monkeypatch.setattr(hashing, "load_two_digits", lambda root, sizes: build_two_digit_set(
        seed=0, audio=x, audio_labels=y, audio_splits=splits, **sizes))


def _kn_on(m: hashing.Method) -> bool:
    return m.model == "mahash" and m.hp.get("use_kn", True)


def test_hashing_spec_tiny(tmp_path: Path, tiny: None) -> None:
    assert "hashing" in {s.name for s in available_specs()}
    res = run_spec("hashing", _ctx(tmp_path, None))  # Wikipedia from shared/data when present
    ran = [t.title.split(":")[0] for t in res.tables if "MAP@all" in t.title]
    assert "two-digits" in ran and "mfeat-pairs" in ran
    if "wikipedia" not in ran:
        assert [k for k, _ in res.skipped] == ["wikipedia"] and "wikipedia" in res.skipped[0][1].lower()
    expected = {m.label for m in hashing.methods("audio")}
    for t in res.tables:
        key = t.title.split(":")[0]
        if "MAP@all" in t.title:
            assert t.metrics == ["32 bits"]
            # Wikipedia's 1 x 1 maps: the rows whose kernel network cannot act are marked
            want = {m.label + (" [KN inert]" if key == "wikipedia" and _kn_on(m) else "")
                    for m in hashing.methods("audio" if key == "two-digits" else "text")}
            assert {r.method for r in t.rows} == want
            for r in t.rows:
                assert len(r.values["32 bits"]) == 1
                assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in r.values["32 bits"])
        else:  # the paired differences to the fusion baselines and ablations
            assert {r.method for r in t.rows} == {f"Ours - {b}" for b in hashing.FUSION_BASELINES}
        for group in ("fusion", "unimodal"):
            assert (tmp_path / f"{key}_pr_32bits_{group}.png").stat().st_size > 0
            assert (tmp_path / f"{key}_precision_at_n_32bits_{group}.png").stat().st_size > 0
    assert expected <= {r.method.removesuffix(" [KN inert]") for t in res.tables for r in t.rows}
    assert (tmp_path / "hashing.json").exists() and (tmp_path / "hashing.md").exists()


def test_hashing_spec_skips_missing_data(tmp_path: Path) -> None:
    # mfeat-pairs needs only shipped data and is not asked for here
    res = run_spec("hashing", _ctx(tmp_path, tmp_path / "nowhere", ("wikipedia", "two-digits")))
    assert [k for k, _ in res.skipped] == ["wikipedia", "two-digits"]
    assert "wikipedia" in res.skipped[0][1].lower() and "spoken digit" in res.skipped[1][1].lower()
    assert res.tables == []
    assert (tmp_path / "hashing.md").exists()


@pytest.mark.parametrize("bits", [16, 48])
def test_csq_trains_on_single_label_data_at_every_code_length(bits: int) -> None:
    """48 bits is not a power of 2: CSQ's random centres need the class count, which the spec must pass."""
    import torch

    from commonspace.data.dataset import MultimodalDataset

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 10
    data = MultimodalDataset({"image": torch.randn(60, 8, 1, 1, generator=g), "text": torch.randn(60, 5, generator=g)},
                             labels=y, splits={"train": torch.arange(40), "val": torch.arange(40, 60)})
    setting = next(s for s in hashing.SETTINGS if s.key == "wikipedia")
    plan = dataclasses.replace(setting.quick, hp={"image_backbone": "maps", "image_width": 8, "text_widths": (8,)})
    csq = next(m for m in hashing.methods("text") if m.label.startswith("CSQ"))
    model, _ = hashing._train(csq, data, setting, plan, bits, seed=0, epochs=1, patience=1, progress=False)
    assert model.config["num_classes"] == 10


def test_resume_reuses_recorded_runs(tmp_path: Path, tiny: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed bench reads the recorded runs back (no training) and gives the same tables; a line cut short
    by a kill is retrained; a fresh run starts the record anew."""
    ctx = _ctx(tmp_path, None, ("mfeat-pairs",))
    first = run_spec("hashing", ctx)
    log = tmp_path / "mfeat-pairs-runs.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == len(hashing.methods("text"))
    calls: list[str] = []
    real = hashing._run_one
    monkeypatch.setattr(hashing, "_run_one", lambda m, *a, **k: calls.append(m.label) or real(m, *a, **k))
    again = run_spec("hashing", dataclasses.replace(ctx, resume=True))
    assert calls == []
    assert [r.values for r in again.tables[0].rows] == [r.values for r in first.tables[0].rows]
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the last run was killed mid-line
    run_spec("hashing", dataclasses.replace(ctx, resume=True))
    assert calls == [hashing.methods("text")[-1].label]
    assert [json.loads(x)["method"] for x in log.read_text().splitlines()] == [m.label for m in hashing.methods("text")]
    run_spec("hashing", ctx)  # not resumed: every run again
    assert len(calls) == 1 + len(hashing.methods("text"))
    assert len(log.read_text().splitlines()) == len(hashing.methods("text"))


def test_order_verdict_counts_only_code_lengths_that_ran() -> None:
    st = hashing._Store()
    st.maps = {"Ours (KN + AN)": {16: [0.9, 0.8], 32: [0.7]}, "w/o AN": {16: [0.85, 0.7], 32: [0.8]},
               "w/o KN": {16: [0.8, 0.72], 32: [0.6]}, "Concat": {16: [0.5, 0.5], 32: [0.5]},
               "DTH": {16: [0.95, 0.9], 32: [0.6]}}
    order, unimodal = hashing._order_verdict(st, (16, 32, 48, 64))
    assert "in mean at 1/2 code lengths, in 1/3 (code length, seed) runs" in order
    assert "16 bits -0.0750 (vs DTH)" in unimodal and "32 bits +0.1000 (vs DTH)" in unimodal
