"""Robustness to missing modalities: every metric with the query side masked to each subset of modalities.

The presence mask is the only mechanism (a masked modality is zeros with ``mask=False``, the library's one
convention), so every model is evaluated the same way whatever it does with a missing modality: IMA infers it,
BiDNN expands from the modality it has, the CVS family averages what is present.

For a subset ``S`` of the model's modalities, each query row keeps the modalities it has in ``S`` (rows that have
none of ``S`` are left out and counted). The database always keeps every modality it has. Reported per subset:

* ``joint``: the joint embedding of the masked query against the joint embedding of the full database (a query's
  own row, when it is in the database, is left out of its ranking: with every modality present it would be the
  query itself);
* ``q->d``: the masked query's vector of modality ``q`` (``q`` in ``S``, encoded with only ``S`` present) against
  the database's vectors of modality ``d`` (every ``d`` whose vectors have the same width); as in
  :func:`~commonspace.eval.retrieval.cross_modal_retrieval` the own row is left out only when ``q == d``;
* ``probe``: a classifier fitted on the joint embeddings of the probe-training rows as they are in the data
  (never masked), scored on the masked queries' joint embeddings, less the queries that are probe-training rows
  (scored on its own training rows the probe would read well above chance on labels the features do not
  predict); the result's ``probe_overlap`` counts them, and no query row left to score is refused.

``drop_rate`` rows mask each query modality independently with probability ``p`` (seeded), redrawn for a row
until at least one of its modalities stays: the exact distribution of independent drops given "not all gone".
See docs/metrics.md ("Robustness to missing modalities").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.eval.retrieval import retrieval_metrics

__all__ = ["all_subsets", "check_drop_rate", "parse_subsets", "plot_robustness", "plot_size_curves", "probe_rows",
           "probe_score", "random_drop_mask", "robustness", "subset_name", "summary_rows"]

#: more modalities than this give 2^M - 1 > 1023 subsets: list the ones wanted instead
MAX_ALL_SUBSETS = 10


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, by size, then in the modalities' order."""
    mods = tuple(modalities)
    if len(mods) > MAX_ALL_SUBSETS:
        raise DataError(f"{len(mods)} modalities have {2 ** len(mods) - 1} subsets; list the subsets you want "
                        "(e.g. --subset image,text)")
    return [c for k in range(1, len(mods) + 1) for c in itertools.combinations(mods, k)]


