"""Time a 10,000 x 10,000 retrieval evaluation: 64-d embeddings, 10 classes, P@10, mAP@100 and MAP@all.

    .venv/bin/python benchmarks/bench_retrieval.py [--n 10000] [--dim 64] [--repeats 3] [--exclude-self] [--spread S]

Prints the median wall time of ``retrieval_metrics`` (cosine similarity, full stable ranking per query) and the
process's peak resident memory (inputs included). ``--queries`` differs from ``--n`` for a Q x D run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from commonspace.eval import retrieval_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="database items (and queries, unless --queries)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--multilabel", action="store_true", help="(N, classes) labels, about 2 on per item")
    ap.add_argument("--exclude-self", action="store_true", help="the set queries itself, self removed")
    ap.add_argument("--spread", type=float, default=None,
                    help="class-clustered embeddings: a random centre per class plus this much noise (0.1: tight "
                         "clusters, as a trained model's; default: unclustered noise)")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    nq = args.n if args.queries is None or args.exclude_self else args.queries
    q = torch.randn(nq, args.dim, generator=g)
    d = q if args.exclude_self else torch.randn(args.n, args.dim, generator=g)
    if args.multilabel:
        ql = torch.rand(nq, args.classes, generator=g) < 2 / args.classes
        dl = ql if args.exclude_self else torch.rand(args.n, args.classes, generator=g) < 2 / args.classes
    else:
        ql = torch.randint(0, args.classes, (nq,), generator=g)
        dl = ql if args.exclude_self else torch.randint(0, args.classes, (args.n,), generator=g)
    if args.spread is not None:
        centres = torch.randn(args.classes, args.dim, generator=g)
        first = (lambda lab: lab.float().argmax(1)) if args.multilabel else (lambda lab: lab)
        q = centres[first(ql)] + args.spread * q
        d = q if args.exclude_self else centres[first(dl)] + args.spread * d
    ex = torch.arange(args.n) if args.exclude_self else None

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = retrieval_metrics(q, d, ql, dl, ks=(10,), map_at=(100,), metric="cosine", exclude_self=ex)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind = "unclustered" if args.spread is None else f"spread {args.spread}"
    print(f"{nq} x {args.n}, dim {args.dim}, {kind}, {'multi' if args.multilabel else 'single'}-label, "
          f"threads {torch.get_num_threads()}: median {statistics.median(times):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in times)}), peak resident {peak:.0f} MiB")
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})


if __name__ == "__main__":
    main()
