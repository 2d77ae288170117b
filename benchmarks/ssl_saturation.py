"""Saturation of the MRBM's shared layer under MJLL and the cross-entropy SSL term (both gradient directions).

Trains `mrbm` (256 hidden units, batch 256, the bench's settings) on MNIST-5k halves and prints, over the
3000 training items: the share of H^x and H^y activations outside [0.01, 0.99], the share of joint-code units
that are constant (standard deviation over items below 0.01), and the joint-code probe's left-only error.
Run by hand:

    python benchmarks/ssl_saturation.py [--epochs 8] [--seeds 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from commonspace.data import builtin
from commonspace.eval.probe import logistic_probe_many
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer

SETTINGS = [("MJLL", {"sim": "none"}), ("H(Hx||Hy), grad both", {"sim": "ce_xy", "ce_grad": "both"}),
            ("H(Hx||Hy), grad fitted", {"sim": "ce_xy", "ce_grad": "fitted"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = builtin.load("mnist5k-halves")
    tr, te = data.split("train"), data.split("test")
    print("setting                    H^x saturated  H^y saturated  joint units constant  left-only error")
    for label, hp in SETTINGS:
        rows = []
        for seed in range(args.seeds):
            model = create("mrbm", data.dims, init_seed=seed, hidden=256, **hp)
            cfg = TrainConfig.for_model(model, seed=seed, progress=False, epochs=args.epochs, batch_size=256)
            Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
            model.eval()
            with torch.no_grad():
                b = data.batch(tr)
                enc, joint = model.encode(b), model.embed(b)
                teb = data.batch(te)
                res = logistic_probe_many(joint.numpy(), data.labels[tr].numpy(),
                                          {"left": (model.embed(teb.only(["left"])).numpy(),
                                                    data.labels[te].numpy())}, seed=seed)

            def sat(h: torch.Tensor) -> float:
                return float(((h < 0.01) | (h > 0.99)).float().mean())

            rows.append((sat(enc["left"]), sat(enc["right"]), float((joint.std(0) < 0.01).float().mean()),
                         res["left"]["error"]))
        m = np.mean(rows, axis=0) * 100
        print(f"{label:26s} {m[0]:12.1f}% {m[1]:13.1f}% {m[2]:20.1f}% {m[3]:15.2f}%")


if __name__ == "__main__":
    main()
