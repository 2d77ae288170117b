"""The robustness table every bench shares: each method's metrics with the queries masked to each subset of
modalities (:func:`commonspace.eval.robustness.robustness`), over seeds, and the PNG of MAP vs modalities present.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from commonspace.bench.report import ResultTable, Row
from commonspace.bench.runner import extend_nested
from commonspace.eval.robustness import summary_rows

__all__ = ["RobustnessRows"]

#: (table column, summary_rows key)
_COLUMNS = (("MAP", "map"), ("P@{k}", "p@{k}"), ("x-MAP", "cross_modal_map"), ("probe", "probe"))


class RobustnessRows:
    """Robustness results of several methods over seeds: ``add`` one result per (method, seed), then ``table``
    (rows ``method: subset``, mean ± sd over seeds) and ``png``."""

    def __init__(self, k: int = 10) -> None:
        self.k = k
        self.values: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.present: dict[str, float] = {}
        self.results: list[dict[str, Any]] = []

    def add(self, method: str, result: Mapping[str, Any], seed: int | None = None) -> None:
        self.results.append({"method": method, "seed": seed, **result})
        subsets = self.values.setdefault(method, {})
        for r in summary_rows(result, self.k):
            cols = subsets.setdefault(r["subset"], {})
            self.present[r["subset"]] = float(r["present"])
            for col, key in _COLUMNS:
                v = r[key.format(k=self.k)]
                if v is not None:
                    cols.setdefault(col.format(k=self.k), []).append(float(v))

    def merge(self, other: RobustnessRows) -> None:
        """Append another seed's results (``map_seeds`` results, in seed order)."""
        extend_nested(self.values, other.values)
        self.present.update(other.present)
        self.results.extend(other.results)

    def table(self, title: str, notes: list[str] | None = None, by_size: bool = False) -> ResultTable:
        """Rows ``method: subset``; with ``by_size`` one row per method and subset size (``method: k of M``), each
        seed's value the mean over the subsets of that size (for many modalities: 5 views have 31 subsets)."""
        cols = [c.format(k=self.k) for c, _ in _COLUMNS]
        if by_size:
            rows = []
            for method, subs in self.values.items():
                sizes = sorted({int(self.present[x]) for x in subs if not x.startswith("drop ")})
                for size in sizes:
                    group = [v for x, v in subs.items() if not x.startswith("drop ") and int(self.present[x]) == size]
                    vals = {c: np.mean([g[c] for g in group], axis=0).tolist() for c in cols
                            if all(c in g for g in group)}
                    rows.append(Row(f"{method}: {size} of {max(sizes)} ({len(group)} subsets)", vals))
        else:
            rows = [Row(f"{method}: {subset}", vals) for method, subs in self.values.items()
                    for subset, vals in subs.items()]
        return ResultTable(title, cols, rows, scale=1.0, digits=3, notes=[
            "Queries masked to each subset of modalities (`commonspace evaluate --subsets`); the database keeps "
            "every modality. MAP, P@K: the joint embedding of the masked query against the database's joint "
            "embedding; x-MAP: mean MAP over the cross-modal pairs q->d (q in the subset, d another modality, "
            "vectors of equal width); probe: logistic regression fitted on the unmasked training rows' joint "
            "embedding, scored on the masked queries (accuracy)."
            + (" Rows 'k of M': mean over the subsets of size k." if by_size else ""), *(notes or [])])

    def write_json(self, path: Path) -> Path:
        """Every result as :func:`~commonspace.eval.robustness.robustness` returned it (per subset, per pair)."""
        import json

        from commonspace.bench.report import write_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps(self.results, indent=1))

    def png(self, path: Path, title: str) -> Path:
        """Joint MAP against the number of modalities present, one line per method (mean over the subsets of
        each size and over seeds; drop-rate rows are not drawn)."""
        from commonspace.eval.robustness import plot_size_curves

        by_method: dict[str, dict[int, list[float]]] = {}
        for method, subs in self.values.items():
            by = by_method.setdefault(method, {})
            for subset, vals in subs.items():
                if not subset.startswith("drop "):
                    by.setdefault(int(self.present[subset]), []).append(float(np.mean(vals["MAP"])))
        path.parent.mkdir(parents=True, exist_ok=True)
        return plot_size_curves(by_method, path, "joint MAP", title)