def parse_subsets(items: Sequence[str | Sequence[str]], modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Subsets given as ``"image,text"`` strings or name sequences: checked, put in the modalities' order,
    duplicates refused, sorted by size."""
    mods = tuple(modalities)
    out: list[tuple[str, ...]] = []
    for item in items:
        names = [s.strip() for s in item.split(",")] if isinstance(item, str) else [str(s) for s in item]
        names = [n for n in names if n]
        if not names:
            raise DataError(f"subset {item!r} is empty; name at least one modality, e.g. {mods[0]}")
        unknown = [n for n in names if n not in mods]
        if unknown:
            raise DataError(f"subset {item!r} names unknown modalities {unknown}; the model has {list(mods)}")
        if len(set(names)) != len(names):
            raise DataError(f"subset {item!r} names a modality twice")
        sub = tuple(m for m in mods if m in names)
        if sub in out:
            raise DataError(f"subset {subset_name(sub)!r} is given twice")
        out.append(sub)
    return sorted(out, key=lambda s: (len(s), [mods.index(m) for m in s]))


def check_drop_rate(p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise DataError(f"drop rate (--drop-rate) must be in [0, 1), got {p}: at 1 every modality would go")
    return float(p)


def random_drop_mask(mask: Tensor, p: float, seed: int = 0) -> Tensor:
    """``mask`` with each present entry dropped independently with probability ``p``; a row that would lose
    every modality it has is redrawn until one stays (rows with nothing present stay as they are)."""
    p = check_drop_rate(p)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    g = torch.Generator().manual_seed(int(seed))
    out = mask.clone()
    todo = mask.any(1)
    while bool(todo.any()):
        rows = torch.nonzero(todo).flatten()
        keep = (torch.rand(rows.numel(), mask.shape[1], generator=g) >= p) & mask[rows]
        out[rows] = keep
        todo = torch.zeros_like(todo)
        todo[rows] = ~keep.any(1)
    return out


def _index(data: MultimodalDataset, index: Tensor | str | None, what: str) -> Tensor:
    if index is None:
        return torch.arange(data.n)
    idx = data.split(index) if isinstance(index, str) else torch.as_tensor(index, dtype=torch.int64)
    if idx.numel() == 0:
        raise DataError(f"the {what} rows are empty; give a non-empty split")
    return idx


def probe_rows(data: MultimodalDataset, query: Tensor | str | None, probe_train: Tensor | str,
               modalities: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The probe-training rows (those with any of ``modalities``) and, per query row with any of them, whether
    it is one of those rows: such a query is left out of the probe's test sets.

    Refuses when no query row is left to score: a probe scored on its own training rows reads well above
    chance even on labels the features do not predict.
    """
    cols = torch.tensor([data.modalities.index(m) for m in modalities])
    own = data.mask[:, cols].any(1)
    qi = _index(data, query, "query")
    qi = qi[own[qi]]
    pi = _index(data, probe_train, "probe-training")
    pi = pi[own[pi]]
    if pi.numel() == 0:
        raise DataError(f"no probe-training row has any of the model's modalities {list(modalities)}; choose "
                        "another --probe-split, or --probe-split none (API: probe_train=None)")
    in_probe = torch.zeros(data.n, dtype=torch.bool)
    in_probe[pi] = True
    overlap = in_probe[qi]
    if qi.numel() and bool(overlap.all()):
        raise DataError(f"all {qi.numel()} query rows are probe-training rows, so the probe would be scored on "
                        "the rows it was fitted on; use a --split other than --probe-split, or --probe-split "
                        "none (API: query rows outside probe_train, or probe_train=None)")
    return pi, overlap


def _slim(r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, float | np.floating) or (isinstance(v, Tensor) and v.ndim == 0)
                else int(v) if isinstance(v, int | np.integer) else v)
            for k, v in r.items() if k != "per_query"}


