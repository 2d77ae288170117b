"""Why is every fused model below image-only DTH on mfeat-pairs? Concat, Concat with the text zeroed, and DTH
(32 bits, seed 0, the full plan), with the MAP of the train codes ranking each other beside the test MAP.

    OMP_NUM_THREADS=1 python benchmarks/hashing_fusion_probe.py concat zero dth   # about 10 min of one core
"""

from __future__ import annotations

import json
import sys
import time

import torch

import commonspace.bench.specs.hashing as H
from commonspace.bench.runner import BenchContext
from commonspace.data.dataset import MultimodalDataset
from commonspace.eval.hamming import hamming_metrics


def measure(m: H.Method, data: MultimodalDataset, s: H.Setting, plan: H.Plan) -> dict:
    t0 = time.perf_counter()
    model, hist = H._train(m, data, s, plan, 32, 0, plan.epochs, plan.patience, False)
    q, db, tr = (data.split(k) for k in ("query", "database", "train"))
    qc, dc, tc = H._codes(model, data, q, db, tr)
    y = data.labels
    test = hamming_metrics(qc, dc, y[q], y[db], ks=(), radius=None)["map"]
    train = hamming_metrics(tc, tc, y[tr], y[tr], ks=(), radius=None, exclude_self=True)["map"]
    best = max(h["val_metric"] for h in hist if h["val_metric"] is not None)
    return {"test_map": float(test), "train_map": float(train), "best_val": float(best), "epochs": len(hist),
            "seconds": time.perf_counter() - t0}


def main(which: list[str]) -> None:
    s = next(x for x in H.SETTINGS if x.key == "mfeat-pairs")
    plan = s.full
    data = H._prepare(s, BenchContext(), plan)
    ms = {m.label: m for m in H.methods(s.text)}
    zeroed = dict(data.features)
    zeroed[s.text] = torch.zeros_like(zeroed[s.text])  # present but empty: the fused network sees the image only
    runs = {"concat": ("Concat", ms["Concat"], data),
            "zero": ("Concat, text zeroed", ms["Concat"], data.replace(features=zeroed)),
            "dth": ("DTH", ms["DTH"], data)}
    out = {}
    for key in which:
        label, m, d = runs[key]
        out[label] = measure(m, d, s, plan)
        print(label, out[label], flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or ["concat", "zero", "dth"])
