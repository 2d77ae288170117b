"""How well a mini-batch estimates the SSL CCA term (Eq. 3), with and without covariance shrinkage.

Trains an MJLL MRBM (256 hidden units) on MNIST-5k halves for a few epochs, takes H^x, H^y of the 3000 training
items and prints the canonical-correlation sum on batches of 256 / 512 / 1024 against all items, and for
independent views (pairs shuffled: the chance level), for several shrinkage values. Run by hand:

    python benchmarks/cca_estimate.py [--epochs 4]
"""

from __future__ import annotations

import argparse

import torch

from commonspace.data import builtin
from commonspace.losses.similarity import canonical_correlations
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = builtin.load("mnist5k-halves")
    model = create("mrbm", data.dims, init_seed=0, hidden=256, sim="none")
    cfg = TrainConfig.for_model(model, seed=0, progress=False, epochs=args.epochs, batch_size=256)
    Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    with torch.no_grad():
        enc = model.eval().encode(data.batch(data.split("train")))
    hx, hy = enc["left"].double(), enc["right"].double()
    n = hx.shape[0]
    g = torch.Generator().manual_seed(0)
    perm, shuffled = torch.randperm(n, generator=g), torch.randperm(n, generator=g)

    def corr(a: torch.Tensor, b: torch.Tensor, s: float) -> float:
        return float(canonical_correlations(a, b, shrink=s).sum())

    print(f"{n} items, {hx.shape[1]} units")
    print("shrink  batch  batch mean  all items  ratio  shuffled(batch 256)  shuffled(all)")
    for s in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7):
        for b in (256, 512, 1024):
            vals = [corr(hx[perm[i:i + b]], hy[perm[i:i + b]], s) for i in range(0, n - b + 1, b)]
            full = corr(hx, hy, s)
            mean = sum(vals) / len(vals)
            chance_b = corr(hx[:256], hy[shuffled][:256], s) if b == 256 else float("nan")
            chance = corr(hx, hy[shuffled], s) if b == 256 else float("nan")
            print(f"{s:6.1f} {b:6d} {mean:11.2f} {full:10.2f} {mean / full:6.2f} {chance_b:20.2f} {chance:14.2f}")


if __name__ == "__main__":
    main()
