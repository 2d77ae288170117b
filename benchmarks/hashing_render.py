"""Render the hashing bench report (tables, verdicts, 32-bit curves) from the run records of a full run that is
still partial, keeping only complete (code length, seed) groups of the twelve methods.

    python benchmarks/hashing_render.py OUT_DIR [--data-root PATH] SET RECORDS [SET RECORDS ...]

e.g. ``python benchmarks/hashing_render.py /tmp/report two-digits bench-results/full/td/hashing/two-digits-runs.jsonl``.
``docs/benchmarks.md``'s issue-13 tables were made this way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from commonspace.bench.report import BenchResult
from commonspace.bench.specs import hashing as H


def render(out: Path, data_root: Path | None, pairs: list[tuple[str, Path]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for key, path in pairs:
        s = next(x for x in H.SETTINGS if x.key == key)
        plan = s.full
        ctx = SimpleNamespace(data_root=data_root, out_dir=out)
        data = H._prepare(s, ctx, plan)
        order = [m.label for m in H.methods(s.text)]
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        fp = H._fingerprint(s, plan, plan.epochs, min(plan.patience, plan.epochs))
        if any(r["fingerprint"] != fp for r in recs):
            raise SystemExit(f"{path}: records of another plan or spec version")
        recs.sort(key=lambda r: (H.RUN_ORDER.index(r["bits"]), r["seed"], order.index(r["method"])))
        groups: dict[tuple[int, int], list[dict]] = {}
        for r in recs:
            groups.setdefault((r["bits"], r["seed"]), []).append(r)
        recs = [r for g in groups.values() if len(g) == len(order) for r in g]
        st = H._Store()
        st.cap = plan.epochs
        for r in recs:
            H._store(st, r, plan.epochs)
        bits = tuple(b for b in H.BITS if any(r["bits"] == b for r in recs))
        runs = {b: sorted({r["seed"] for r in recs if r["bits"] == b}) for b in bits}
        total = sum(sum(v) for v in st.seconds.values())
        notes = [s.protocol,
                 f"Split sizes: train {data.split('train').numel()}, val {data.split('val').numel()}, query "
                 f"{data.split('query').numel()}, database {data.split('database').numel()}.",
                 f"Run: bits {list(bits)} of the plan's {list(plan.bits)} (seeds per code length: "
                 + ", ".join(f"{b}: {v}" for b, v in runs.items()) + f"), at most {plan.epochs} epochs (Adam, lr "
                 f"1e-3, batch 64), early stopping on val MAP@all with patience {plan.patience}, best val epoch "
                 "restored. Every model's defaults: triplet loss averaged over the active (margin-violating) "
                 "triplets, quantization weight 0.01 (DTH / TextHash too), batch-normalised hash bits, attention "
                 "gates 2 sigmoid starting at 1.",
                 f"Training + evaluation time summed over these runs: {total:.0f} s; mean seconds per model: "
                 + ", ".join(f"{k} {np.mean(v):.0f}" for k, v in st.seconds.items()) + ".",
                 "Best val epoch per model (mean, min-max): " + ", ".join(
                     f"{k} {np.mean(v):.1f} ({min(v)}-{max(v)})" for k, v in st.epochs.items()) + "."]
        pngs = H._plots(s, st, ctx)
        if pngs:
            notes.append(f"Curves at 32 bits (mean over seeds): {', '.join(pngs)}.")
        tables += H._tables(s, st, bits, notes)
        print(key, len(recs), "runs", runs)
    BenchResult("hashing", H.PAPER, tables, [], {}, 0.0).write(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("pairs", nargs="+", help="SET RECORDS pairs")
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give SET RECORDS pairs")
    render(a.out, a.data_root, [(k, Path(p)) for k, p in zip(a.pairs[::2], a.pairs[1::2], strict=True)])


if __name__ == "__main__":
    main()
