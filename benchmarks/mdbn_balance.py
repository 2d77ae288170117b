"""MDBN pathway balance on Wikipedia (image SIFT histograms + text LDA proportions): classification MAP.

Run by hand (needs /work/shared/data; about 2-3 s per run single-threaded):

    OMP_NUM_THREADS=1 python benchmarks/mdbn_balance.py [--epochs 8] [--seeds 0 1 2] [--only NAME ...]

Every setting trains ``create("mdbn", dims, layers_x=[64], layers_y=[64], shared=64, ...)`` as the "wikipedia"
bench does (SGD momentum 0.9, lr 0.01 unless a stage overrides it, batch 128, ``--epochs`` per stage), then a
logistic probe (classification MAP, %) on the joint code from both modalities, and from each one alone (the
other inferred by mean-field in the top MRBM, 10 rounds), fitted on the training split and tested on the test
split: ``image`` / ``text`` with the modality's own probe (fitted on the training codes from that modality
alone: what the pathway carries, the yardstick for "the better modality alone"), ``image|joint`` /
``text|joint`` with the joint-code probe (fitted on the training set's joint code, the bench's headline
single-modality protocol).

Diagnostics (training split, both modalities given), which show *why* a joint code is or is not balanced:
``sd_x1``/``sd_y1`` the mean per-unit standard deviation of each stack's output (what the top MRBM gets from
that pathway; ~0 = the pathway learned nothing); ``|Wx|``/``|Wy|`` the Frobenius norms of the top MRBM's
weights; ``in_x``/``in_y`` the mean per-unit standard deviation of ``W^x x'`` and ``W^y y'`` (each group's
say in the joint code); ``sat_x``/``sat_y`` the fraction of top units saturated (p < 0.05 or > 0.95) from that
group alone. ``margin``: over the seeds, the smallest ``both - max(image, text)`` (>= 0: the joint code is at
least as good as the better modality alone for every seed).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import torch

from commonspace.data import builtin
from commonspace.data.dataset import MultimodalDataset, Standardizer
from commonspace.eval.probe import logistic_probe, logistic_probe_many
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer

RSM = {"visible": ("gaussian", "softmax")}
#: name -> (preprocessing, MDBN hyper-parameters beyond the bench's sizes)
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bench: gauss/gauss, both std": ("both", {}),
    "gauss/gauss, text lr 0.05": ("both", {"pretrain_lr": (None, 0.05)}),
    "gauss/gauss, joint lr 0.003": ("both", {"joint_lr": 0.003}),
    "rsm D=30, lr 0.01": ("image", {**RSM, "doc_length": 30}),
    "rsm D=300, lr 0.01": ("image", {**RSM, "doc_length": 300}),
    "rsm D=100, text lr 1e-4": ("image", {**RSM, "doc_length": 100, "pretrain_lr": (None, 1e-4)}),
    "rsm D=300, text lr 3.3e-5": ("image", {**RSM, "doc_length": 300, "pretrain_lr": (None, 0.01 / 300)}),
    "recommended: rsm D=300, text lr 3.3e-5, joint lr 0.003":
        ("image", {**RSM, "doc_length": 300, "pretrain_lr": (None, 0.01 / 300), "joint_lr": 0.003}),
    "recommended, sim=cca": ("image", {**RSM, "doc_length": 300, "pretrain_lr": (None, 0.01 / 300),
                                       "joint_lr": 0.003, "sim": "cca"}),
    "recommended, sim=ce_xy": ("image", {**RSM, "doc_length": 300, "pretrain_lr": (None, 0.01 / 300),
                                         "joint_lr": 0.003, "sim": "ce_xy"}),
    "recommended, sim=ce_yx": ("image", {**RSM, "doc_length": 300, "pretrain_lr": (None, 0.01 / 300),
                                         "joint_lr": 0.003, "sim": "ce_yx"}),
    "bench, sim=cca": ("both", {"sim": "cca"}),
    "rsm image and text D=300, lr 3.3e-5, joint lr 0.003":
        ("none", {"visible": ("softmax", "softmax"), "doc_length": 300, "pretrain_lr": 0.01 / 300,
                  "joint_lr": 0.003}),
}


def _prepare(raw: MultimodalDataset, which: str) -> MultimodalDataset:
    """Standardise both modalities (the bench), the image only (the RSM needs the text's proportions), or none."""
    if which == "none":
        return raw
    fit_on = raw if which == "both" else raw.select([which])
    return Standardizer().fit(fit_on, "train").transform(raw)


def _probe(model, data: MultimodalDataset) -> dict[str, float]:
    """MAP (%) of the joint code (``both``) and of each single-modality code (the other inferred, 10 rounds):
    ``<m>`` under its own probe (fitted on the training set's code from ``m`` alone: what that pathway carries)
    and ``<m>|joint`` under the joint-code probe (fitted on the training set's joint code; the bench's headline)."""
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    ytr, yte = data.labels[tr].numpy(), data.labels[te].numpy()
    with torch.no_grad():
        model.eval()
        tests = {"both": (model.embed_with(teb, 10).numpy(), yte)}
        tests.update({m: (model.embed_with(teb.only([m]), 10).numpy(), yte) for m in ("image", "text")})
        joint = logistic_probe_many(model.embed_with(trb, 10).numpy(), ytr, tests, seed=0)
        out = {"both": 100.0 * joint["both"]["map"]}
        for m in ("image", "text"):
            own = logistic_probe_many(model.embed_with(trb.only([m]), 10).numpy(), ytr, {m: tests[m]}, seed=0)
            out[m] = 100.0 * own[m]["map"]
            out[f"{m}|joint"] = 100.0 * joint[m]["map"]
    return out


def _diagnose(model, data: MultimodalDataset) -> dict[str, float]:
    with torch.no_grad():
        tx, ty, _, _ = model._top_inputs(data.batch(data.split("train")))
        ax, ay, b = tx @ model.top.weight_x.T, ty @ model.top.weight_y.T, model.top.bias_h

        def sat(z: torch.Tensor) -> float:
            p = torch.sigmoid(z + b)
            return float(((p < 0.05) | (p > 0.95)).float().mean())

        return {"sd_x1": float(tx.std(0).mean()), "sd_y1": float(ty.std(0).mean()),
                "|Wx|": float(model.top.weight_x.norm()), "|Wy|": float(model.top.weight_y.norm()),
                "in_x": float(ax.std(0).mean()), "in_y": float(ay.std(0).mean()), "sat_x": sat(ax), "sat_y": sat(ay)}


def run(data: MultimodalDataset, hp: dict[str, Any], seed: int, epochs: int) -> tuple[dict, dict] | None:
    torch.manual_seed(seed)
    model = create("mdbn", data.dims, layers_x=[64], layers_y=[64], shared=64, **{"sim": "none", **hp})
    cfg = TrainConfig.for_model(model, seed=seed, progress=False, epochs=epochs, batch_size=128)
    try:
        Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    except FloatingPointError:
        return None
    return _probe(model, data), _diagnose(model, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="epochs per stage (the bench's quick mode: 8)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="setting names (substrings) to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    raw = builtin.load("wikipedia").select(["image", "text"])
    tr, te = raw.split("train"), raw.split("test")
    base = {m: 100.0 * logistic_probe(raw.features[m][tr].numpy(), raw.labels[tr].numpy(),
                                      raw.features[m][te].numpy(), raw.labels[te].numpy(), seed=0)["map"]
            for m in ("image", "text")}
    print(f"raw-feature probe MAP: image {base['image']:.1f}, text {base['text']:.1f}; "
          f"{args.epochs} epochs per stage, seeds {args.seeds}")
    cols = ["both", "image", "text", "image|joint", "text|joint"]
    dcols = ["sd_x1", "sd_y1", "|Wx|", "|Wy|", "in_x", "in_y", "sat_x", "sat_y"]
    print(f"{'setting':56s} " + " ".join(f"{c:>11s}" for c in cols) + f" {'margin':>6s} "
          + " ".join(f"{c:>6s}" for c in dcols))
    for name, (prep, hp) in SETTINGS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        data = _prepare(raw, prep)
        t0 = time.perf_counter()
        runs = [run(data, hp, s, args.epochs) for s in args.seeds]
        done = [r for r in runs if r is not None]
        if not done:
            print(f"{name:56s} diverged for every seed")
            continue

        def cell(c: str, done: list = done) -> str:
            vals = [r[0][c] for r in done]
            return f"{statistics.mean(vals):5.1f}+-{statistics.pstdev(vals):4.1f}"

        diag = {c: statistics.mean(r[1][c] for r in done) for c in dcols}
        # the worst seed's joint code against its own better single-modality code
        margin = min(r[0]["both"] - max(r[0]["image"], r[0]["text"]) for r in done)
        note = "" if len(done) == len(runs) else f" ({len(runs) - len(done)} diverged)"
        print(f"{name:56s} " + " ".join(f"{cell(c):>11s}" for c in cols) + f" {margin:6.1f} "
              + " ".join(f"{diag[c]:6.3g}" for c in dcols) + f"  {time.perf_counter() - t0:.0f}s{note}", flush=True)


if __name__ == "__main__":
    main()
