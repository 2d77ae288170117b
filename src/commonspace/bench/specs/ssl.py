"""SSL paper, Tables 1-3 analogs: MJLL against the three semantic-similarity functions.

Protocol (stated in the report). Each model is trained without labels on the complete training pairs. Headline
("joint-code probe", the paper's Table 1: "full image for training and testing, but we also test with the
single part"): one logistic-regression probe is fitted on the training set's joint code (both modalities) and
tested on the test set's code from both modalities and from one alone, the other inferred by mean-field in the
RBM models (``infer_steps`` rounds). Second protocol ("own probe"): a probe per input condition, fitted and
tested on codes of that condition. Both protocols are reported with the missing modality inferred and with it
dropped (the present modality's input alone). Mean and standard deviation over seeds; lambda = 0.1 for SSL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from commonspace.bench.report import BenchResult, ResultTable, Row
from commonspace.bench.runner import BenchContext, BenchSpec, extend_nested, map_seeds, register_spec
from commonspace.data import builtin
from commonspace.data.dataset import MultimodalDataset, Standardizer
from commonspace.eval.probe import logistic_probe_many
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer

PAPER = ("Multimodal Learning via Exploring Deep Semantic Similarity (ACM MM 2016): Table 1 (MNIST halves, MRBM), "
         "Table 2 (MIR-Flickr, MDBN), Table 3 (AVLetters2 / AVDigits, MDAE)")

#: mean-field rounds for a missing modality (the models' default)
INFER_STEPS = 10


@dataclass(frozen=True)
class Method:
    label: str
    sim: str
    paper_key: str  # the row of the paper's table it stands beside
    hparams: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


SSL_METHODS = [Method("SSL H(Hx||Hy)", "ce_xy", "SSL H(Hx||Hy)"), Method("SSL H(Hy||Hx)", "ce_yx", "SSL H(Hy||Hx)"),
               Method("SSL corr (CCA)", "cca", "SSL corr (CCA)")]
METHODS = [Method("MJLL", "none", "MJLL"), *SSL_METHODS]
# Table 1: the paper's MJLL is trained by PCD ("the more exact gradient of MJLL with PCD"), SSL by CD; the CD
# MJLL row is the like-for-like control. PCD settings: MRBM defaults for persistent=True (momentum 0).
T1_METHODS = [Method("MJLL (PCD)", "none", "MJLL", {"persistent": True}), Method("MJLL (CD)", "none", ""),
              *SSL_METHODS]
# Paper figures: Table 1 error %, Table 2 MAP %, Table 3 accuracy % (AVDigits, the digits task).
PAPER_T1 = {"MJLL": ("1.57", "14.98", "18.88"), "SSL H(Hx||Hy)": ("1.73", "11.93", "15.87"),
            "SSL H(Hy||Hx)": ("1.64", "11.98", "18.31"), "SSL corr (CCA)": ("1.78", "13.23", "16.20")}
PAPER_T2 = {"MJLL": ("59.77", "45.78"), "SSL H(Hx||Hy)": ("59.84", "46.78"), "SSL H(Hy||Hx)": ("59.8", "47.74"),
            "SSL corr (CCA)": ("60.29", "53.29")}
PAPER_T3 = {"MJLL": ("58.89", "63.89"), "SSL H(Hx||Hy)": ("63.89", "71.07"), "SSL H(Hy||Hx)": ("60.00", "70.56"),
            "SSL corr (CCA)": ("70.00", "71.11")}


@dataclass
class Experiment:
    key: str
    title: str
    builtin: str
    model: str
    x: str  # the paper's x modality (first in H(Hx||Hy))
    y: str
    metric: str  # "error" | "map" | "accuracy"
    columns: list[str]  # "both", x, y (single-modality test inputs reported)
    paper: dict[str, tuple[str, ...]]
    standardize: bool | list[str]  # True: every modality; a list: those modalities
    hparams: dict = field(default_factory=dict)
    quick_hparams: dict = field(default_factory=dict)
    epochs: int = 30
    quick_epochs: int = 10
    needs_shared: bool = False
    note: str = ""
    batch_size: int | None = None
    methods: list[Method] = field(default_factory=lambda: list(METHODS))


EXPERIMENTS = [
    Experiment("mnist-halves", "Table 1 analog: MRBM on MNIST-5k left/right halves, test error (%)",
               "mnist5k-halves", "mrbm", "left", "right", "error", ["both", "left", "right"], PAPER_T1, False,
               {"hidden": 256}, {}, epochs=30, quick_epochs=8, batch_size=256, methods=T1_METHODS),
    Experiment("digits-halves", "Table 1 analog: MRBM on 8x8 digits left/right halves, test error (%)",
               "digits-halves", "mrbm", "left", "right", "error", ["both", "left", "right"], PAPER_T1, False,
               {"hidden": 128}, {}, epochs=60, quick_epochs=20, batch_size=256, methods=T1_METHODS),
    Experiment("wikipedia", "Table 2 analog: MDBN on Wikipedia image + text, classification MAP (%)",
               "wikipedia", "mdbn", "image", "text", "map", ["both", "image", "text"], PAPER_T2, ["image"],
               {"layers_x": [64], "layers_y": [64], "shared": 64, "visible": ["gaussian", "softmax"],
                "doc_length": 300, "pretrain_lr": [None, 0.01 / 300], "joint_lr": 0.003}, {}, epochs=20,
               quick_epochs=8, needs_shared=True, batch_size=128,
               note="The 'text' column is not in the paper's table; it shows what the text pathway gives (raw "
               "LDA features give a classification MAP of about 67%). Text pathway: a replicated-softmax RBM "
               "on the LDA proportions scaled to a pseudo document length of 300 (the paper's text layer is a "
               "replicated softmax on word counts; this set has no counts), learning rate 0.01/300; image: "
               "Gaussian RBM on standardised SIFT histograms; joint stage lr 0.003 (docs/methods.md)."),
    Experiment("fsdd-mnist", "Table 3 analog: MDAE on spoken digits (FSDD) + MNIST digits, accuracy (%)",
               "fsdd-mnist", "mdae", "audio", "image", "accuracy", ["both", "audio"], PAPER_T3, True,
               {"layers_x": [256], "layers_y": [256], "shared": 64}, {}, epochs=60, quick_epochs=12,
               needs_shared=True, batch_size=128,
               note="Audio and image are paired by class, not by instance (as in AV-MNIST style setups)."),
]

#: the second table's columns per single modality m: probe x code
PROTOCOLS = (("joint probe, inferred", "joint", True), ("joint probe, dropped", "joint", False),
             ("own probe, inferred", "own", True), ("own probe, dropped", "own", False))


def _codes(model, batch, infer: bool) -> np.ndarray:
    """The model's code; a single-modality batch has the other modality inferred (RBMs) or dropped."""
    if hasattr(model, "embed_with"):
        return model.embed_with(batch, INFER_STEPS if infer else 0).numpy()
    return model.embed(batch).numpy()


