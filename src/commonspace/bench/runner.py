"""The general benchmark runner: one spec per paper table, selected by name."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console

from commonspace.bench.report import BenchResult

__all__ = ["BenchContext", "BenchSpec", "available_specs", "extend_nested", "map_seeds", "register_spec",
           "run_spec"]

T = TypeVar("T")


@dataclass
class BenchContext:
    """What every spec gets: run size, seeds, where data and results live, where to talk."""

    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    out_dir: Path = Path("bench-results")
    data_root: Path | None = None
    console: Console = field(default_factory=Console)
    progress: bool = True
    datasets: list[str] | None = None  # restrict to these dataset names
    max_iterations: int | None = None  # cap on training iterations (smoke tests)
    threads: int | None = None  # torch intra-op threads while the spec runs; None = the spec's own choice
    resume: bool = False  # reuse the runs an interrupted bench recorded in out_dir (specs that record runs)
    #: seeds run at once in worker processes (``map_seeds``); None = one per core for one-thread specs, else 1
    jobs: int | None = None

    def wants(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


@dataclass
class BenchSpec:
    name: str
    paper: str
    description: str
    run: Callable[[BenchContext], BenchResult]
    #: torch threads the spec runs with unless the user says otherwise (None: leave torch's setting). The
    #: small layers of most specs run faster on one thread, and timings are comparable across machines.
    threads: int | None = None
    #: whether the spec runs its seeds through ``map_seeds`` (else ``--jobs`` has nothing to run at once)
    parallel_seeds: bool = True


_SPECS: dict[str, BenchSpec] = {}


def register_spec(spec: BenchSpec) -> BenchSpec:
    _SPECS[spec.name] = spec
    return spec


def _load_specs() -> None:
    import commonspace.bench.specs  # noqa: F401  (registers every spec)


def available_specs() -> list[BenchSpec]:
    _load_specs()
    return [_SPECS[k] for k in sorted(_SPECS)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: the task of the worker processes of ``map_seeds``: set before they fork, so a closure needs no pickling
_TASK: list[tuple[Callable[[int], Any], Sequence[int]]] = []


def _worker_init() -> None:
    # one thread, always: a forked child that runs OpenMP regions of more threads than one hangs in libgomp when
    # the parent had used its pool (and a BLAS's bits may change with its thread count)
    torch.set_num_threads(1)


def _worker_call(i: int) -> Any:
    fn, seeds = _TASK[-1]
    return fn(seeds[i])


def map_seeds(ctx: BenchContext, fn: Callable[[int], T], seeds: Sequence[int] | None = None) -> list[T]:
    """``[fn(seed) for seed in seeds]`` (default ``ctx.seeds``), run ``ctx.jobs`` seeds at a time in worker processes.

    ``fn`` must depend on its seed alone, never on what an earlier seed left behind (the specs reseed every
    generator per seed), so the results equal the sequential run's, bit for bit (tests/test_bench_jobs.py). Workers
    are forked, so ``fn`` may be a closure; each returns its result pickled, runs on one torch thread, as the
    parent must (``run_spec`` refuses ``jobs > 1`` with more threads), and draws no progress bars
    (``ctx.progress`` is off in them: bars of several processes would mix). Where processes cannot be forked (not
    Linux / macOS), or the parent runs more than one thread, seeds run one after another.
    """
    seeds = list(ctx.seeds if seeds is None else seeds)
    jobs = min(ctx.jobs or 1, len(seeds))
    if jobs <= 1 or torch.get_num_threads() != 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(s) for s in seeds]
    progress = ctx.progress
    ctx.progress = False  # read by fn in the workers, which are forked below
    _TASK.append((fn, seeds))
    try:
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init) as pool:
            return pool.map(_worker_call, range(len(seeds)), chunksize=1)
    finally:
        _TASK.pop()
        ctx.progress = progress


def extend_nested(into: dict, part: dict) -> dict:
    """Append the lists of ``part`` to those of ``into``, key by key at any depth (other values replace): per-seed
    accumulators merged in seed order, as a sequential loop would have appended them."""
    for k, v in part.items():
        if isinstance(v, dict):
            extend_nested(into.setdefault(k, {}), v)
        elif isinstance(v, list):
            into.setdefault(k, []).extend(v)
        else:
            into[k] = v
    return into


def run_spec(name: str, ctx: BenchContext) -> BenchResult:
    """Run one spec, print its tables beside the paper's, and write JSON + Markdown."""
    _load_specs()
    if name not in _SPECS:
        raise KeyError(f"unknown benchmark {name!r}; available: {sorted(_SPECS)}")
    spec = _SPECS[name]
    threads = ctx.threads if ctx.threads is not None else spec.threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    if ctx.jobs is not None and ctx.jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {ctx.jobs}")
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if not spec.parallel_seeds:
        if ctx.jobs is not None and ctx.jobs > 1:
            ctx.console.print(f"[yellow]note[/yellow] bench {name} runs its seeds one after another; --jobs is "
                              "ignored")
        ctx = replace(ctx, jobs=1)
    if ctx.jobs is None:  # one-thread specs: a seed per core; the others one seed at a time
        ctx = replace(ctx, jobs=_cores() if torch.get_num_threads() == 1 else 1)
    elif ctx.jobs > 1 and (n := torch.get_num_threads()) != 1:
        torch.set_num_threads(prev)
        raise ValueError(f"jobs={ctx.jobs} runs each seed in its own process on one torch thread, but this spec "
                         f"runs on {n}; add --threads 1 (or use --jobs 1)")
    t0 = time.perf_counter()
    try:
        result = spec.run(ctx)
    finally:
        n_used = torch.get_num_threads()
        torch.set_num_threads(prev)
    result.seconds = time.perf_counter() - t0
    result.settings["torch_threads"] = n_used
    result.settings["jobs"] = ctx.jobs
    for what, why in result.skipped:
        ctx.console.print(f"[yellow]skipped[/yellow] {what}: {why}")
    for t in result.tables:
        ctx.console.print(t.to_rich())
        for n in t.notes:
            ctx.console.print(f"  [dim]- {n}[/dim]")
    paths = result.write(ctx.out_dir)
    ctx.console.print(f"wrote {', '.join(str(p) for p in paths)} ({result.seconds:.1f} s)")
    return result
