"""Which SGD settings let PCD train the MRBM on MNIST-5k halves (SSL paper Table 1's MJLL baseline)?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pcd_settings.py [--epochs 8] [--seeds 0]
        [--lr 0.001,0.005,0.01,0.02] [--momentum 0,0.5,0.9] [--weight-decay 0,0.0001,0.0002] [--chains 100,256]
        [--grid full|lean] [--vbias-init zero,logodds] [--decay none,linear] [--warmup 0]

Trains ``create("mrbm", dims, hidden=256, sim="none", persistent=True, n_chains=...)`` with the library's
Trainer exactly as the SSL bench does (batch 256, SGD without Nesterov, the given lr / momentum /
weight_decay), then fits the bench's logistic probe (train split -> test split, same input condition: both
halves, left only, right only). Reference rows: CD-1 at the MRBM defaults (lr 0.05, momentum 0.9), PCD at those
defaults, and the untrained RBM (0 epochs; the probe standardises its input, so near-linear random features
already classify well and a "learning" setting has to beat this row, not 90%).

Per run it prints: the probe test errors (%), ``|W|max`` (the largest weight at the end; ``peak`` the largest
over the epochs), ``|W|F`` (Frobenius norm of [W^x W^y]), ``dead`` (fraction of hidden units whose
p(h = 1 | x, y) stays under 0.01 on every test pair: a dead unit has no positive phase and never recovers),
``pll`` (pseudo-log-likelihood per pixel of the test pairs binarised at 0.5, estimated with one random bit per
pair: mean log sigmoid(F(v with that bit flipped) - F(v)); higher is better, log 0.5 = -0.69 for a uniform
model) and ``gap`` (mean F(chains) - mean F(train pairs), minus the PCD loss over the whole training set: 0 when
the model's samples and the data have the same mean free energy, large positive while the model underfits).

``--trace N`` instead prints N single steps of PCD at the first --lr / --momentum (the trainer's SGD, batch 256,
minibatches drawn with replacement): where the collapse of the defaults comes from.

Options the TrainConfig lacks are emulated here with an epoch callback that edits the optimizer: ``--decay
linear`` lowers lr linearly to lr / 10 at the last epoch (Tieleman 2008 decays to 0), ``--warmup N`` uses
momentum 0.5 for the first N epochs (Hinton's practical guide, Sec. 9). ``--vbias-init logodds`` sets the
visible biases to log(p / (1 - p)) of the training pixel means (guide, Sec. 8) before training.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from commonspace.data import builtin
from commonspace.data.dataset import MultimodalDataset
from commonspace.eval.probe import logistic_probe
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer

#: the SSL bench's "mnist-halves" experiment: MRBM size and batch
HIDDEN, BATCH = 256, 256
COLUMNS = ("both", "left", "right")


@dataclass(frozen=True)
class Setting:
    label: str
    persistent: bool
    lr: float
    momentum: float
    weight_decay: float = 0.0
    n_chains: int = 100
    vbias: str = "zero"
    decay: str = "none"
    warmup: int = 0
    epochs: int | None = None  # None: --epochs


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _probe(model, data: MultimodalDataset, seed: int) -> dict[str, float]:
    """The SSL bench's protocol (bench/specs/ssl.py ``_probe``): fit on train, test on test, same condition."""
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    ytr, yte = data.labels[tr].numpy(), data.labels[te].numpy()
    out = {}
    model.eval()
    with torch.no_grad():
        for c in COLUMNS:
            a, b = (trb, teb) if c == "both" else (trb.only([c]), teb.only([c]))
            out[c] = 100.0 * logistic_probe(model.embed(a).numpy(), ytr, model.embed(b).numpy(), yte,
                                            seed=seed)["error"]
    return out