def _probe(model, data: MultimodalDataset, ex: Experiment, seed: int, own: bool = True) -> dict[str, float]:
    """Every protocol's score: ``both``, ``<m>`` (headline: joint probe, inferred) and ``<m>: <protocol>``;
    ``own=False`` skips the per-condition probes (one fit each)."""
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    ytr, yte = data.labels[tr].numpy(), data.labels[te].numpy()
    singles = [c for c in ex.columns if c != "both"]
    can_infer = hasattr(model, "embed_with")
    out: dict[str, float] = {}
    with torch.no_grad():
        model.eval()
        tests = {"both": (model.embed(teb).numpy(), yte)}
        for m in singles:
            for infer in (True, False):
                tests[f"{m}/{infer}"] = (_codes(model, teb.only([m]), infer), yte)
        joint = logistic_probe_many(model.embed(trb).numpy(), ytr, tests, seed=seed)
        out["both"] = joint["both"][ex.metric]
        for m in singles:
            for label, probe, infer in PROTOCOLS:
                if (infer and not can_infer) or (probe == "own" and not own):
                    continue  # no inference in this model: "dropped" is its only single-modality code
                if probe == "joint":
                    v = joint[f"{m}/{infer}"][ex.metric]
                else:
                    v = logistic_probe_many(_codes(model, trb.only([m]), infer), ytr,
                                            {"t": tests[f"{m}/{infer}"]}, seed=seed)["t"][ex.metric]
                out[f"{m}: {label}"] = v
            out[m] = out[f"{m}: joint probe, inferred" if can_infer else f"{m}: joint probe, dropped"]
    return out


def _standardized(data: MultimodalDataset, ex: Experiment) -> MultimodalDataset:
    """Standardise (on train) every modality, or those ``ex.standardize`` names; the others pass through."""
    if ex.standardize is False:
        return data
    which = list(data.modalities) if ex.standardize is True else list(ex.standardize)
    return Standardizer().fit(data.select(which), "train").transform(data)


