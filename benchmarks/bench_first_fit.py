"""The set-up a process's first ``fit`` pays: two 1-epoch fits in a fresh process, the first against the second.

    .venv/bin/python benchmarks/bench_first_fit.py [--repeats 3] [--before-src DIR]

A 256-wide BiDNN on 2173 synthetic samples of the Wikipedia shape (image 128, text 10), batch 128, 2 threads.
The first fit of a process once paid about 1-2 s for ``torch.optim``'s ``torch._dynamo`` import
(``commonspace.train.optim``); the second fit shows the same work without any one-time cost. With
``--before-src`` (the ``src`` of an older checkout) the old code runs in alternating processes, in the same
rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _two_fits() -> list[float]:
    import torch

    from commonspace import MultimodalDataset
    from commonspace.models.base import create_for_data
    from commonspace.train import TrainConfig, Trainer

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    data = MultimodalDataset({"image": torch.randn(2173, 128, generator=g), "text": torch.randn(2173, 10, generator=g)},
                             splits={"train": torch.arange(2173)})
    walls = []
    for _ in range(2):
        model = create_for_data("bidnn", data, init_seed=0, hidden=256, central=256)
        cfg = TrainConfig.for_model(model, epochs=1, batch_size=128, progress=False, seed=0, patience=None)
        t0 = time.perf_counter()
        Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
        walls.append(time.perf_counter() - t0)
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-src", help="src folder of an older checkout, measured in the same rounds")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_two_fits()))
        return
    versions = {"now": dict(os.environ)}
    if args.before_src:
        versions["before"] = dict(os.environ, PYTHONPATH=str(Path(args.before_src).resolve()))
    rows: dict[str, list[list[float]]] = {v: [] for v in versions}
    for _ in range(args.repeats):
        for v, env in (reversed(versions.items()) if len(rows["now"]) % 2 else versions.items()):
            out = subprocess.run([sys.executable, __file__, "--one"], check=True, capture_output=True, text=True,
                                 env=env)
            rows[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| code | first fit (s) | second fit (s) |")
    print("|---|---|---|")
    for v, runs in rows.items():
        print(f"| {v} | {' / '.join(f'{r[0]:.3f}' for r in runs)} | {' / '.join(f'{r[1]:.3f}' for r in runs)} |")


if __name__ == "__main__":
    main()
