"""KL warm-up of the IMA bench's MVAE and JMVAE-KL baselines: single-modality retrieval with and without it.

Run by hand (needs the noisy digits; about 40 s per fit single-threaded, 12 fits by default, ~8-9 min):

    OMP_NUM_THREADS=1 python benchmarks/vae_warmup.py [--models mvae jmvae] [--warmup 0 300] [--seeds 0 1 2]
        [--latent 50] [--data noisy-digits-fsdd] [--epochs 50]

Every fit is the IMA bench's (``commonspace bench ima``, full run): speech standardised on train, images in
[0, 1]; ``create(name, dims, latent=..., hidden=ima.HIDDEN, likelihood=ima.LIKELIHOOD, anneal_steps=W)``,
``torch.manual_seed(seed)`` before building, the model's train defaults (Adam, lr 1e-3, batch 128), 50 epochs
with early stopping on the val loss (patience 10, best weights restored). ``W = 0`` is the model without a
warm-up (the bench before issue 12), ``W = 300`` the new default.

Columns, on the test split (330 items for noisy-digits-fsdd): ``P@10 <input>``: Euclidean P@10 of the
posterior means from both modalities / the image alone / the speech alone, each test item querying the other
test items, relevance = same digit (the bench's retrieval). ``AU <m>``: active units of modality m's posterior
alone, the latent dimensions whose posterior mean varies over the test items, Var_x(mu_d) > 0.01 (Burda et al.
2016); ``KL/unit <m>``: the mean over items and latent dimensions of KL(q(z | x_m) || N(0, I)); 0 AU and
KL/unit ~0 = that modality's posterior collapsed onto the prior. ``epochs``: epochs run (early stopping),
``best``: the epoch whose weights were kept.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from commonspace.bench.specs import ima
from commonspace.data import builtin
from commonspace.data.dataset import MultimodalDataset, Standardizer
from commonspace.eval.retrieval import retrieval_metrics
from commonspace.models import create
from commonspace.models.base import MultimodalModel
from commonspace.models.vae import kl_standard_normal
from commonspace.train import TrainConfig, Trainer

PATIENCE = 10  # the bench's full-run Plan (ima._plan without --quick): 50 epochs, patience 10
MODS = ("image", "speech")
ACTIVE = 0.01  # Burda et al.'s active-unit threshold on Var_x(E_q[z_d])


def load(name: str) -> MultimodalDataset:
    data = builtin.load(name)
    st = Standardizer().fit(data.select(["speech"]), "train")
    return st.transform(data.select(list(MODS)))


def fit(name: str, data: MultimodalDataset, latent: int, warmup: int, seed: int,
        epochs: int) -> tuple[MultimodalModel, dict]:
    torch.manual_seed(seed)
    model = create(name, dict(data.dims), latent=latent, hidden=ima.HIDDEN, likelihood=ima.LIKELIHOOD,
                   anneal_steps=warmup)
    cfg = TrainConfig.for_model(model, seed=seed, epochs=epochs, patience=PATIENCE, progress=False)
    t0 = time.perf_counter()
    hist = Trainer(model, cfg).fit(data, train="train", val="val", resume=False)
    best = max((r["epoch"] for r in hist if r["improved"]), default=len(hist))
    return model, {"epochs": len(hist), "best": best, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model: MultimodalModel, data: MultimodalDataset) -> dict[str, float]:
    model.eval()
    te = data.split("test")
    y = data.labels[te]
    out: dict[str, float] = {}
    for inp, mods in (("both", list(MODS)), *((m, [m]) for m in MODS)):
        mu, logvar = model.apply_batches(data, lambda b, mods=mods: torch.cat(model.posterior(b.only(mods)), 1), te
                                         ).split(model.latent, 1)
        r = retrieval_metrics(mu, mu, y, y, ks=(10,), metric="euclidean", exclude_self=True)
        out[f"P@10 {inp}"] = float(r["p@10"])
        if inp != "both":
            out[f"AU {inp}"] = float((mu.var(0) > ACTIVE).sum())
            out[f"KL/unit {inp}"] = float(kl_standard_normal(mu, logvar).mean() / model.latent)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mvae", "jmvae"], choices=["mvae", "jmvae"])
    ap.add_argument("--warmup", nargs="+", type=int, default=[0, 300], help="anneal_steps values to compare")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--latent", type=int, default=50)
    ap.add_argument("--data", default="noisy-digits-fsdd", choices=["noisy-digits-fsdd", "noisy-digits"])
    ap.add_argument("--epochs", type=int, default=50, help="the bench's full run: 50")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load(args.data)
    print(f"{args.data}: {data.n} pairs, train {data.split('train').numel()}, latent {args.latent}, "
          f"{args.epochs} epochs, patience {PATIENCE}, torch threads {torch.get_num_threads()}")
    cols = ["P@10 both", "P@10 image", "P@10 speech", "AU image", "AU speech", "KL/unit image", "KL/unit speech",
            "epochs", "best"]
    print("| model | anneal_steps | seed | " + " | ".join(cols) + " | s |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    summary: dict[tuple[str, int], list[dict[str, float]]] = {}
    for name in args.models:
        for w in args.warmup:
            for seed in args.seeds:
                model, info = fit(name, data, args.latent, w, seed, args.epochs)
                row = {**evaluate(model, data), **info}
                summary.setdefault((name, w), []).append(row)
                print(f"| {name} | {w} | {seed} | " + " | ".join(f"{row[c]:.4g}" for c in cols)
                      + f" | {row['seconds']:.0f} |", flush=True)
    print("\nmean ± sd over seeds (min in brackets for P@10)")
    print("| model | anneal_steps | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (name, w), rows in summary.items():
        cells = []
        for c in cols:
            v = [r[c] for r in rows]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} ± {sd:.4f}" + (f" [{min(v):.4f}]" if c.startswith("P@") else ""))
        print(f"| {name} | {w} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