def _run_experiment(ex: Experiment, ctx: BenchContext, data: MultimodalDataset) -> list[ResultTable]:
    data = _standardized(data.select([ex.x, ex.y]), ex)
    epochs = ex.quick_epochs if ctx.quick else ex.epochs
    if ctx.max_iterations is not None:
        epochs = max(1, min(epochs, ctx.max_iterations))
    hp = dict(ex.hparams, **(ex.quick_hparams if ctx.quick else {}))
    def one_seed(seed: int) -> dict[str, dict[str, list[float]]]:
        rows: dict[str, dict[str, list[float]]] = {}
        for meth in ex.methods:
            ctx.console.print(f"[dim]{ex.key}: seed {seed}, {meth.label}[/dim]")
            model = create(ex.model, data.dims, init_seed=seed, sim=meth.sim, **{**hp, **meth.hparams})
            extra = {"batch_size": ex.batch_size} if ex.batch_size else {}
            cfg = TrainConfig.for_model(model, seed=seed, progress=ctx.progress, epochs=epochs,
                                        **{**extra, **meth.train})
            Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
            d = rows.setdefault(meth.label, {})
            for c, v in _probe(model, data, ex, seed, own=not ctx.quick).items():
                d.setdefault(c, []).append(v)
        return rows

    rows: dict[str, dict[str, list[float]]] = {}
    for part in map_seeds(ctx, one_seed):
        extend_nested(rows, part)
    paper_cols = {c: i for i, c in enumerate(ex.columns)}
    keys = {m.label: m.paper_key for m in ex.methods}

    def paper_of(label: str) -> dict[str, str]:
        fig = ex.paper.get(keys[label], ())
        return {c: fig[paper_cols[c]] for c in ex.columns if paper_cols[c] < len(fig)}

    head = [Row(label, {c: vals[c] for c in ex.columns}, paper_of(label)) for label, vals in rows.items()]
    detail_cols = [k for k in next(iter(rows.values())) if ": " in k]
    detail = [Row(label, {c: vals[c] for c in detail_cols}) for label, vals in rows.items()]
    infer = any(c.endswith("inferred") for c in detail_cols)
    how = (f"the missing modality inferred by {INFER_STEPS} mean-field rounds in the RBM (clamp the present one, "
           "alternate the shared layer and the missing modality's conditional mean)" if infer else
           "the missing modality dropped (this model has no inference; its single-modality code uses the present "
           "modality's input alone)")
    notes = ["Headline protocol (the paper's): one logistic-regression probe fitted on the training set's joint "
             "code (both modalities) and tested on the test set's code from both modalities and from one alone, "
             f"{how}. The representation model itself never sees labels.",
             f"lambda = 0.1 for SSL; {epochs} epochs per training stage; Algorithm 1 alternation (CD or "
             "reconstruction step, then the similarity gradient on the weights, each with its own optimizer state).",
             "Paper figures are on the paper's datasets (MNIST full, MIR-Flickr, AVDigits), not on these."]
    notes += [f"Method settings: {m.label}: {m.hparams or {}} {m.train or {}}" for m in ex.methods
              if m.hparams or m.train]
    if ex.note:
        notes.append(ex.note)
    detail_notes = ["'joint probe': fitted on the training set's joint code (the headline protocol); 'own probe': "
                    "fitted on the training set's code under the same input condition as the test. 'inferred': "
                    f"the missing modality inferred ({INFER_STEPS} mean-field rounds); 'dropped': the present "
                    "modality's input alone."]
    if ctx.quick:
        detail_notes.append("--quick skips the 'own probe' protocol (one probe fit per condition); the full run "
                            "reports it.")
    return [ResultTable(ex.title, ex.columns, head, notes=notes),
            ResultTable(f"{ex.title.split(':')[0]}: single-modality scores under every protocol", detail_cols,
                        detail, notes=detail_notes)]


def run(ctx: BenchContext) -> BenchResult:
    res = BenchResult("ssl", PAPER, settings={"quick": ctx.quick, "seeds": ctx.seeds, "infer_steps": INFER_STEPS})
    for ex in EXPERIMENTS:
        if not ctx.wants(ex.key):
            continue
        if ex.key == "digits-halves" and ctx.datasets is None:
            continue  # a small smoke set, run only when asked for; MNIST-5k is the Table 1 analog
        try:
            data = builtin.load(ex.builtin, root=ctx.data_root if ex.needs_shared else None)
        except builtin.DatasetUnavailable as exc:
            res.skipped.append((ex.key, str(exc)))
            continue
        res.tables.extend(_run_experiment(ex, ctx, data))
    return res


register_spec(BenchSpec("ssl", PAPER, "SSL Tables 1-3 analogs: MJLL vs SSL (cross-entropy both ways, CCA) with "
                        "MRBM / MDBN / MDAE; joint-code and per-condition probes, missing modality inferred or "
                        "dropped", run))
