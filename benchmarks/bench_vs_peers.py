"""Training throughput per multiply-add, ours beside the fastest peer (mvlearn SplitAE), in one run (issue 16).

    .venv/bin/python benchmarks/bench_vs_peers.py --peer-python $PEERS_VENV/bin/python \\
        [--models bidnn,ae_split,ae_concat] [--datasets wikipedia,mfeat] [--repeats 3] [--before-src DIR]

The peers' workload (``../shared/tools/peer_bench.py``): the training split of each dataset (Wikipedia 2173
samples of image 128 + text 10, mfeat 1600 of pix 240 + fou 76), 100 epochs of batch 128, two torch threads,
width 256. Every measurement is one fresh process, ours and the peer's alternating, ``--repeats`` rounds:

* **peer**: ``peer_bench.py --peers mvlearn-SplitAE`` (its ``samples/s`` = n_train x epochs / train_s, one row
  per direction, each direction its own model);
* **ours**: the model at width 256 (``hidden=256, central=256``), synthetic data of the same size and dimensions
  (the speed does not depend on the values), samples/s = n x epochs / the wall time of ``Trainer.fit``
  (optimizer construction included, as the peer's ``fit`` includes its own);
* **before** (with ``--before-src``, e.g. the ``src`` of a ``git worktree`` at an older commit): ours again, that
  code on ``PYTHONPATH``, in the same rounds.

**MACs / sample** are the forward multiply-adds of one sample: ours counted from the products
``torch.profiler`` records in one forward of the training loss, mvlearn SplitAE's from its layers (encoder
in-256-256-d, one decoder per view mirroring it: d-256-256-out). **Per MAC** is
(ours samples/s x ours MACs) / (peer samples/s x peer MACs), the peer's median over its two directions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_step import MATMULS, product_macs  # this folder is on sys.path when a script in it runs

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"wikipedia": ({"image": 128, "text": 10}, 2173, 10), "mfeat": ({"pix": 240, "fou": 76}, 1600, 32)}


def splitae_macs(d1: int, d2: int, d: int, width: int = 256) -> int:
    """Forward multiply-adds of one sample through mvlearn's SplitAE (view 1 encoded, both views decoded)."""
    enc = d1 * width + width * width + width * d
    dec = sum(d * width + width * width + width * out for out in (d1, d2))
    return enc + dec


def _ours(name: str, dataset: str, epochs: int, threads: int) -> dict[str, float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from commonspace import MultimodalDataset
    from commonspace.models.base import create_for_data
    from commonspace.train import TrainConfig, Trainer

    torch.set_num_threads(threads)
    dims, n, _ = SHAPES[dataset]
    g = torch.Generator().manual_seed(0)
    data = MultimodalDataset({m: torch.randn(n, k, generator=g) for m, k in dims.items()},
                             splits={"train": torch.arange(n)})
    model = create_for_data(name, data, init_seed=0, hidden=256, central=256)
    cfg = TrainConfig.for_model(model, epochs=epochs, batch_size=128, progress=False, seed=0, patience=None)
    t0 = time.perf_counter()
    Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    wall = time.perf_counter() - t0
    batch = data.batch(torch.arange(128))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model.loss(batch)
    macs = sum(product_macs(e.name, [list(x) for x in e.input_shapes]) for e in prof.events() if e.name in MATMULS)
    return {"samples_per_s": n * epochs / wall, "macs": macs / 128}


def _peer(python: str, script: Path, dataset: str, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        subprocess.run([python, str(script), "--peers", "mvlearn-SplitAE", "--datasets", dataset,
                        "--epochs", str(epochs), "--out", str(out), "--data-root", str(ROOT.parent / "shared/data")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["rows"]
    return [float(r["samples_per_second"]) for r in rows if r["dataset"] == dataset]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", required=False, help="python of the peers' venv (../shared/tools/README.md)")
    ap.add_argument("--peer-bench", default=str(ROOT.parent / "shared/tools/peer_bench.py"))
    ap.add_argument("--models", default="bidnn,ae_split,ae_concat")
    ap.add_argument("--datasets", default="wikipedia,mfeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before-src", help="src folder of an older checkout, measured in the same rounds")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "DATASET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_ours(args.one[0], args.one[1], args.epochs, args.threads)))
        return
    if not args.peer_python:
        ap.error("--peer-python is required (the peers' venv, see ../shared/tools/README.md)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    versions = {"": env}
    if args.before_src:
        versions[" (before)"] = dict(env, PYTHONPATH=str(Path(args.before_src).resolve()))
    datasets = args.datasets.split(",")
    runs = [(name, suffix) for name in args.models.split(",") for suffix in versions]
    models = [name + suffix for name, suffix in runs]
    ours: dict[tuple[str, str], list[dict[str, float]]] = {}
    peer: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for ds in datasets:
            peer.setdefault(ds, []).append(statistics.median(_peer(args.peer_python, Path(args.peer_bench), ds,
                                                                   args.epochs)))
            for name, suffix in runs:
                res = subprocess.run([sys.executable, __file__, "--one", name, ds, "--epochs", str(args.epochs),
                                      "--threads", str(args.threads)], check=True, capture_output=True, text=True,
                                     env=versions[suffix])
                ours.setdefault((name + suffix, ds), []).append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.repeats} {ds}: peer {peer[ds][-1] / 1e3:.1f}k, " +
                  ", ".join(f"{m} {ours[(m, ds)][-1]['samples_per_s'] / 1e3:.1f}k" for m in models),
                  file=sys.stderr, flush=True)
    print(f"{args.repeats} rounds, {args.threads} threads, {args.epochs} epochs, batch 128, width 256; "
          "samples/s as median [min-max]")
    print("| dataset | model | samples/s | MACs / sample (forward) | samples/s x MACs vs mvlearn SplitAE |")
    print("|---|---|---|---|---|")
    for ds in datasets:
        dims, _, d = SHAPES[ds]
        d1, d2 = dims.values()
        pm = splitae_macs(d1, d2, d)
        pr = statistics.median(peer[ds])
        print(f"| {ds} | mvlearn SplitAE | {pr / 1e3:.1f}k [{min(peer[ds]) / 1e3:.1f}-{max(peer[ds]) / 1e3:.1f}k] | "
              f"{pm / 1e3:.1f}k | 1.00 |")
        for m in models:
            rates = [x["samples_per_s"] for x in ours[(m, ds)]]
            macs = ours[(m, ds)][0]["macs"]
            rate = statistics.median(rates)
            print(f"| {ds} | {m} | {rate / 1e3:.1f}k [{min(rates) / 1e3:.1f}-{max(rates) / 1e3:.1f}k] | "
                  f"{macs / 1e3:.1f}k | {rate * macs / (pr * pm):.2f} |")


if __name__ == "__main__":
    main()
