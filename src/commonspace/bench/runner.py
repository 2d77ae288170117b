"""The general benchmark runner: one spec per paper table, selected by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from commonspace.bench.report import BenchResult

__all__ = ["BenchContext", "BenchSpec", "available_specs", "register_spec", "run_spec"]


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


_SPECS: dict[str, BenchSpec] = {}


def register_spec(spec: BenchSpec) -> BenchSpec:
    _SPECS[spec.name] = spec
    return spec


def _load_specs() -> None:
    import commonspace.bench.specs  # noqa: F401  (registers every spec)


def available_specs() -> list[BenchSpec]:
    _load_specs()
    return [_SPECS[k] for k in sorted(_SPECS)]


def run_spec(name: str, ctx: BenchContext) -> BenchResult:
    """Run one spec, print its tables beside the paper's, and write JSON + Markdown."""
    _load_specs()
    if name not in _SPECS:
        raise KeyError(f"unknown benchmark {name!r}; available: {sorted(_SPECS)}")
    spec = _SPECS[name]
    threads = ctx.threads if ctx.threads is not None else spec.threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        result = spec.run(ctx)
    finally:
        n_used = torch.get_num_threads()
        torch.set_num_threads(prev)
    result.seconds = time.perf_counter() - t0
    result.settings["torch_threads"] = n_used
    for what, why in result.skipped:
        ctx.console.print(f"[yellow]skipped[/yellow] {what}: {why}")
    for t in result.tables:
        ctx.console.print(t.to_rich())
        for n in t.notes:
            ctx.console.print(f"  [dim]- {n}[/dim]")
    paths = result.write(ctx.out_dir)
    ctx.console.print(f"wrote {', '.join(str(p) for p in paths)} ({result.seconds:.1f} s)")
    return result
