"""Seconds per iteration of CVS, M-CVS and RVS as modalities are added (thesis Fig. 27) and attention block counts
(Fig. 26), on the five UCI mfeat views; prints a Markdown table and writes a PNG.

    python benchmarks/bench_cvs_scaling.py [--dim 512 --hidden 512,512] [--steps 30 --repeats 3] [--out DIR]

CVS retrains the whole model when a view is added; M-CVS and RVS train only the new stage (Adam).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from commonspace.bench.specs.cvs import MFEAT_VIEWS, timing_study, write_png
from commonspace.data import builtin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hidden", default="512,512", help="comma-separated hidden widths of each head")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128, help="batch size (thesis: 128)")
    ap.add_argument("--order", default=",".join(MFEAT_VIEWS), help="views in the order they are added")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/cvs"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    hidden = tuple(int(h) for h in a.hidden.split(",") if h)
    order = [m.strip() for m in a.order.split(",")]
    data = builtin.load("uci-mfeat", views=tuple(order))
    rows = timing_study(data, order, a.dim, hidden, a.steps, a.warmup, a.repeats, batch_size=a.batch)

    print(f"dim {a.dim}, hidden {list(hidden)}, batch {a.batch}, {a.steps} timed steps x {a.repeats} repeats, "
          f"{torch.get_num_threads()} threads; ms per iteration (median; ± over repeats)\n")
    print("| views | CVS ms/it | M-CVS ms/it | RVS ms/it | CVS blocks (all trained) | M-CVS blocks total / trained "
          "| RVS blocks total / trained |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = {k: f"{1000 * np.mean(v):.1f} ± {1000 * np.std(v):.1f}" for k, v in r.seconds.items()}
        assert r.blocks_total["CVS"] == math.comb(r.n, 2)
        print(f"| {r.n} (+{r.added}) | {ms['CVS']} | {ms['M-CVS']} | {ms['RVS']} | {r.blocks_total['CVS']} | "
              f"{r.blocks_total['M-CVS']} / {r.blocks_trained['M-CVS']} | "
              f"{r.blocks_total['RVS']} / {r.blocks_trained['RVS']} |")
    png = write_png(rows, a.out / "cvs_scaling.png")
    print(f"\nwrote {png}")


if __name__ == "__main__":
    main()