@torch.no_grad()
def _diagnostics(model, data: MultimodalDataset, seed: int) -> dict[str, float]:
    rbm = model.rbm
    te, tr = data.batch(data.split("test")), data.batch(data.split("train"))
    x, y = te.features["left"], te.features["right"]
    w = torch.cat([rbm.weight_x, rbm.weight_y], 1)
    h = rbm.hidden_prob(x, y)
    # pseudo-likelihood on binarised test pairs, one random bit per sample (an unbiased estimate of the mean)
    g = torch.Generator().manual_seed(seed)
    v = (torch.cat([x, y], 1) > 0.5).to(x.dtype)
    flip = torch.randint(0, v.shape[1], (v.shape[0],), generator=g)
    vf = v.clone()
    rows = torch.arange(v.shape[0])
    vf[rows, flip] = 1.0 - vf[rows, flip]
    nx = rbm.n_x
    fe = rbm.free_energy(v[:, :nx], v[:, nx:])
    fe_flip = rbm.free_energy(vf[:, :nx], vf[:, nx:])
    pll = float(torch.nn.functional.logsigmoid(fe_flip - fe).mean())
    gap = math.nan
    if rbm.n_chains and bool(rbm.chains_ready):
        cx, cy = rbm.get_chains()
        gap = float(rbm.free_energy(cx, cy).mean() - rbm.free_energy(tr.features["left"], tr.features["right"]).mean())
    return {"max_w": float(w.abs().max()), "fro_w": float(w.norm()), "dead": float((h.amax(0) < 0.01).float().mean()),
            "pll": pll, "gap": gap}


def _logodds_vbias(model, data: MultimodalDataset) -> None:
    tr = data.batch(data.split("train"))
    with torch.no_grad():
        for bias, m in ((model.rbm.bias_x, "left"), (model.rbm.bias_y, "right")):
            p = tr.features[m].mean(0).clamp(1e-3, 1 - 1e-3)
            bias.copy_(torch.log(p / (1 - p)))


