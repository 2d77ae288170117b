"""BiDNN training throughput (samples/s) through the real Trainer, on the Wikipedia and mfeat shapes.

Run by hand (timings on a shared machine move by 20% or more; quote medians):

    python benchmarks/bench_bidnn_throughput.py --repeats 5 [--threads 2]

Two widths: the paper's 200-100-200, and 256-256 (central 256), comparable with the TARGETS.md peers'
in -> 256 -> 256 -> d encoders. Data is synthetic with the real dimensions (the speed does not depend on the
values); each epoch is 20 batches of 128 so the number is not dominated by start-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from commonspace import MultimodalDataset, create
from commonspace.train import TrainConfig, Trainer

SHAPES = {"wikipedia (image 128, text 10)": {"image": 128, "text": 10},
          "mfeat (pix 240, fou 76)": {"pix": 240, "fou": 76}}
WIDTHS = {"200-100-200 (paper)": {"hidden": 200, "central": 100},
          "256-256-256": {"hidden": 256, "central": 256}}


def measure(dims: dict[str, int], hp: dict, n: int, epochs: int) -> float:
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(n, d, generator=g) for m, d in dims.items()}
    data = MultimodalDataset(feats, splits={"train": torch.arange(n)})
    model = create("bidnn", dims, **hp)
    cfg = TrainConfig.for_model(model, epochs=epochs, progress=False, seed=0)
    t0 = time.perf_counter()
    hist = Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    wall = time.perf_counter() - t0
    # the median epoch's rate excludes the first epoch's warm-up
    rates = [h["samples_per_s"] for h in hist[1:]]
    return statistics.median(rates), n * epochs / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128")
    print("| shape | width | median epoch samples/s | end-to-end samples/s (incl. set-up) |")
    print("|---|---|---|---|")
    for sname, dims in SHAPES.items():
        for wname, hp in WIDTHS.items():
            runs = [measure(dims, hp, 128 * 20, args.epochs) for _ in range(args.repeats)]
            ep = statistics.median(r[0] for r in runs)
            e2e = statistics.median(r[1] for r in runs)
            print(f"| {sname} | {wname} | {ep / 1e3:.1f}k | {e2e / 1e3:.1f}k |")


if __name__ == "__main__":
    main()
