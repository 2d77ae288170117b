"""Benchmark results: tables of ours beside the paper's, rendered to the terminal, Markdown and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchResult", "ResultTable", "Row", "mean_std", "write_atomic"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (the papers report sigma over runs)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


@dataclass
class Row:
    """One method's measured values (a list per metric, one value per seed) and the paper's figure."""

    method: str
    values: dict[str, list[float]]
    paper: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def summary(self, metric: str, scale: float = 1.0, digits: int = 2) -> str:
        vals = self.values.get(metric)
        if not vals:
            return "-"
        m, s = mean_std(vals)
        if len(vals) == 1:
            return f"{m * scale:.{digits}f}"
        return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


@dataclass
class ResultTable:
    title: str
    metrics: list[str]
    rows: list[Row] = field(default_factory=list)
    paper_label: str = "paper"
    scale: float = 100.0  # percentages, as the papers print them
    digits: int = 2
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        cols = ["method"]
        for m in self.metrics:
            cols.append(f"{m} (ours)")
            if any(m in r.paper for r in self.rows):
                cols.append(f"{m} ({self.paper_label})")
        return cols

    def body(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            line = [r.method]
            for m in self.metrics:
                line.append(r.summary(m, self.scale, self.digits))
                if any(m in x.paper for x in self.rows):
                    line.append(r.paper.get(m, "-"))
            out.append(line)
        return out

    def to_markdown(self) -> str:
        head = self.header()
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in self.body()]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_rich(self) -> Any:
        from rich.table import Table

        t = Table(title=self.title, title_justify="left")
        for i, h in enumerate(self.header()):
            t.add_column(h, justify="left" if i == 0 else "right")
        for b in self.body():
            t.add_row(*b)
        return t


@dataclass
class BenchResult:
    name: str
    paper: str
    tables: list[ResultTable] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        d = asdict(self)
        for t, td in zip(self.tables, d["tables"], strict=True):
            for r, rd in zip(t.rows, td["rows"], strict=True):
                rd["mean_std"] = {m: list(mean_std(v)) for m, v in r.values.items() if v}
        return clean(d)

    def to_markdown(self) -> str:
        parts = [f"# Benchmark `{self.name}`", "", f"Paper: {self.paper}", "",
                 f"Wall time: {self.seconds:.1f} s. Settings: `{json.dumps(self.settings, sort_keys=True)}`", ""]
        if self.skipped:
            parts.append("Skipped:")
            parts += [f"- {what}: {why}" for what, why in self.skipped]
            parts.append("")
        parts += [t.to_markdown() for t in self.tables]
        return "\n".join(parts)

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        j = out_dir / f"{self.name}.json"
        md = out_dir / f"{self.name}.md"
        write_atomic(j, json.dumps(self.to_json(), indent=2))
        write_atomic(md, self.to_markdown())
        return [j, md]


def write_atomic(path: Path, text: str) -> Path:
    """Write text through :func:`commonspace.data.io.atomic_write`: never a half-written file."""
    from commonspace.data.io import atomic_write

    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