def run_one(s: Setting, data: MultimodalDataset, epochs: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = create("mrbm", data.dims, hidden=HIDDEN, sim="none", persistent=s.persistent, n_chains=s.n_chains)
    if s.vbias == "logodds":
        _logodds_vbias(model, data)
    ep = epochs if s.epochs is None else s.epochs
    peak = [0.0]

    def callback(trainer: Trainer, record: dict) -> None:
        w = torch.cat([model.rbm.weight_x, model.rbm.weight_y], 1).detach()
        peak[0] = max(peak[0], float(w.abs().max()))
        done = int(record["epoch"])
        for group in trainer.optimizer.param_groups:
            if s.decay == "linear" and ep > 1:  # the lr the next epoch uses: lr -> lr / 10 at the last one
                group["lr"] = s.lr * (1.0 - 0.9 * min(done, ep - 1) / (ep - 1))
            if s.warmup and done >= s.warmup:
                group["momentum"] = s.momentum

    t0 = time.perf_counter()
    if ep > 0:
        cfg = TrainConfig.for_model(model, seed=seed, progress=False, epochs=ep, batch_size=BATCH, lr=s.lr,
                                    momentum=0.5 if s.warmup else s.momentum, weight_decay=s.weight_decay)
        Trainer(model, cfg, callbacks=[callback]).fit(data, train="train", val=None, resume=False)
    train_s = time.perf_counter() - t0
    out = {**_probe(model, data, seed), **_diagnostics(model, data, seed), "train_s": train_s}
    out["peak_w"] = max(peak[0], out["max_w"])
    return out


def settings(args: argparse.Namespace) -> list[Setting]:
    out = [Setting("untrained", False, 0.05, 0.9, epochs=0),
           Setting("CD-1 defaults", False, 0.05, 0.9),
           Setting("PCD defaults", True, 0.05, 0.9)]
    grid = itertools.product(_floats(args.lr), _floats(args.momentum), _floats(args.weight_decay), _ints(args.chains),
                             args.vbias_init.split(","), args.decay.split(","))
    for lr, mom, wd, nc, vb, dec in grid:
        if args.grid == "lean" and not (nc == 100 or (wd == 0.0 and vb == "zero" and dec == "none")):
            continue  # lean: the chain count is varied only at the plain settings
        out.append(Setting("PCD", True, lr, mom, wd, nc, vb, dec, args.warmup))
    return out


def trace(data: MultimodalDataset, lr: float, momentum: float, n_chains: int, steps: int, seed: int) -> None:
    """Per-step PCD statistics: weight growth, hidden activity on data and chains, chain mixing."""
    torch.manual_seed(seed)
    model = create("mrbm", data.dims, hidden=HIDDEN, sim="none", persistent=True, n_chains=n_chains)
    rbm = model.rbm
    opt = torch.optim.SGD(rbm.parameters(), lr=lr, momentum=momentum)  # as the trainer builds it (no Nesterov)
    tr = data.split("train")
    g = torch.Generator().manual_seed(seed)
    model.train()
    print(f"PCD trace: lr={lr} momentum={momentum} n_chains={n_chains} batch={BATCH}")
    print("step  F(d)-F(c)   |W|F  |dW|/|W|  h(data)  dead  h(chain)  chain-on  data-on  flips")
    for step in range(steps):
        b = data.batch(tr[torch.randint(0, tr.numel(), (BATCH,), generator=g)])
        x, y = b.features["left"], b.features["right"]
        w0 = torch.cat([rbm.weight_x, rbm.weight_y], 1).detach().clone()
        before = torch.cat(rbm.get_chains(), 1).clone() if bool(rbm.chains_ready) else None
        loss = rbm.pcd_loss(x, y, 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            cx, cy = rbm.get_chains()
            c = torch.cat([cx, cy], 1)
            hd, hc = rbm.hidden_prob(x, y), rbm.hidden_prob(cx, cy)
            w = torch.cat([rbm.weight_x, rbm.weight_y], 1)
            flips = float((c != before).float().mean()) if before is not None else math.nan
            print(f"{step:4d} {loss.item():10.1f} {w.norm():6.2f} {(w - w0).norm() / w0.norm():9.3f} "
                  f"{hd.mean():8.3f} {(hd.amax(0) < 0.01).float().mean():5.2f} {hc.mean():9.3f} "
                  f"{c.mean():9.3f} {torch.cat([x, y], 1).mean():8.3f} {flips:6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--lr", default="0.001,0.005,0.01,0.02")
    ap.add_argument("--momentum", default="0,0.5,0.9")
    ap.add_argument("--weight-decay", default="0,0.0001,0.0002")
    ap.add_argument("--chains", default="100,256")
    ap.add_argument("--vbias-init", default="zero")
    ap.add_argument("--decay", default="none")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--grid", choices=("full", "lean"), default="lean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true", help="skip the untrained / default rows")
    ap.add_argument("--trace", type=int, default=0, metavar="N", help="print N single PCD steps instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = builtin.load("mnist5k-halves").select(["left", "right"])
    seeds = _ints(args.seeds)
    if args.trace:
        trace(data, _floats(args.lr)[0], _floats(args.momentum)[0], _ints(args.chains)[0], args.trace, seeds[0])
        return
    runs = settings(args)
    if args.no_reference:
        runs = runs[3:]
    head = (f"{'setting':14} {'lr':>6} {'mom':>4} {'wd':>7} {'ch':>4} {'vbias':>7} {'decay':>6} | "
            f"{'both':>5} {'left':>5} {'right':>5} | {'|W|max':>6} {'peak':>6} {'|W|F':>6} {'dead':>5} "
            f"{'pll':>6} {'gap':>7} {'s':>4}")
    print(f"MRBM hidden={HIDDEN} batch={BATCH} epochs={args.epochs} seeds={seeds}; errors in % (mean over seeds)")
    print(head)
    print("-" * len(head))
    for s in runs:
        res = [run_one(s, data, args.epochs, seed) for seed in seeds]
        m = {k: float(np.mean([r[k] for r in res])) for k in res[0]}
        ch = s.n_chains if s.persistent else "-"
        print(f"{s.label:14} {s.lr:6.3g} {s.momentum:4.2g} {s.weight_decay:7.2g} {ch:>4} {s.vbias:>7} "
              f"{s.decay:>6} | {m['both']:5.1f} {m['left']:5.1f} {m['right']:5.1f} | {m['max_w']:6.3f} "
              f"{m['peak_w']:6.3f} {m['fro_w']:6.2f} {m['dead']:5.2f} {m['pll']:6.3f} {m['gap']:7.1f} "
              f"{m['train_s']:4.1f}", flush=True)


if __name__ == "__main__":
    main()