def robustness(
    model: Any,
    data: MultimodalDataset,
    query: Tensor | str | None = "test",
    database: Tensor | str | None = None,
    subsets: Sequence[str | Sequence[str]] | None = None,
    drop_rates: Sequence[float] = (),
    ks: Sequence[int] = (10,),
    probe_train: Tensor | str | None = "train",
    metric: str = "cosine",
    seed: int = 0,
    cross_modal: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` with the query side masked to each subset of its modalities (see the module doc).

    ``query`` / ``database``: split names or row indices (``database=None``: the query rows themselves, each
    query's own row left out of its ranking). ``subsets``: ``"a,b"`` strings or name lists (None: every
    non-empty subset). ``drop_rates``: extra rows with random drops at those rates. ``probe_train``: the rows a
    logistic-regression probe is fitted on (None: no probe; single- or multi-label); query rows among them are
    left out of the probe's test sets (:func:`probe_rows`; ``probe_overlap`` counts them, each row's
    ``probe["queries"]`` counts the rows scored). Returns ``{"model", "modalities", "queries", "database",
    "rows": [...]}``, one row per subset (``present``: its size) then per drop rate (``present``: the mean
    number of modalities the evaluated queries keep).
    """
    if data.labels is None:
        raise DataError("robustness needs labels (relevance = shares a label); the data has none")
    mods = tuple(model.modalities)
    model.check_data(data)
    subs = all_subsets(mods) if subsets is None else parse_subsets(subsets, mods)
    if not subs and not drop_rates:
        raise DataError("nothing to evaluate: give at least one subset or drop rate")
    qi = _index(data, query, "query")
    di = qi if database is None else _index(data, database, "database")
    cols = torch.tensor([data.modalities.index(m) for m in mods])
    own = data.mask[:, cols]
    kept_q = own[qi].any(1)
    if not bool(kept_q.any()):
        raise DataError(f"no query row has any of the model's modalities {list(mods)}")
    kept_d = own[di].any(1)
    di = di[kept_d]
    if di.numel() == 0:
        raise DataError(f"no database row has any of the model's modalities {list(mods)}")
    # checked before any embedding: a refused probe costs nothing
    pi, in_probe = (None, None) if probe_train is None else probe_rows(data, qi, probe_train, mods)
    probe_q = None
    if in_probe is not None:
        probe_q = torch.zeros(data.n, dtype=torch.bool)
        probe_q[pi] = True
    db = data.subset(di)
    db_joint = model.embed_dataset(db)
    db_enc = model.encode_dataset(db)
    db_own = own[di]
    where = torch.full((data.n,), -1, dtype=torch.int64)
    where[di] = torch.arange(di.numel())
    y = data.labels

    def evaluate(qmask: Tensor) -> tuple[dict[str, Any], Tensor, Tensor]:
        """``qmask``: (Q, M) in the model's order for every query row; rows with nothing left are left out.
        Returns the row's metrics, the kept rows and their joint embeddings."""
        keep = qmask.any(1)
        rows = qi[keep]
        qd = data.subset(rows)
        m = qd.mask.clone()
        m[:, cols] = qmask[keep]
        qd = qd.with_mask(m)
        joint = model.embed_dataset(qd)
        ex = where[rows]
        rec: dict[str, Any] = {"queries": int(rows.numel()), "left_out": int((~keep).sum()),
                               "present_mean": float(qmask[keep].sum(1).float().mean())}
        rec["joint"] = _slim(retrieval_metrics(joint, db_joint, y[rows], y[di], ks=ks, metric=metric,
                                               exclude_self=ex, map_at=ks))
        if cross_modal:
            rec["cross_modal"] = _cross(model.encode_dataset(qd), qmask[keep], rows, ex)
        return rec, rows, joint

    def _cross(enc: Mapping[str, Tensor], qm: Tensor, rows: Tensor, ex: Tensor) -> dict[str, Any]:
        # the convention of cross_modal_retrieval: an item leaves its own ranking only when q == d
        pairs: dict[str, Any] = {}
        for j, q in enumerate(mods):
            has = qm[:, j]
            if q not in enc or not bool(has.any()):
                continue
            for jd, d in enumerate(mods):
                if d not in db_enc or db_enc[d].shape[1:] != enc[q].shape[1:] or not bool(db_own[:, jd].any()):
                    continue
                dsel = torch.nonzero(db_own[:, jd]).flatten()
                exq = None
                if q == d:
                    pos = torch.full((di.numel(),), -1, dtype=torch.int64)
                    pos[dsel] = torch.arange(dsel.numel())
                    e = ex[has]
                    exq = torch.where(e >= 0, pos[e.clamp_min(0)], e)
                pairs[f"{q}->{d}"] = _slim(retrieval_metrics(
                    enc[q][has], db_enc[d][dsel], y[rows][has], y[di][dsel], ks=ks, metric=metric,
                    exclude_self=exq, map_at=ks))
        return pairs

    out_rows: list[dict[str, Any]] = []
    probe_tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    q_own = own[qi]
    conditions = [(subset_name(s), {"modalities": list(s), "present": len(s)},
                   q_own & torch.tensor([m in s for m in mods])[None, :]) for s in subs]
    for p in drop_rates:
        conditions.append((f"drop {float(p):g}", {"modalities": list(mods), "drop_rate": float(p)},
                           random_drop_mask(q_own, float(p), seed)))
    for name, info, qmask in conditions:
        rec, rows, joint = evaluate(qmask)
        info.setdefault("present", rec["present_mean"])
        out_rows.append({"subset": name, **info, **rec})
        if probe_q is not None:
            fresh = ~probe_q[rows]  # the probe's own training rows are not test rows
            if bool(fresh.any()):
                probe_tests[name] = (joint[fresh].numpy(), y[rows][fresh].numpy())
    extra: dict[str, Any] = {}
    if pi is not None and in_probe is not None:
        from commonspace.eval.probe import logistic_probe_many

        # fitted once, on the probe rows as the data has them, and scored on every masked query set
        scores = logistic_probe_many(model.embed_dataset(data.subset(pi)).numpy(), y[pi].numpy(), probe_tests,
                                     seed=seed) if probe_tests else {}
        for row in out_rows:
            r = scores.get(row["subset"])  # None: every query this subset kept is a probe-training row
            row["probe"] = None if r is None else (
                {k: float(v) for k, v in r.items() if k in ("accuracy", "map", "exact_match")}
                | {"queries": int(probe_tests[row["subset"]][1].shape[0])})
        extra = {"probe_train": int(pi.numel()), "probe_overlap": int(in_probe.sum())}
    return {"model": getattr(model, "name", type(model).__name__), "modalities": list(mods),
            "queries": int(qi.numel()), "database": int(di.numel()), "ks": [int(k) for k in ks],
            "multilabel": bool(data.multilabel),
            "metric": metric, "seed": int(seed), **extra, "rows": out_rows}


def summary_rows(result: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """One flat row per subset / drop rate: joint P@K, mAP@K, MAP, the mean MAP over the cross-modal pairs (q->d
    with q != d; None when there is none),
    and the probe's score (:func:`probe_score`)."""
    out = []
    for r in result["rows"]:
        cm = [v["map"] for key, v in r.get("cross_modal", {}).items() if key.split("->")[0] != key.split("->")[1]]
        out.append({"subset": r["subset"], "present": r["present"], "queries": r["queries"],
                    "left_out": r["left_out"], f"p@{k}": r["joint"].get(f"p@{k}"),
                    f"map@{k}": r["joint"].get(f"map@{k}"), "map": r["joint"]["map"],
                    "cross_modal_map": float(np.mean(cm)) if cm else None,
                    "probe": probe_score(result, r)})
    return out


def probe_score(result: Mapping[str, Any], row: Mapping[str, Any]) -> float | None:
    """A row's probe score: accuracy, or classification MAP for multi-label data (where label-wise accuracy
    is mostly the negatives); None without a probe."""
    pr = row.get("probe")
    if not pr:
        return None
    return pr.get("map") if result.get("multilabel") else pr.get("accuracy")


def plot_robustness(results: Mapping[str, Mapping[str, Any]], path: str | Path, metric: str = "map",
                    title: str | None = None) -> Path:
    """PNG of the joint ``metric`` (``"map"``, ``"p@K"``, ``"map@K"`` or ``"probe"``) against the number of
    present modalities, one line per run (mean over the subsets of each size; drop-rate rows are not drawn)."""
    by_run: dict[str, dict[int, list[float]]] = {}
    for label, res in results.items():
        by: dict[int, list[float]] = {}
        for r in res["rows"]:
            if "drop_rate" in r:
                continue
            v = probe_score(res, r) if metric == "probe" else r["joint"].get(metric)
            if v is None:
                raise DataError(f"metric {metric!r} is not in the results; use map, probe or a p@K / map@K "
                                f"with K in {res.get('ks')}")
            by.setdefault(int(r["present"]), []).append(float(v))
        if not by:
            raise DataError(f"run {label!r} has no subset rows to plot")
        by_run[label] = by
    name = "probe accuracy" if metric == "probe" else f"joint {metric.upper() if metric == 'map' else metric}"
    return plot_size_curves(by_run, path, name, title or f"{name} vs modalities present (mean over subsets)")


def plot_size_curves(by_size: Mapping[str, Mapping[int, Sequence[float]]], path: str | Path, ylabel: str,
                     title: str) -> Path:
    """PNG of one line per label: the mean of its values at each number of present modalities."""
    from commonspace.eval.plots import plot_lines

    curves = {label: (sorted(by), [float(np.mean(by[x])) for x in sorted(by)]) for label, by in by_size.items()}
    ticks = sorted({x for xs, _ in curves.values() for x in xs})
    return plot_lines(curves, path, xlabel="modalities present at query time", ylabel=ylabel, xticks=ticks,
                      title=title)
