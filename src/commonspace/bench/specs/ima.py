"""IMA paper (issue 4): importance detection against rho, retrieval (Table 1), classification (Table 5), t-SNE.

Protocol (stated in the report): the noisy image-speech digits (IMA Section 4), with real FSDD speech when a
local copy is found (``noisy-digits-fsdd``) and eSpeak-synthesised speech otherwise (``noisy-digits``);
``ctx.datasets`` picks either or both. Speech is standardised on train, images stay in [0, 1] (BCE / Bernoulli
for images, SSE / Gaussian for speech). Per seed:

1. IMA's autoencoder stage is trained once per latent size (its importance networks output 0.5 throughout,
   so the stage does not depend on rho); for each rho of the grid the importance stage is trained from that
   autoencoder (50-d), and precision / recall / F1 of the noise class (importance < 0.5) are measured on val
   and test, both at y < 0.5 and below a label-free 2-means cut of the train importances, with the ROC AUC.
   The rho used for the representations is chosen per modality on *val* F1 (2-means cut).
2. IMA weighted / unweighted, JMVAE-KL, MVAE and the denoising AE (2-d and 50-d) embed every item from both
   modalities and from one; retrieval = Euclidean P@10 / P@50, each test item querying the other test items,
   relevance = same digit; classification = the 2-layer ReLU MLP probe (train -> test, early stopping on val),
   also on the noisy test subsets.
3. The first seed's 50-d IMA is drawn with t-SNE (perplexity 10) on a subsample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from commonspace.bench.report import BenchResult, ResultTable, Row
from commonspace.bench.runner import BenchContext, BenchSpec, register_spec
from commonspace.data import builtin
from commonspace.data.dataset import Batch, MultimodalDataset, Standardizer
from commonspace.data.io import atomic_write
from commonspace.eval.importance import noise_detection_auc, noise_detection_scores, two_means_threshold
from commonspace.eval.plots import plot_lines
from commonspace.eval.probe import mlp_probe
from commonspace.eval.retrieval import retrieval_metrics
from commonspace.models import create
from commonspace.models.base import MultimodalModel
from commonspace.train import TrainConfig, Trainer

PAPER = ("IMA: Importance-based Multimodal Autoencoder (Sections 4-6, Tables 1 and 5, Figures 2, 4 and 6; "
         "MNIST-TIDIGITS)")
MODS = ("image", "speech")
DATASETS = ("noisy-digits-fsdd", "noisy-digits")
#: extra loader keywords per dataset (tests shrink the data here, e.g. ``n_per_class``)
LOAD_KW: dict[str, dict] = {}

# The paper's architecture for MNIST-TIDIGITS: two-layer encoder / decoder, 500 units for images, 100 for speech.
HIDDEN = {"image": [500, 500], "speech": [100, 100]}
RECON = {"image": "bce", "speech": "sse"}
LIKELIHOOD = {"image": "bernoulli", "speech": "gaussian"}
LATENTS = (2, 50)
INPUTS = ("image+speech", "image", "speech")
METHODS = ("IMA weighted", "IMA unweighted", "JMVAE-KL", "MVAE", "DAE")
BASELINES = {"JMVAE-KL": "jmvae", "MVAE": "mvae", "DAE": "dae"}

# Paper figures found in the extracted text: the DAE's multimodal P@K (Section 6.2), the best rho (Section 6.1).
PAPER_RETRIEVAL = {"DAE (image+speech)": {"P@10 2-d": "0.5975", "P@50 2-d": "0.5488", "P@10 50-d": "0.8968",
                                          "P@50 50-d": "0.7818"}}
PAPER_RHO = {"image": 0.8, "speech": 0.3}
FULL_RHOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
QUICK_RHOS = (0.3, 0.5, 0.7, 0.8, 0.9)


@dataclass
class Plan:
    """Run sizes; ``--quick`` and ``ctx.max_iterations`` shrink them."""

    seeds: list[int]
    epochs: int  # autoencoder stage and baselines
    imp_epochs: int
    patience: int | None
    rhos: tuple[float, ...]
    probe_epochs: int
    probe_patience: int
    tsne_points: int
    tsne_iter: int = 1000  # sklearn's default; smoke runs use its minimum, 250


def _plan(ctx: BenchContext) -> Plan:
    if ctx.quick:
        p = Plan(list(ctx.seeds[:2]), 5, 15, None, QUICK_RHOS, 50, 10, 500)
    else:
        p = Plan(list(ctx.seeds), 50, 50, 10, FULL_RHOS, 200, 20, 1000)
    if ctx.max_iterations is not None:
        cap = max(1, int(ctx.max_iterations))
        p.epochs, p.imp_epochs, p.probe_epochs = min(p.epochs, cap), min(p.imp_epochs, cap), min(p.probe_epochs, cap)
        p.tsne_points, p.tsne_iter = min(p.tsne_points, 200), 250  # smoke runs: a short t-SNE on few points
    return p


# ----------------------------------------------------------------- data


def _load(ctx: BenchContext, res: BenchResult) -> list[MultimodalDataset]:
    """FSDD speech when available, else eSpeak speech; ``ctx.datasets`` names either or both explicitly."""
    wanted = [k for k in DATASETS if ctx.wants(k)] if ctx.datasets is not None else list(DATASETS)
    out = []
    for key in wanted:
        try:
            root = ctx.data_root if key == "noisy-digits-fsdd" else None
            out.append(builtin.load(key, root=root, **LOAD_KW.get(key, {})))
        except builtin.DatasetUnavailable as exc:
            res.skipped.append((key, str(exc)))
            continue
        if ctx.datasets is None:
            break  # the default run uses the first available one (FSDD preferred)
    return out


def _prepare(data: MultimodalDataset) -> MultimodalDataset:
    """Standardise speech on train; images stay in [0, 1] for the Bernoulli / BCE losses."""
    st = Standardizer().fit(data.select(["speech"]), "train")
    return st.transform(data.select(list(MODS)))


# ----------------------------------------------------------------- training


def _fit(model: MultimodalModel, data: MultimodalDataset, seed: int, epochs: int, patience: int | None,
         progress: bool) -> float:
    """Train (early stopping on val loss when ``patience``); returns the wall seconds."""
    cfg = TrainConfig.for_model(model, seed=seed, epochs=epochs, patience=patience, progress=progress)
    t0 = time.perf_counter()
    Trainer(model, cfg).fit(data, train="train", val="val", resume=False)
    return time.perf_counter() - t0


def _ima(dims: dict, latent: int, rho: float | dict, ae_epochs: int, imp_epochs: int) -> MultimodalModel:
    return create("ima", dims, latent=latent, hidden=HIDDEN, recon=RECON, rho=rho, ae_epochs=ae_epochs,
                  imp_epochs=imp_epochs)


def _importance_stage(ae: MultimodalModel, data: MultimodalDataset, latent: int, rho: float | dict, seed: int,
                      plan: Plan, progress: bool) -> tuple[MultimodalModel, float]:
    """A copy of the trained autoencoder ``ae`` whose importance networks are trained with prior ``rho``."""
    m = _ima(dict(data.dims), latent, rho, 0, plan.imp_epochs)
    m.load_state_dict(ae.state_dict())
    torch.manual_seed(seed)
    # no early stopping here: L_corr and L_local are mini-batch statistics, so the val loss is too noisy to
    # stop on, and the importances keep separating long after it flattens (docs/benchmarks.md, IMA)
    return m, _fit(m, data, seed, plan.imp_epochs, None, progress)


def _embed_all(model: MultimodalModel, data: MultimodalDataset, fn: Callable[[Batch], Tensor]) -> dict[str, Tensor]:
    """{input: (N, d) representation of every row} from both modalities and from each one alone."""
    return {"image+speech": model.apply_batches(data, fn),
            "image": model.apply_batches(data, lambda b: fn(b.only(["image"]))),
            "speech": model.apply_batches(data, lambda b: fn(b.only(["speech"])))}


# ----------------------------------------------------------------- evaluation


def _retrieval(e: Tensor, y: Tensor, noisy: np.ndarray) -> dict[str, float]:
    r = retrieval_metrics(e, e, y, y, ks=(10, 50), metric="euclidean", exclude_self=True, per_query=True)
    pq = r["per_query"]["p@10"]
    return {"P@10": float(r["p@10"]), "P@50": float(r["p@50"]),
            "P@10 noisy queries": float(np.nanmean(pq[noisy])) if noisy.any() else float("nan")}


def _classification(e: Tensor, data: MultimodalDataset, seed: int, plan: Plan,
                    subsets: dict[str, np.ndarray]) -> dict[str, float]:
    """The paper's 2-layer ReLU MLP: train on train, early stopping on val, accuracy on test and its subsets.

    ``mlp_probe`` is deterministic in (train, val, seed), so each subset call trains the same classifier."""
    tr, va, te = (data.split(s) for s in ("train", "val", "test"))
    y = data.labels
    out = {}
    for name, rows in {"accuracy": np.ones(len(te), bool), **subsets}.items():
        if not rows.any():
            out[name] = float("nan")
            continue
        r = mlp_probe(e[tr], y[tr], e[te][torch.as_tensor(rows)], y[te][torch.as_tensor(rows)], val=(e[va], y[va]),
                      epochs=plan.probe_epochs, patience=plan.probe_patience, seed=seed)
        out[name] = r["accuracy"]
    return out


def _add(table: dict, row: str, metrics: dict[str, float], suffix: str = "") -> None:
    d = table.setdefault(row, {})
    for k, v in metrics.items():
        d.setdefault(f"{k}{suffix}", []).append(v)


def _tsne_png(model: MultimodalModel, data: MultimodalDataset, points: int, seed: int, path: Path,
              max_iter: int = 1000) -> Path:
    """2x2 t-SNE (perplexity 10, angle 0.5 as the paper) of u_image, u_speech and z weighted / unweighted."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.n, min(points, data.n), replace=False))
    idx = torch.as_tensor(rows)
    u = model.apply_batches(data, model.encode, idx)
    spaces = {"image codes u_image": u["image"], "speech codes u_speech": u["speech"],
              "joint z (importance-weighted)": model.apply_batches(data, model.embed, idx),
              "joint z (unweighted)": model.apply_batches(data, model.embed_unweighted, idx)}
    labels = data.labels[idx].numpy()
    ni, ns = data.meta["noise_image"][rows], data.meta["noise_speech"][rows]
    grey = {"image codes u_image": ni, "speech codes u_speech": ns}
    cmap = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(10, 9), dpi=110)
    FigureCanvasAgg(fig)
    for k, (title, e) in enumerate(spaces.items()):
        ax = fig.add_subplot(2, 2, k + 1)
        xy = TSNE(2, perplexity=min(10.0, len(rows) - 1.0), angle=0.5, init="pca",
                  max_iter=max_iter, random_state=seed).fit_transform(e.numpy().astype(np.float64))
        noise = grey.get(title)
        if noise is None:  # joint spaces: every pair keeps its digit colour; pairs holding noise drawn as x
            any_noise = ni | ns
            for mask, marker in ((~any_noise, "o"), (any_noise, "x")):
                ax.scatter(xy[mask, 0], xy[mask, 1], c=cmap(labels[mask] % 10), s=6 if marker == "o" else 14,
                           marker=marker, linewidths=0.6 if marker == "x" else 0)
        else:  # unimodal spaces: that modality's noise in grey
            ax.scatter(xy[~noise, 0], xy[~noise, 1], c=cmap(labels[~noise] % 10), s=6, linewidths=0)
            ax.scatter(xy[noise, 0], xy[noise, 1], c="0.6", s=6, linewidths=0, label="noise")
            ax.legend(fontsize="small", loc="best")
        ax.set_title(title, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of 50-d IMA ({len(rows)} items; colour = digit 0-9, tab10; grey = that modality's noise; "
                 "x = pair with noise)", fontsize="small")
    fig.tight_layout()
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


# ----------------------------------------------------------------- one dataset


def _run_dataset(data: MultimodalDataset, ctx: BenchContext, plan: Plan) -> list[ResultTable]:
    key = data.name
    data = _prepare(data)
    dims = dict(data.dims)
    te = data.split("test")
    va = data.split("val")
    tr = data.split("train")
    yt = data.labels[te]
    noise = {m: np.asarray(data.meta[f"noise_{m}"], bool) for m in MODS}
    noise_te = {m: noise[m][te.numpy()] for m in MODS}
    noise_va = {m: noise[m][va.numpy()] for m in MODS}
    noisy_te = noise_te["image"] | noise_te["speech"]
    subsets = {"accuracy image noise": noise_te["image"], "accuracy speech noise": noise_te["speech"]}
    ctx.out_dir.mkdir(parents=True, exist_ok=True)

    imp_test: dict[float, dict[str, list[dict]]] = {r: {m: [] for m in MODS} for r in plan.rhos}
    best_rows: dict[str, dict[str, list[float]]] = {}
    retrieval: dict[str, dict[str, list[float]]] = {}
    classification: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, list[float]]] = {}
    tsne_path = None

    for seed in plan.seeds:
        ctx.console.print(f"[dim]ima {key}: seed {seed}[/dim]")
        models: dict[tuple[str, int], MultimodalModel] = {}
        chosen: dict[str, float] = {}
        for latent in sorted(LATENTS, reverse=True):  # 50-d first: its rho sweep picks rho for both sizes
            torch.manual_seed(seed)
            ae = _ima(dims, latent, 0.5, plan.epochs, 0)
            _add(seconds, "IMA autoencoder stage", {f"{latent}-d": _fit(ae, data, seed, plan.epochs, plan.patience,
                                                                         ctx.progress)})
            if latent == max(LATENTS):
                rules = ("y < 0.5", "2-means")
                sweep = {}
                val_f1 = {r: {m: [] for m in MODS} for r in rules}
                test_sc = {r: {m: [] for m in MODS} for r in rules}
                for rho in plan.rhos:
                    m_rho, s = _importance_stage(ae, data, latent, rho, seed, plan, ctx.progress)
                    _add(seconds, "IMA importance stage (one rho)", {f"{latent}-d": s})
                    sweep[rho] = m_rho
                    y = m_rho.apply_batches(data, m_rho.importance)  # (N, 2) in MODS order
                    cut = two_means_threshold(y[tr])  # label-free, fitted on train importances
                    for j, mod in enumerate(MODS):
                        auc = noise_detection_auc(y[te, j], noise_te[mod])
                        for rule, th in zip(rules, (0.5, float(cut[j])), strict=True):
                            v = noise_detection_scores(y[va, j], noise_va[mod], threshold=th)
                            t = {**noise_detection_scores(y[te, j], noise_te[mod], threshold=th), "auc": auc}
                            val_f1[rule][mod].append(v["f1"])
                            test_sc[rule][mod].append(t)
                        imp_test[rho][mod].append({**test_sc[rules[0]][mod][-1],
                                                   "f1 2-means": test_sc[rules[1]][mod][-1]["f1"]})
                # best val F1; ties (e.g. all 0) go to the rho nearest the paper's choice
                picks = {}
                for rule in rules:
                    picks[rule, "test"] = {mod: int(np.argmax([t["f1"] for t in test_sc[rule][mod]])) for mod in MODS}
                    picks[rule, "val"] = {mod: plan.rhos.index(min(
                        plan.rhos, key=lambda r, mod=mod, rule=rule: (-val_f1[rule][mod][plan.rhos.index(r)],
                                                                      abs(r - PAPER_RHO[mod])))) for mod in MODS}
                chosen = {mod: plan.rhos[picks["2-means", "val"][mod]] for mod in MODS}
                n_te = len(te)
                for label, (rule, by) in (
                        ("y < 0.5, best rho by test F1 (the paper's reading)", ("y < 0.5", "test")),
                        ("y < 0.5, rho chosen by val F1", ("y < 0.5", "val")),
                        ("2-means threshold, best rho by test F1", ("2-means", "test")),
                        ("2-means threshold, rho chosen by val F1 (used for the representations)",
                         ("2-means", "val"))):
                    pick = picks[rule, by]
                    sc = {mod: test_sc[rule][mod][pick[mod]] for mod in MODS}
                    wrong = sum(sc[mod]["fp"] + sc[mod]["fn"] for mod in MODS) / (len(MODS) * n_te)
                    _add(best_rows, label, {"rho image": plan.rhos[pick["image"]],
                                            "rho speech": plan.rhos[pick["speech"]],
                                            "F1 image": sc["image"]["f1"], "F1 speech": sc["speech"]["f1"],
                                            "misclassified image": sc["image"]["misclassified"],
                                            "misclassified speech": sc["speech"]["misclassified"],
                                            "misclassified (both)": wrong,
                                            "AUC image": sc["image"]["auc"], "AUC speech": sc["speech"]["auc"]})
                if chosen["image"] == chosen["speech"]:
                    final = sweep[chosen["image"]]
                else:
                    final, _ = _importance_stage(ae, data, latent, dict(chosen), seed, plan, ctx.progress)
                del sweep
            else:
                final, s = _importance_stage(ae, data, latent, dict(chosen), seed, plan, ctx.progress)
                _add(seconds, "IMA importance stage (one rho)", {f"{latent}-d": s})
            models[("IMA", latent)] = final

            if seed == plan.seeds[0] and latent == 50:
                tsne_path = _tsne_png(final, data, plan.tsne_points, seed, ctx.out_dir / f"ima_{key}_tsne.png",
                                      plan.tsne_iter)

            reps = {"IMA weighted": _embed_all(final, data, final.embed),
                    "IMA unweighted": _embed_all(final, data, final.embed_unweighted)}
            for label, name in BASELINES.items():
                hp = {"likelihood": LIKELIHOOD}
                torch.manual_seed(seed)
                model = create(name, dims, latent=latent, hidden=HIDDEN, **hp)
                _add(seconds, label, {f"{latent}-d": _fit(model, data, seed, plan.epochs, plan.patience,
                                                         ctx.progress)})
                reps[label] = _embed_all(model, data, model.embed)

            suffix = f" {latent}-d"
            for method in METHODS:
                for inp in INPUTS:
                    row = f"{method} ({inp})"
                    if method == "IMA unweighted" and inp != "image+speech":
                        # from one modality Eq. 1 is that modality's code whatever its weight: same numbers
                        src = "IMA weighted (" + inp + ")"
                        for table in (retrieval, classification):
                            for k, v in table[src].items():
                                if k.endswith(suffix):
                                    table.setdefault(row, {}).setdefault(k, []).append(v[-1])
                        continue
                    e = reps[method][inp]
                    _add(retrieval, row, _retrieval(e[te], yt, noisy_te), suffix)
                    _add(classification, row, _classification(e, data, seed, plan, subsets), suffix)

    # ------------------------------------------------------------- tables
    curves = {}
    for mod in MODS:
        for metric in ("precision", "recall", "f1", "f1 2-means", "auc"):
            curves[f"{mod} {metric}"] = (list(plan.rhos), [float(np.mean([t[metric] for t in imp_test[r][mod]]))
                                                           for r in plan.rhos])
    imp_png = plot_lines(curves, ctx.out_dir / f"ima_{key}_importance.png", xlabel="rho (prior fraction important)",
                         ylabel="noise class, test (mean over seeds)", ylim=(0, 1.02), figsize=(8.0, 5.0),
                         title=f"{key}: noise detection (paper's best rho: image 0.8, speech 0.3)")
    imp_rows = []
    for r in plan.rhos:
        vals = {f"{mod} {k}": [t[metric] for t in imp_test[r][mod]] for mod in MODS
                for k, metric in (("P", "precision"), ("R", "recall"), ("F1", "f1"), ("F1 2-means", "f1 2-means"),
                                  ("AUC", "auc"))}
        imp_rows.append(Row(f"rho = {r:g}", vals))
    n_seeds = len(plan.seeds)
    t_imp = ResultTable(
        f"{key}: importance detection, noise = positive class (predicted when y < 0.5), test split, 50-d IMA, "
        f"{n_seeds} seeds", [f"{mod} {k}" for mod in MODS for k in ("P", "R", "F1", "F1 2-means", "AUC")], imp_rows,
        scale=1.0, digits=3, notes=[f"Curves: {imp_png}.",
                         "The paper plots these curves (Figure 6) without printing their values.",
                         "AUC: ROC AUC of -y as a noise score (threshold-free; 0.5 = chance), a ranking the "
                         "0.5 threshold can hide.",
                         "F1 2-means: noise predicted below a label-free threshold fitted on the train "
                         "importances (the 1-D 2-means / Otsu cut, commonspace.eval.importance.two_means_threshold); "
                         "Eq. 4 fixes only the mean of y, so noise can sit below signal with every y above 0.5."])
    paper_best = {"rho image": "0.8", "rho speech": "0.3", "misclassified (both)": "~0.02"}
    paper_row = "y < 0.5, best rho by test F1 (the paper's reading)"
    t_best = ResultTable(
        f"{key}: best rho per modality (test scores at that rho), {n_seeds} seeds",
        ["rho image", "rho speech", "F1 image", "F1 speech", "misclassified image", "misclassified speech",
         "misclassified (both)", "AUC image", "AUC speech"],
        [Row(k, v, paper_best if k == paper_row else {}) for k, v in best_rows.items()], scale=1.0, digits=3,
        notes=["Paper (Section 6.1): best F1 at rho = 0.8 (image) and 0.3 (speech); 'around 2% of the data is "
               "misclassified by the importance network'.",
               "The representations below use, per seed, the rho with the best *val* F1 (2-means threshold) per "
               "modality (no test labels in any choice); the 2-d IMA reuses the 50-d choice."])
    metrics_r = [f"{k} {d}-d" for d in LATENTS for k in ("P@10", "P@50")] + \
                [f"P@10 noisy queries {d}-d" for d in LATENTS]
    t_ret = ResultTable(
        f"{key}: retrieval P@K (Euclidean, test items query the other test items, relevance = same digit), "
        f"{n_seeds} seeds", metrics_r,
        [Row(k, v, PAPER_RETRIEVAL.get(k, {})) for k, v in retrieval.items()], scale=1.0, digits=4,
        notes=["P@10 noisy queries: the mean P@10 of the test queries whose image or speech is synthetic noise "
               f"({int(noisy_te.sum())} of {len(te)}); the database is all other test items.",
               "Paper Table 1's values other than the denoising AE's (quoted in its Section 6.2) are not in the "
               "extracted text.",
               "From one modality IMA's weighted and unweighted codes coincide (Eq. 1 with one term), so the "
               "unweighted unimodal rows repeat the weighted ones."])
    metrics_c = [f"{k} {d}-d" for d in LATENTS for k in ("accuracy", "accuracy image noise",
                                                          "accuracy speech noise")]
    t_cls = ResultTable(
        f"{key}: digit classification with the 2-layer ReLU MLP probe (%), {n_seeds} seeds", metrics_c,
        [Row(k, v) for k, v in classification.items()],
        notes=[f"Probe: 256 ReLU units, Adam, full batch, at most {plan.probe_epochs} epochs, early stopping on "
               f"val loss (patience {plan.probe_patience}); trained on each representation of train, tested on "
               "test.",
               f"Noisy subsets: test pairs whose image ({int(noise_te['image'].sum())}) or speech "
               f"({int(noise_te['speech'].sum())}) is synthetic noise.",
               "Paper Table 5 values are not in the extracted text; it quotes 83.05% for the image encoder on "
               "pairs whose speech is noise (dimension not stated)."])
    t_sec = ResultTable(f"{key}: training wall seconds per model (mean over seeds)", [f"{d}-d" for d in LATENTS],
                        [Row(k, v) for k, v in seconds.items()], scale=1.0, digits=1,
                        notes=[f"Torch threads: {torch.get_num_threads()}; shared machines vary by 20% or more."])
    if tsne_path is not None:
        t_imp.notes.append(f"t-SNE of the first seed's 50-d IMA: {tsne_path}.")
    return [t_imp, t_best, t_ret, t_cls, t_sec]


def run(ctx: BenchContext) -> BenchResult:
    plan = _plan(ctx)
    res = BenchResult("ima", PAPER, settings={
        "quick": ctx.quick, "seeds": plan.seeds, "epochs": plan.epochs, "importance_epochs": plan.imp_epochs,
        "patience": plan.patience, "rhos": list(plan.rhos), "probe_epochs": plan.probe_epochs,
        "tsne_points": plan.tsne_points, "hidden": HIDDEN, "latents": list(LATENTS)})
    datasets = _load(ctx, res)
    res.settings["datasets"] = [d.name for d in datasets]
    for data in datasets:
        ctx.console.print(f"[dim]ima: data {data.name} ({data.n} pairs)[/dim]")
        res.tables += _run_dataset(data, ctx, plan)
    return res


register_spec(BenchSpec("ima", PAPER, "IMA: importance F1 vs rho, P@10/P@50 and MLP-probe accuracy of IMA "
                        "weighted/unweighted, JMVAE-KL, MVAE, DAE (2-d, 50-d) on noisy image-speech digits; t-SNE",
                        run, threads=1))
