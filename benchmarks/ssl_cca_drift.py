"""How the CCA-regularised MRBM's single-modality code drifts from its joint code over training.

Trains `mrbm` with `sim="cca"` (256 hidden units, batch 256, the bench's Table 1 settings) on MNIST-5k halves and
prints, at the given epochs: the joint-code probe's error on the left half alone (right half inferred) and on
both halves, the weight norms, the share of saturated activations (outside 0.01-0.99) of H^x and of the joint
code, and the epoch's mean similarity term (minus the canonical-correlation sum). Run by hand:

    python benchmarks/ssl_cca_drift.py --shrink 0.3 --epochs 4,8,15,22,30
"""

from __future__ import annotations

import argparse

import torch

from commonspace.data import builtin
from commonspace.eval.probe import logistic_probe_many
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shrink", type=float, default=0.3)
    ap.add_argument("--epochs", default="4,8,15,22,30")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    marks = sorted({int(e) for e in args.epochs.split(",")})
    data = builtin.load("mnist5k-halves")
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    model = create("mrbm", data.dims, init_seed=args.seed, sim="cca", hidden=256, cca_shrink=args.shrink)

    def report(trainer: Trainer, record: dict) -> None:
        epoch = len(trainer.history)
        if epoch not in marks:
            return
        model.eval()
        with torch.no_grad():
            joint = model.embed(trb)
            hx = model.rbm.hidden_from(x=trb.features["left"].reshape(len(trb), -1))
            yte = data.labels[te].numpy()
            res = logistic_probe_many(joint.numpy(), data.labels[tr].numpy(),
                                      {"left": (model.embed(teb.only(["left"])).numpy(), yte),
                                       "both": (model.embed(teb).numpy(), yte)}, seed=args.seed)

        def sat(h: torch.Tensor) -> float:
            return float(((h < 0.01) | (h > 0.99)).float().mean())

        wx, wy = float(model.rbm.weight_x.detach().norm()), float(model.rbm.weight_y.detach().norm())
        print(f"epoch {epoch:3d}: left-only {100 * res['left']['error']:5.1f}%  both {100 * res['both']['error']:4.1f}%"
              f"  |W^x| {wx:5.1f}  |W^y| {wy:5.1f}"
              f"  H^x saturated {sat(hx):.2f}  joint saturated {sat(joint):.2f}  sim {record['train']['sim']:7.2f}",
              flush=True)
        model.train()

    cfg = TrainConfig.for_model(model, seed=args.seed, progress=False, epochs=max(marks), batch_size=256)
    Trainer(model, cfg, callbacks=[report]).fit(data, train="train", val=None, resume=False)


if __name__ == "__main__":
    main()
