"""Issue 16: ``commonspace bench --jobs N`` runs seeds in worker processes with the sequential run's results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from commonspace import MultimodalDataset, create
from commonspace.bench.report import BenchResult, ResultTable, Row
from commonspace.bench.runner import BenchContext, BenchSpec, extend_nested, map_seeds, register_spec, run_spec
from commonspace.train import TrainConfig, Trainer
from commonspace.train.seed import seed_everything

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are forked")


@pytest.fixture
def one_thread():
    """The parent as ``run_spec`` leaves it for a one-thread spec, after a two-thread OpenMP region has run (forked
    children of a process that used its OpenMP pool hang if they use more than one thread themselves)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data() -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(96, 12, generator=g), "b": torch.randn(96, 5, generator=g)}
    return MultimodalDataset(feats, labels=torch.randint(0, 3, (96,), generator=g),
                             splits={"train": torch.arange(64), "test": torch.arange(64, 96)})


def _train_one(seed: int) -> dict:
    """What a spec does per seed: reseed, train a small model, embed the test split."""
    seed_everything(seed)
    data = _data()
    model = create("bidnn", data.dims, hidden=16, central=8)
    cfg = TrainConfig.for_model(model, epochs=3, batch_size=16, progress=False, seed=seed)
    hist = Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    with torch.no_grad():
        emb = model.embed_dataset(data, data.split("test"))
    return {"pid": os.getpid(), "loss": [h["train"]["total"] for h in hist], "emb": emb.numpy().tobytes()}


def _ctx(tmp_path: Path, jobs: int | None) -> BenchContext:
    return BenchContext(seeds=[0, 1, 2], out_dir=tmp_path, console=Console(file=open(os.devnull, "w")),
                        progress=False, jobs=jobs)


def test_seeds_in_worker_processes_equal_the_sequential_run(tmp_path: Path, one_thread: None) -> None:
    one = map_seeds(_ctx(tmp_path, 1), _train_one)
    two = map_seeds(_ctx(tmp_path, 2), _train_one)
    assert {r["pid"] for r in one} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in two}  # the seeds really ran in other processes
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == b["loss"] and a["emb"] == b["emb"]
    assert one[0]["emb"] != one[1]["emb"]  # the seeds differ, so equal results are not a coincidence


def test_a_closure_and_the_seed_order(tmp_path: Path, one_thread: None) -> None:
    offset = 100  # a closure over a local: the workers are forked, nothing is pickled but the results
    out = map_seeds(_ctx(tmp_path, 2), lambda s: s + offset, seeds=[3, 1, 2, 0])
    assert out == [103, 101, 102, 100]


def test_a_failing_seed_raises_its_error(tmp_path: Path, one_thread: None) -> None:
    def fn(seed: int) -> int:
        if seed == 1:
            raise ValueError("seed 1 failed")
        return seed

    with pytest.raises(ValueError, match="seed 1 failed"):
        map_seeds(_ctx(tmp_path, 2), fn)


def test_extend_nested_appends_in_seed_order() -> None:
    total: dict = {}
    for part in ({"m": {"x": [1.0]}, "n": [0]}, {"m": {"x": [2.0], "y": [5.0]}, "n": [1]}):
        extend_nested(total, part)
    assert total == {"m": {"x": [1.0, 2.0], "y": [5.0]}, "n": [0, 1]}


def _tiny_spec(ctx: BenchContext) -> BenchResult:
    rows: dict[str, dict[str, list[float]]] = {}
    for part in map_seeds(ctx, lambda s: {"bidnn": {"final loss": [_train_one(s)["loss"][-1]]}}):
        extend_nested(rows, part)
    res = BenchResult("jobs-probe", "none", settings={"seeds": ctx.seeds})
    res.tables.append(ResultTable("final training loss per seed", ["final loss"],
                                  [Row(k, v) for k, v in rows.items()], scale=1.0, digits=6))
    return res


register_spec(BenchSpec("jobs-probe", "none", "a tiny spec for the --jobs test", _tiny_spec, threads=1))


def test_run_spec_with_jobs_writes_the_sequential_tables(tmp_path: Path) -> None:
    runs = {}
    for jobs in (1, 2, None):
        out = tmp_path / f"jobs{jobs}"
        res = run_spec("jobs-probe", _ctx(out, jobs))
        assert res.settings["jobs"] == (jobs or max(1, len(os.sched_getaffinity(0))))  # None: cores / 1 thread
        runs[jobs] = json.loads(next(out.glob("*.json")).read_text())["tables"]
    assert runs[1] == runs[2] == runs[None]
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_spec("jobs-probe", _ctx(tmp_path, 0))


def test_jobs_with_more_threads_is_refused_before_anything_runs(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, 2)
    ctx.threads = 2
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="add --threads 1"):
        run_spec("jobs-probe", ctx)
    assert torch.get_num_threads() == before and not list(tmp_path.glob("*.json"))


def test_a_two_thread_parent_runs_the_seeds_in_order_itself(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = map_seeds(_ctx(tmp_path, 2), lambda s: os.getpid())
    finally:
        torch.set_num_threads(before)
    assert out == [os.getpid()] * 3
