"""Build time, query latency and recall@10 of the FAISS indexes in ``commonspace.index`` on synthetic data.

    .venv/bin/python benchmarks/bench_index.py [--n 1000000] [--dim 64] [--bits 64] [--queries 1000]
        [--indexes flat,hnsw,ivf,bflat,bhnsw] [--ef 16,64,128] [--nprobe 8,32] [--nlist 4096] [--train 100000]

Data: a clustered Gaussian (``--clusters`` centres, unit noise) so neighbours are meaningful; queries are
fresh draws from the same mixture. Float indexes use the cosine metric; the binary codes are the signs of a
fixed random projection of the same vectors (``--bits`` bits), so they are clustered too.

Reported per index (and per efSearch / nprobe setting):

* build: train + add, seconds (IVF trains on a ``--train`` sample, not the whole database);
* batch: wall time of one search call with all queries, divided by the number of queries (median of
  ``--repeats`` calls), in ms per query;
* single: median wall time of ``--single`` one-query calls, in ms;
* recall@10: float: |returned ids ∩ exact top-10 ids| / 10 against the Flat index; binary (many ties in
  Hamming distance): a hit counts when its distance is <= the exact 10th-nearest distance (BinaryFlat).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from commonspace.index import BinaryIndex, EmbeddingIndex


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = np.empty((n, dim), np.float32)
    step = 200_000  # generate in blocks: float64 temporaries of the whole set would double peak memory
    for s in range(0, n, step):
        m = min(n, s + step) - s
        x[s:s + m] = centers[rng.integers(0, clusters, m)] + rng.standard_normal((m, dim), dtype=np.float32)
    return x


def _time_search(search, q: np.ndarray, k: int, repeats: int, single: int) -> tuple[float, float, tuple]:
    batch = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = search(q, k)
        batch.append(time.perf_counter() - t0)
    one = []
    for i in range(min(single, len(q))):
        t0 = time.perf_counter()
        search(q[i:i + 1], k)
        one.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(batch) / len(q), 1e3 * statistics.median(one), res


def _recall_ids(got: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(got, exact, strict=True)]))


def _recall_dist(got_d: np.ndarray, exact_d: np.ndarray) -> float:
    return float(np.mean(got_d[:, :exact_d.shape[1]] <= exact_d[:, -1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="database size")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--bits", type=int, default=64, help="binary code length")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0, help="scale of the cluster centres vs unit noise")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=100, help="one-query calls timed for the single latency")
    ap.add_argument("--repeats", type=int, default=3, help="batch searches timed (median)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--indexes", default="flat,hnsw,ivf,bflat,bhnsw", help="comma list of flat, hnsw, ivf, "
                    "ivfpq, bflat, bhnsw, bivf")
    ap.add_argument("--pq", type=int, default=64, help="PQ sub-quantisers of ivfpq (8 bits each)")
    ap.add_argument("--folder", type=Path, default=None, help="build ivf / ivfpq the way `commonspace index build` "
                    "does: write the vectors as an embeddings folder here, then memory-map and index it in chunks")
    ap.add_argument("--ef", default="16,64,128", help="HNSW efSearch values")
    ap.add_argument("--nprobe", default="8,32", help="IVF nprobe values")
    ap.add_argument("--nlist", type=int, default=4096, help="IVF lists")
    ap.add_argument("--train", type=int, default=100_000, help="IVF training sample size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    which = set(args.indexes.split(","))

    rng = np.random.default_rng(args.seed)
    centers = (args.spread * rng.standard_normal((args.clusters, args.dim))).astype(np.float32)
    t0 = time.perf_counter()
    x = _clustered(args.n, args.dim, args.clusters, rng, centers)
    q = _clustered(args.queries, args.dim, args.clusters, rng, centers)
    print(f"data: {args.n} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MiB), {args.clusters} clusters, "
          f"{args.queries} queries, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)

    rows: list[tuple] = []

    def report(name: str, param: str, build: float | None, batch: float, single: float, recall: float) -> None:
        rows.append((name, param, build, batch, single, recall))
        b = f"{build:.1f}" if build is not None else ""
        print(f"  {name:<12} {param:<12} build {b:>6} s  batch {batch:8.3f} ms/q  single {single:8.3f} ms  "
              f"recall@{args.k} {recall:.4f}", flush=True)

    # float: exact ground truth from Flat (needed by every float row, so always built when any is asked)
    exact = None
    if which & {"flat", "hnsw", "ivf", "ivfpq"}:
        t0 = time.perf_counter()
        flat = EmbeddingIndex.build(x, factory="Flat", metric="cosine")
        build = time.perf_counter() - t0
        batch, single, (_, exact) = _time_search(flat.search, q, args.k, args.repeats, args.single)
        report("Flat", "exact", build, batch, single, 1.0)
        del flat
    def sweep(name: str, build_index, param: str, values: list[int], search_of, queries: np.ndarray,
              recall_of) -> None:
        """Build once (timed), then time a search and measure recall for every value of one search parameter."""
        t0 = time.perf_counter()
        idx = build_index()
        build = time.perf_counter() - t0
        label = {"ef_search": "efSearch", "nprobe": "nprobe"}[param]
        for v in values:
            idx.set_search_params(**{param: v})
            batch, single, found = _time_search(search_of(idx), queries, args.k, args.repeats, args.single)
            report(name, f"{label}={v}", build, batch, single, recall_of(found))
            build = None  # one build, several rows

    if "hnsw" in which:
        sweep("HNSW32", lambda: EmbeddingIndex.build(x, factory="HNSW32", metric="cosine"), "ef_search",
              _ints(args.ef), lambda i: i.search, q, lambda f: _recall_ids(f[1], exact))
    if args.folder is not None and which & {"ivf", "ivfpq"}:
        from commonspace.data.embedfiles import write_embeddings
        from commonspace.index import build_index_from_file

        step = 100_000
        t0 = time.perf_counter()
        write_embeddings(args.folder, ({"joint": x[s:s + step]} for s in range(0, args.n, step)), rows=args.n)
        print(f"  embeddings folder written in {time.perf_counter() - t0:.1f} s", flush=True)
    for kind, factory in (("ivf", f"IVF{args.nlist},Flat"), ("ivfpq", f"IVF{args.nlist},PQ{args.pq}")):
        if kind not in which:
            continue
        if args.folder is not None:
            def build_index(factory: str = factory) -> EmbeddingIndex:
                return build_index_from_file(args.folder, args.folder.with_suffix(".index.npz"), factory=factory,
                                             ids_key=None, train_size=min(args.train, args.n), seed=args.seed)
        else:
            sample = x[rng.choice(args.n, size=min(args.train, args.n), replace=False)]

            def build_index(factory: str = factory, sample: np.ndarray = sample) -> EmbeddingIndex:
                return EmbeddingIndex.build(x, factory=factory, metric="cosine", train_vectors=sample)
        sweep(factory, build_index, "nprobe", _ints(args.nprobe), lambda i: i.search, q,
              lambda f: _recall_ids(f[1], exact))

    # binary: codes = signs of a fixed random projection of the same clustered vectors
    if which & {"bflat", "bhnsw", "bivf"}:
        proj = rng.standard_normal((args.dim, args.bits)).astype(np.float32)
        codes = np.concatenate([np.packbits(x[s:s + 200_000] @ proj > 0, axis=1)
                                for s in range(0, args.n, 200_000)])
        qc = np.packbits(q @ proj > 0, axis=1)
        del x

        def bsearch(index: BinaryIndex):
            return lambda qq, k: index.search(qq, k, packed=True)

        t0 = time.perf_counter()
        bflat = BinaryIndex.build(codes, factory="BFlat", packed=True, n_bits=args.bits)
        build = time.perf_counter() - t0
        batch, single, (exact_d, _) = _time_search(bsearch(bflat), qc, args.k, args.repeats, args.single)
        if "bflat" in which:
            report("BinaryFlat", "exact", build, batch, single, 1.0)
        del bflat
        if "bhnsw" in which:
            sweep("BinaryHNSW32", lambda: BinaryIndex.build(codes, factory="BHNSW32", packed=True, n_bits=args.bits),
                  "ef_search", _ints(args.ef), bsearch, qc, lambda f: _recall_dist(f[0], exact_d))
        if "bivf" in which:
            sample = codes[rng.choice(args.n, size=min(args.train, args.n), replace=False)]
            sweep(f"BinaryIVF{args.nlist}", lambda: BinaryIndex.build(codes, factory=f"BIVF{args.nlist}",
                                                                       train_codes=sample, packed=True,
                                                                       n_bits=args.bits),
                  "nprobe", _ints(args.nprobe), bsearch, qc, lambda f: _recall_dist(f[0], exact_d))

    print(f"\n{args.n:,} items, {args.dim}-d float (cosine) / {args.bits}-bit codes, {args.queries} queries, "
          f"k={args.k}, {faiss.omp_get_max_threads()} threads\n")
    print(f"| index | search param | build (s) | batch (ms/query) | single query (ms) | recall@{args.k} |")
    print("|---|---|---:|---:|---:|---:|")
    for name, param, build, batch, single, recall in rows:
        b = f"{build:.1f}" if build is not None else "″"
        print(f"| {name} | {param} | {b} | {batch:.3f} | {single:.3f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
