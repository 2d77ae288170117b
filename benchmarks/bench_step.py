"""One training step against the machine's floor for it: the same step's matrix multiplies, run alone (issue 16).

    .venv/bin/python benchmarks/bench_step.py [--models bidnn,ae_split,cvs,ima,mahash,contrastive]
        [--batches 128,1024] [--shape wikipedia] [--threads 1] [--steps 40] [--repeats 5]

For each model and batch size:

* **step**: the median time of one optimisation step through the real :class:`~commonspace.train.Trainer`
  (batch gathering, forward, backward, optimizer, the loss sums), from its per-epoch ``samples_per_s`` over
  epochs of ``--steps`` steps, the first epoch left out (warm-up);
* **floor**: the median time of the matrix multiplies that one step runs (every ``aten::mm``, ``addmm``, ``bmm``,
  ``baddbmm``, ``addmv`` and ``mv`` of the forward, the backward and the optimizer, as ``torch.profiler`` records
  them with their shapes), replayed back to back on contiguous random tensors of those shapes;
* **MACs/sample**: the multiply-adds of those products per sample (forward and backward).

The ratio step / floor is what the trainer, the other kernels and the Python around them cost on top of the
arithmetic; issue 16's goal is at most 1.25 for every model at batch 128 and 1024. Synthetic data with the real
dimensions (speed does not depend on the values). Run it alone on the machine and compare figures of one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from commonspace import MultimodalDataset
from commonspace.models.base import create_for_data
from commonspace.train import TrainConfig, Trainer

SHAPES = {"wikipedia": {"image": 128, "text": 10}, "mfeat": {"pix": 240, "fou": 76}}
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv")


def _data(dims: dict[str, int], n: int) -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(n, d, generator=g) for m, d in dims.items()}
    labels = torch.randint(0, 10, (n,), generator=g)
    return MultimodalDataset(feats, labels=labels, splits={"train": torch.arange(n)})


def step_seconds(name: str, dims: dict[str, int], batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds of one training step through the Trainer, per stage, over ``repeats`` epochs of the stage
    after a warm-up one."""
    data = _data(dims, batch * steps)
    model = create_for_data(name, data, init_seed=0)
    cfg = TrainConfig.for_model(model, epochs=repeats + 1, batch_size=batch, progress=False, seed=0,
                                patience=None, max_steps_per_epoch=steps)
    hist = Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    rates: dict[str, list[float]] = {}
    for h in hist:
        rates.setdefault(h["stage"], []).append(h["samples_per_s"])
    return {stage: batch / statistics.median(r[1:]) for stage, r in rates.items()}


def _mark_epoch(trainer: Trainer, record: dict) -> None:
    with record_function("bench_step/epoch_end"):
        pass


def _mm_shapes(name: str, dims: dict[str, int], batch: int) -> list[list[tuple[str, list[list[int]]]]]:
    """The matrix products of one training step of each stage, as (op, input shapes), in the order they ran."""
    data = _data(dims, batch)
    model = create_for_data(name, data, init_seed=0)
    cfg = TrainConfig.for_model(model, epochs=1, batch_size=batch, progress=False, seed=0, max_steps_per_epoch=1)
    # a fit of one step per stage, an epoch-end marker after each: the set-up around the steps runs no product
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        Trainer(model, cfg, callbacks=[_mark_epoch]).fit(data, train="train", val=None, resume=False)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    steps: list[list[tuple[str, list[list[int]]]]] = [[]]
    for e in events:
        if e.name == "bench_step/epoch_end":
            steps.append([])
        elif e.name in MATMULS:
            steps[-1].append((e.name, [list(s) for s in e.input_shapes]))
    return steps[:-1]


def product_macs(op: str, shapes: list[list[int]]) -> int:
    """Multiply-adds of one recorded product (``op`` one of MATMULS, ``shapes`` its input shapes)."""
    if op in ("aten::mm", "aten::bmm"):
        a, b = shapes[0], shapes[1]
    elif op in ("aten::addmm", "aten::baddbmm"):
        a, b = shapes[1], shapes[2]
    else:  # addmv (bias, matrix, vector) or mv (matrix, vector)
        return math.prod(shapes[1] if op == "aten::addmv" else shapes[0])
    return math.prod(a) * b[-1]


def _operands(op: str, shapes: list[list[int]], g: torch.Generator) -> tuple[list[torch.Tensor], int]:
    """Random contiguous operands for one product, and its multiply-adds."""
    t = [torch.randn(s, generator=g) if s else torch.tensor(0.0) for s in shapes]
    n = 2 if op in ("aten::mm", "aten::bmm", "aten::mv") else 3  # addmm / baddbmm / addmv: bias first
    return t[:n], product_macs(op, shapes)


_CALL = {"aten::mm": torch.mm, "aten::bmm": torch.bmm, "aten::addmm": torch.addmm, "aten::baddbmm": torch.baddbmm,
         "aten::addmv": torch.addmv, "aten::mv": torch.mv}


def floor_seconds(ops: list[tuple[str, list[list[int]]]], repeats: int) -> tuple[float, int]:
    """Median seconds of the step's products replayed back to back, and their multiply-adds."""
    g = torch.Generator().manual_seed(1)
    calls, macs = [], 0
    for op, shapes in ops:
        args, n = _operands(op, shapes, g)
        calls.append((_CALL[op], args))
        macs += n
    for fn, args in calls:  # warm-up
        fn(*args)
    times = []
    for _ in range(max(repeats, 3) * 10):
        t0 = time.perf_counter()
        for fn, args in calls:
            fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bidnn,ae_split,cvs,ima,mahash,contrastive")
    ap.add_argument("--batches", default="128,1024")
    ap.add_argument("--shape", default="wikipedia", choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs (their median step is reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dims = SHAPES[args.shape]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.shape} shape {dims}")
    print("| model | batch | step (ms) | floor (ms) | step / floor | MACs / sample | products / step |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            per_stage = _mm_shapes(name, dims, batch)
            steps = step_seconds(name, dims, batch, args.steps, args.repeats)
            for (stage, step), ops in zip(steps.items(), per_stage, strict=True):
                floor, macs = floor_seconds(ops, args.repeats)
                label = name if len(steps) == 1 else f"{name}/{stage}"
                print(f"| {label} | {batch} | {step * 1e3:.3f} | {floor * 1e3:.3f} | {step / floor:.2f} | "
                      f"{macs / batch / 1e3:.1f}k | {len(ops)} |", flush=True)


if __name__ == "__main__":
    main()
