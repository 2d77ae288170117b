"""Robustness to missing modalities: subsets, random drops, a model that ignores a modality, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.eval.retrieval import retrieval_metrics
from commonspace.eval.robustness import (
    all_subsets,
    parse_subsets,
    plot_robustness,
    random_drop_mask,
    robustness,
    summary_rows,
)
from commonspace.models.base import MultimodalModel, create

runner = CliRunner()


def _data(n: int = 150, seed: int = 0, missing: bool = False) -> MultimodalDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    feats = {m: (rng.normal(size=(3, d))[y] + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
             for m, d in (("a", 5), ("b", 4), ("c", 3))}
    mask = np.ones((n, 3), dtype=bool)
    if missing:
        mask[::5, 1] = False
        feats["b"][~mask[:, 1]] = 0
    perm = rng.permutation(n)
    splits = {"train": perm[: n // 2], "test": perm[n // 2:]}
    return MultimodalDataset(feats, mask, y, splits)


class IgnoresB(MultimodalModel):
    """Joint = a fixed projection of ``a`` and ``c``; modality ``b`` is read by nothing."""

    def __init__(self, dims) -> None:
        super().__init__(dims)
        g = torch.Generator().manual_seed(0)
        self.pa = nn.Parameter(torch.randn(5, 4, generator=g))
        self.pc = nn.Parameter(torch.randn(3, 4, generator=g))

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        return {"a": batch.features["a"] @ self.pa, "c": batch.features["c"] @ self.pc}

    def embed(self, batch: Batch) -> Tensor:
        e = self.encode(batch)
        return e["a"] * batch.present("a")[:, None] + e["c"] * batch.present("c")[:, None]


def test_subsets_are_listed_by_size_and_checked() -> None:
    assert all_subsets(["a", "b", "c"]) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"),
                                            ("a", "b", "c")]
    assert parse_subsets(["c,a", "b"], ["a", "b", "c"]) == [("b",), ("a", "c")]
    for bad, needle in ((["a,x"], "unknown"), ([","], "empty"), (["a,a"], "twice"), (["a,b", "b,a"], "twice")):
        with pytest.raises(DataError, match=needle):
            parse_subsets(bad, ["a", "b", "c"])


def test_random_drops_keep_one_modality_and_repeat_with_the_seed() -> None:
    mask = torch.ones(20000, 2, dtype=torch.bool)
    mask[:10, :] = False  # rows with nothing present stay as they are
    mask[10:20, 1] = False  # a row with one modality keeps it
    out = random_drop_mask(mask, 0.5, seed=3)
    assert torch.equal(out, random_drop_mask(mask, 0.5, seed=3))
    assert not torch.equal(out, random_drop_mask(mask, 0.5, seed=4))
    assert not (out & ~mask).any()
    assert not out[:10].any() and out[10:20, 0].all()
    assert out[10:].any(1).all()
    # independent drops given "not both gone": P(one given modality dropped) = p / (1 + p) = 1/3
    rate = 1.0 - out[20:].float().mean().item()
    assert abs(rate - 1 / 3) < 0.01
    assert torch.equal(random_drop_mask(mask, 0.0), mask)
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        random_drop_mask(mask, 1.0)


def test_a_model_that_ignores_a_modality_scores_the_same_without_it() -> None:
    data = _data(missing=True)
    res = robustness(IgnoresB(data.dims), data, query="test", probe_train="train")
    rows = {r["subset"]: r for r in res["rows"]}
    assert len(rows) == 7 and [r["present"] for r in res["rows"]] == [1, 1, 1, 2, 2, 2, 3]
    for with_b, without in (("a+b", "a"), ("b+c", "c"), ("a+b+c", "a+c")):
        assert rows[with_b]["joint"] == rows[without]["joint"]
        assert rows[with_b]["probe"] == rows[without]["probe"]
        assert rows[with_b]["cross_modal"] == rows[without]["cross_modal"]
    # b alone leaves nothing the model reads: its joint vectors are zero and retrieval is far worse
    assert rows["b"]["joint"]["map"] < rows["a"]["joint"]["map"] - 0.1
    # every subset row with b keeps the rows that have b (one in five of them has not)
    q = data.split("test")
    no_b = int((~data.mask[q, 1]).sum())
    assert rows["b"]["left_out"] == no_b > 0 and rows["a"]["left_out"] == 0


def test_the_full_subset_equals_plain_joint_retrieval() -> None:
    data = _data()
    model = create("raw", data.dims)
    res = robustness(model, data, query="test", ks=(5,), probe_train=None)
    full = next(r for r in res["rows"] if r["subset"] == "a+b+c")
    q = data.split("test")
    joint = model.embed_dataset(data, q)
    ref = retrieval_metrics(joint, joint, data.labels[q], data.labels[q], ks=(5,), map_at=(5,),
                            exclude_self=torch.arange(q.numel()))
    assert full["joint"]["map"] == pytest.approx(float(ref["map"]))
    assert full["joint"]["p@5"] == pytest.approx(float(ref["p@5"]))
    assert "probe" not in full
    # q->q leaves the item out, across modalities the paired item stays (cross_modal_retrieval's rule)
    assert set(full["cross_modal"]) == {"a->a", "b->b", "c->c"}  # raw vectors of other widths are not compared


def test_drop_rate_rows_and_a_separate_database() -> None:
    data = _data()
    model = create("raw", data.dims)
    res = robustness(model, data, query="test", database="train", subsets=["a"], drop_rates=[0.0, 0.5],
                     probe_train="train", seed=1)
    assert [r["subset"] for r in res["rows"]] == ["a", "drop 0", "drop 0.5"]
    d0, d5 = res["rows"][1], res["rows"][2]
    assert d0["present"] == 3 and 1.0 < d5["present"] < 3.0
    assert d5["queries"] == res["queries"] == 75 and res["database"] == 75
    again = robustness(model, data, query="test", database="train", subsets=["a"], drop_rates=[0.5], seed=1)
    assert again["rows"][1]["joint"] == d5["joint"]
    flat = summary_rows(res, 10)
    assert flat[0]["subset"] == "a" and flat[0]["probe"] == res["rows"][0]["probe"]["accuracy"]


def test_bad_requests_are_refused() -> None:
    data = _data()
    model = create("raw", data.dims)
    with pytest.raises(DataError, match="unknown modalities"):
        robustness(model, data, subsets=["a,z"])
    with pytest.raises(DataError, match="labels"):
        robustness(model, MultimodalDataset(dict(data.features), data.mask, None, data.splits))
    with pytest.raises(DataError, match="no split"):
        robustness(model, data, query="nope")


def test_plot_has_one_line_per_run(tmp_path: Path) -> None:
    data = _data()
    a = robustness(create("raw", data.dims), data, probe_train=None)
    b = robustness(IgnoresB(data.dims), data, probe_train=None)
    path = plot_robustness({"raw": a, "ignores-b": b}, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="metric"):
        plot_robustness({"raw": a}, tmp_path / "x.png", metric="p@99")


def _npz(path: Path) -> Path:
    d = _data(missing=True)
    np.savez(path, **{f"x_{m}": d.features[m].numpy() for m in d.modalities}, labels=d.labels.numpy(),
             mask=d.mask.numpy(), modalities=np.array(list(d.modalities)))
    return path


def test_cli_subsets_json_and_plot_for_two_runs(tmp_path: Path, one_thread: None) -> None:
    data = _npz(tmp_path / "d.npz")
    for name, model in (("cvs", "cvs"), ("raw", "raw")):
        r = runner.invoke(app, ["train", "--data", str(data), "--model", model, "--out", str(tmp_path / name),
                                "--epochs", "2", "--no-progress", "--set", "dim=8", "--set", "hidden=[16]"]
                          if model == "cvs" else
                          ["train", "--data", str(data), "--model", model, "--out", str(tmp_path / name),
                           "--no-progress"])
        assert r.exit_code == 0, r.output
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "cvs"), "--model", str(tmp_path / "raw"),
                            "--data", str(data), "--subsets", "--drop-rate", "0.3", "--json", str(js),
                            "--plot", str(png), "--k", "5"])
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert set(res["runs"]) == {"cvs", "raw"}
    assert [row["subset"] for row in res["runs"]["cvs"]["rows"]][-2:] == ["a+b+c", "drop 0.3"]
    assert "a+b+c" in r.output and png.exists()
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "cvs"), "--data", str(data), "--subset", "a,q"])
    assert r.exit_code == 2 and "unknown modalities" in r.output
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "cvs"), "--data", str(data), "--drop-rate", "1"])
    assert r.exit_code == 2 and "[0, 1)" in r.output
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "cvs"), "--model", str(tmp_path / "raw"),
                            "--data", str(data)])
    assert r.exit_code == 2 and "--subsets" in r.output
