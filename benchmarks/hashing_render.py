"""Render the hashing bench report (tables, verdicts, 32-bit curves) from the run records of a full run that is
still partial, keeping only complete (code length, seed) groups of the twelve methods.

    python benchmarks/hashing_render.py OUT_DIR [--data-root PATH] SET RECORDS [SET RECORDS ...]

e.g. ``python benchmarks/hashing_render.py /tmp/report two-digits bench-results/full/td/hashing/two-digits-runs.jsonl``.
``docs/benchmarks.md``'s issue-13 tables were made this way.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from commonspace.bench.report import BenchResult
from commonspace.bench.specs import hashing as H


def render(out: Path, data_root: Path | None, pairs: list[tuple[str, Path]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for key, path in pairs:
        s = next(x for x in H.SETTINGS if x.key == key)
        plan = s.full
        ctx = SimpleNamespace(data_root=data_root, out_dir=out)
        data = H._prepare(s, ctx, plan)
        order = [m.label for m in H.methods(s.text)]
        done, stale = H.RunRecords.read(path, H._fingerprint(s, plan, plan.epochs, min(plan.patience, plan.epochs)))
        if stale:
            raise SystemExit(f"{path}: {stale} records of another plan or spec version")
        recs = list(done.values())
        recs.sort(key=lambda r: (H.RUN_ORDER.index(r["bits"]), r["seed"], order.index(r["method"])))
        groups: dict[tuple[int, int], list[dict]] = {}
        for r in recs:
            groups.setdefault((r["bits"], r["seed"]), []).append(r)
        recs = [r for g in groups.values() if len(g) == len(order) for r in g]
        st = H._Store()
        st.cap = plan.epochs
        for r in recs:
            H._store(st, r, plan.epochs)
        bits = tuple(b for b in H.BITS if any(r["bits"] == b for r in recs))
        runs = {b: sorted({r["seed"] for r in recs if r["bits"] == b}) for b in bits}
        described = (f"bits {list(bits)} of the plan's {list(plan.bits)} (seeds per code length: "
                     + ", ".join(f"{b}: {v}" for b, v in runs.items()) + ")")
        notes = H.protocol_notes(s, data, described, plan.epochs, plan.patience)
        tables += H.report_tables(s, st, bits, notes, ctx)
        print(key, len(recs), "runs", runs)
    BenchResult("hashing", H.PAPER, tables, [], {}, 0.0).write(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("pairs", nargs="+", help="SET RECORDS pairs")
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give SET RECORDS pairs")
    render(a.out, a.data_root, [(k, Path(p)) for k, p in zip(a.pairs[::2], a.pairs[1::2], strict=True)])


if __name__ == "__main__":
    main()
