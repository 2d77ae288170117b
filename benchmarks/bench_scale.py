"""Data larger than memory (issue 15): peak resident memory and seconds of every step, per dataset size.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 250000,500000,1000000,2000000] [--dim 512]
        [--test 100000] [--val 10000] [--work /tmp/cs-scale] [--steps convert,cvs,bidnn,embed,evaluate]
        [--out bench-results/scale]

For each size N it writes a synthetic two-modality source (``src.h5``: float16, N x dim per modality, 10
classes, train / val / test splits; not timed), then runs each step as its own ``commonspace`` process:

* ``convert``: ``commonspace convert src.h5 data/ --dtype float16`` (the memory-mapped dataset folder);
* ``cvs``, ``bidnn``: ``commonspace train --data data/ --model M --epochs 1`` (one full epoch; the
  standardisation pass and the folder's verifying pass included; cvs with ``--set dim=128``, ``--cvs-dim``);
* ``embed``: ``commonspace embed`` of the cvs run over all N rows into an embeddings folder;
* ``evaluate``: ``commonspace evaluate`` of the cvs run on the test split (every modality pair and the joint
  space, full rankings).

Peak resident memory is each step's high-water mark as GNU time reports it (``%M``): everything the process
held, file pages of its memory maps included. Run it alone on the machine: timings are wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEPS = ("convert", "cvs", "bidnn", "embed", "evaluate")


def _source(path: Path, n: int, dim: int, n_test: int, n_val: int, seed: int = 0) -> None:
    """Two float16 modalities sharing 10 classes (class centre + noise), written in blocks."""
    import h5py

    rng = np.random.default_rng(seed)
    centres = {m: rng.normal(size=(10, dim)).astype(np.float32) for m in ("a", "b")}
    labels = rng.integers(0, 10, n)
    with h5py.File(path, "w") as f:
        ds = {m: f.create_dataset(f"x_{m}", shape=(n, dim), dtype="float16", chunks=(min(n, 4096), dim))
              for m in centres}
        step = 100_000
        for s in range(0, n, step):
            e = min(n, s + step)
            for m, c in centres.items():
                ds[m][s:e] = (c[labels[s:e]] + 2.0 * rng.standard_normal((e - s, dim), dtype=np.float32)
                              ).astype(np.float16)
        f["labels"] = labels
        f["modalities"] = np.array(["a", "b"], dtype="S")
        order = rng.permutation(n)
        f["split_test"] = np.sort(order[:n_test])
        f["split_val"] = np.sort(order[n_test:n_test + n_val])
        f["split_train"] = np.sort(order[n_test + n_val:])


def _run(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, float, str]:
    """Wall seconds, peak resident MiB and the output tail of one child process.

    The peak comes from GNU time (``%M``), which forks the step from its own tiny image: Linux keeps a process's
    pre-exec high-water mark in ``ru_maxrss``, so a step started straight from this (larger) script would report
    at least this script's size.
    """
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if not Path(gnu_time).is_file():
        raise SystemExit("needs GNU time (/usr/bin/time) to measure each step's peak resident memory")
    report = work / "time.txt"
    t0 = time.perf_counter()
    proc = subprocess.run([gnu_time, "-f", "%M", "-o", str(report), *cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, text=True)
    wall = time.perf_counter() - t0
    out = proc.stdout or ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    peak_kib = int(report.read_text().split()[-1])
    return wall, peak_kib / 1024, out.strip().splitlines()[-1] if out.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250000,500000,1000000,2000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--test", type=int, default=100_000)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cs-scale"))
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--eval-sizes", default=None, help="run the evaluate step only at these sizes (its test split "
                    "has --test rows whatever N, so its cost does not grow with N); default: every size")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each step")
    ap.add_argument("--cvs-dim", type=int, default=128, help="common-space size of the cvs run (embed, evaluate)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/scale"))
    ap.add_argument("--keep", action="store_true", help="keep the data of each size (disk: about 8 N dim bytes)")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    bad = sorted(set(steps) - set(STEPS))
    if bad:
        raise SystemExit(f"unknown steps {bad}; choose from {list(STEPS)}")
    eval_sizes = None if args.eval_sizes is None else {int(v) for v in args.eval_sizes.split(",") if v}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    cs = [sys.executable, "-m", "commonspace"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n in (int(v) for v in args.sizes.split(",") if v):
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        _source(work / "src.h5", n, args.dim, min(args.test, n // 4), min(args.val, n // 10))
        print(f"N={n}: source written in {time.perf_counter() - t0:.0f} s", flush=True)
        data = work / "data"
        plan = {
            "convert": [*cs, "convert", str(work / "src.h5"), str(data), "--dtype", "float16"],
            "cvs": [*cs, "train", "--data", str(data), "--model", "cvs", "--epochs", "1", "--out",
                    str(work / "cvs"), "--no-progress", "--set", f"dim={args.cvs_dim}"],
            "bidnn": [*cs, "train", "--data", str(data), "--model", "bidnn", "--epochs", "1", "--out",
                      str(work / "bidnn"), "--no-progress"],
            "embed": [*cs, "embed", "--model", str(work / "cvs"), "--data", str(data), "--out", str(work / "emb")],
            "evaluate": [*cs, "evaluate", "--model", str(work / "cvs"), "--data", str(data), "--split", "test",
                         "--json", str(work / "eval.json")],
        }
        for step in steps:
            if step == "evaluate" and eval_sizes is not None and n not in eval_sizes:
                continue
            wall, rss, last = _run(plan[step], env, work)
            row = {"n": n, "dim": args.dim, "step": step, "seconds": round(wall, 1), "peak_rss_mib": round(rss),
                   "threads": args.threads, "last_line": last}
            rows.append(row)
            print(f"N={n:>9} {step:>9}: {wall:7.1f} s, peak {rss:7.0f} MiB  | {last[:100]}", flush=True)
            (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sizes = sorted({r["n"] for r in rows})
    lines = ["| step | " + " | ".join(f"N = {n:,}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for step in steps:
        cells = []
        for n in sizes:
            r = next((r for r in rows if r["n"] == n and r["step"] == step), None)
            cells.append("-" if r is None else f"{r['seconds']:.0f} s, {r['peak_rss_mib']:,} MiB")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    (args.out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
