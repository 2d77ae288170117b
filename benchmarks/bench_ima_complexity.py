"""IMA's complexity claim (paper Sec. 1 and Table 4): parameters and seconds per epoch against the number M of
modalities for IMA, MVAE and JMVAE-KL, on the six UCI mfeat views (builtin ``uci-mfeat``).

Run by hand (timings on a shared machine move by 20% or more; the script quotes medians over epochs):

    python benchmarks/bench_ima_complexity.py --epochs 6 --repeats 3 --threads 1 --out bench-results/ima-complexity

M = 2..6 uses the first M views in the order fou, fac, kar, pix, zer, mor, standardised on train (1400 train
items). Every model gets the same per-modality MLP widths (``--hidden``, two layers) and a 50-d latent. JMVAE-KL
builds 2^M - 1 inference networks whose hidden sizes are the sums of their modalities' sizes (so its widest
network grows with M too); MVAE has M experts and M + 2 ELBO terms per batch (joint, unimodal, one random
subset for M >= 3); IMA has M encoders, M decoders, M importance networks and 4M + 1 loss terms. Seconds per
epoch are the median of the Trainer history's ``seconds`` over all but the first epoch (warm-up), training only
(no validation); IMA's epoch is its autoencoder-stage epoch plus its importance-stage epoch. With ``--repeats``
every model is trained that many times (fresh, same seed) and the smallest median is kept: other jobs on a
shared machine only ever add time.
Writes ``complexity.md``, ``complexity.json`` and ``complexity.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from commonspace import create
from commonspace.data import builtin
from commonspace.data.dataset import Standardizer
from commonspace.data.io import atomic_write
from commonspace.train import TrainConfig, Trainer

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
MODELS = {"IMA": "ima", "MVAE": "mvae", "JMVAE-KL": "jmvae"}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loss_terms(name: str, m: int) -> int:
    """Loss terms one batch evaluates (see the module docstring)."""
    if name == "IMA":
        return 4 * m + 1  # rec, align, corr, local per modality + glob
    if name == "MVAE":
        return 1 + m + (1 if m >= 3 else 0)  # joint + unimodal ELBOs + one sampled subset
    return 1 + (2 ** m - 2)  # joint ELBO + one KL per proper subset


def measure(name: str, data, hidden: int, epochs: int, seed: int) -> dict:
    dims = dict(data.dims)
    torch.manual_seed(seed)
    kw = {"ae_epochs": epochs, "imp_epochs": epochs} if name == "IMA" else {}
    model = create(MODELS[name], dims, latent=50, hidden=(hidden, hidden), **kw)
    cfg = TrainConfig.for_model(model, epochs=epochs, progress=False, seed=seed)
    hist = Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    by_stage: dict[str, list[float]] = {}
    for h in hist:
        by_stage.setdefault(h["stage"], []).append(h["seconds"])
    # median over all but each stage's first epoch (warm-up, allocator, first-call overheads)
    med = {s: statistics.median(v[1:] if len(v) > 1 else v) for s, v in by_stage.items()}
    nets = {"IMA": len(dims), "MVAE": len(dims), "JMVAE-KL": 2 ** len(dims) - 1}[name]
    return {"model": name, "M": len(dims), "params": n_params(model), "inference_networks": nets,
            "loss_terms": loss_terms(name, len(dims)), "seconds_per_epoch": sum(med.values()),
            "stage_seconds": med}


def write_png(rows: list[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, mk in zip(MODELS, ("o", "s", "^"), strict=True):
        rs = [r for r in rows if r["model"] == name]
        ms = [r["M"] for r in rs]
        a1.plot(ms, [r["params"] / 1e6 for r in rs], marker=mk, label=name)
        a2.plot(ms, [r["seconds_per_epoch"] for r in rs], marker=mk, label=name)
    a1.set_yscale("log")
    a1.set_ylabel("parameters (millions, log scale)")
    a2.set_ylabel("seconds per epoch (median)")
    for a in (a1, a2):
        a.set_xlabel("modalities M (mfeat views)")
        a.set_xticks(sorted({r["M"] for r in rows}))
        a.grid(True, alpha=0.3)
        a.legend(fontsize="small")
    fig.suptitle("IMA vs MVAE vs JMVAE-KL: cost against the number of modalities", fontsize="medium")
    fig.tight_layout()
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def linear_fit(ms: list[int], ys: list[float]) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of a least-squares line."""
    slope, icpt = np.polyfit(ms, ys, 1)
    pred = slope * np.asarray(ms) + icpt
    ss = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    r2 = 1.0 - float(((np.asarray(ys) - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return float(slope), float(icpt), r2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="epochs per model (per stage for IMA)")
    ap.add_argument("--repeats", type=int, default=1, help="train each model this often; keep the fastest median")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128, help="units in each of the two hidden layers per modality")
    ap.add_argument("--max-m", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/ima-complexity"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    full = builtin.load("uci-mfeat")
    full = Standardizer().fit(full, "train").transform(full)
    rows = []
    for m in range(2, args.max_m + 1):
        data = full.select(list(VIEWS[:m]))
        for name in MODELS:
            runs = [measure(name, data, args.hidden, args.epochs, args.seed) for _ in range(max(1, args.repeats))]
            r = min(runs, key=lambda x: x["seconds_per_epoch"])
            r["repeats_seconds"] = [x["seconds_per_epoch"] for x in runs]
            rows.append(r)
            print(f"M={m} {name:9s} params {r['params']:>10,d} nets {r['inference_networks']:>3d} "
                  f"terms {r['loss_terms']:>3d} s/epoch {r['seconds_per_epoch']:.3f}", flush=True)
    lines = [f"Torch {torch.__version__}, {torch.get_num_threads()} thread(s), hidden ({args.hidden}, {args.hidden}) "
             f"per modality, latent 50, batch 128, {args.epochs} epochs per model (median of epochs 2..; fastest of "
             f"{max(1, args.repeats)} runs), "
             "uci-mfeat train split (1400 items).", "",
             "| M | views | model | parameters | inference networks | loss terms | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {'+'.join(VIEWS[:r['M']])} | {r['model']} | {r['params']:,} | "
                     f"{r['inference_networks']} | {r['loss_terms']} | {r['seconds_per_epoch']:.3f} |")
    lines.append("")
    for name in MODELS:
        rs = [r for r in rows if r["model"] == name]
        ms = [r["M"] for r in rs]
        for what, key in (("parameters", "params"), ("s / epoch", "seconds_per_epoch")):
            ys = [float(r[key]) for r in rs]
            slope, _, r2 = linear_fit(ms, ys)
            lines.append(f"- {name} {what}: M={ms[-1]} / M={ms[0]} = {ys[-1] / ys[0]:.2f}x; linear fit R^2 = "
                         f"{r2:.3f} (slope {slope:.4g} per modality)")
    md = "\n".join(lines) + "\n"
    atomic_write(args.out / "complexity.md", lambda fh: fh.write(md.encode()))
    atomic_write(args.out / "complexity.json", lambda fh: fh.write(json.dumps(
        {"threads": torch.get_num_threads(), "hidden": args.hidden, "epochs": args.epochs, "repeats": args.repeats,
         "rows": rows},
        indent=2).encode()))
    png = write_png(rows, args.out / "complexity.png")
    print(md)
    print(f"wrote {args.out / 'complexity.md'}, {args.out / 'complexity.json'}, {png}")


if __name__ == "__main__":
    main()
