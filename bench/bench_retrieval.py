"""Exact top-k Hamming search: linear scan vs multi-index hashing, queries per second on one thread.

Run: ``python bench/bench_retrieval.py [--sizes 100000 1000000] [--queries 500] [--k 100]``.
Archives: random uniform 64-bit codes (the worst case for multi-index hashing) and clustered codes
(a few hundred random centres with independent bit flips, which resemble learned hash codes).
Queries are fresh draws from the same distribution. Every multi-index answer is checked against the
linear scan before its time is reported. Each cell is queries/s by wall clock / by process CPU time,
best of ``--repeats`` (CPU time is the steadier figure on a shared machine). The FAISS
``IndexBinaryFlat`` column appears when ``faiss`` is importable (not a project dependency).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402

from pfmh_model.multi_index import MultiIndexHashing  # noqa: E402
from pfmh_model.packed_codes import pack_codes  # noqa: E402
from pfmh_model.retrieval import search  # noqa: E402


def _codes(kind: str, n: int, bits: int, rng: np.random.Generator, centres: np.ndarray,
           flip: float) -> np.ndarray:
    if kind == "random":
        return rng.integers(0, 2, size=(n, bits)).astype(bool)
    flips = rng.random((n, bits)) < flip
    return centres[rng.integers(0, len(centres), size=n)] ^ flips


def _qps(run, queries: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` queries/s by wall clock and by this process's CPU time (robust on a shared box)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return queries / min(walls), queries / min(cpus)


def _faiss_search(archive: np.ndarray, queries: np.ndarray, k: int):  # type: ignore[no-untyped-def]
    """A callable running FAISS IndexBinaryFlat on one thread, or None when faiss is not installed."""
    try:
        import faiss  # optional, only for the side-by-side figure
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    index = faiss.IndexBinaryFlat(archive.shape[1] * 64)
    index.add(np.ascontiguousarray(archive).view(np.uint8))
    return partial(index.search, np.ascontiguousarray(queries).view(np.uint8), k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument("--flip", type=float, default=0.1, help="bit-flip probability of clustered codes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    centres = rng.integers(0, 2, size=(args.centres, args.bits)).astype(bool)
    print(f"exact top-{args.k}, {args.bits} bits, {args.queries} queries, 1 thread; queries/s as wall / CPU "
          f"(best of {args.repeats}); clustered = {args.centres} centres, flip {args.flip}")
    print(f"{'archive':>9} {'codes':>9} {'linear':>13} {'multi-index':>13} {'faiss flat':>13} {'MIH build s':>11}")
    for n in args.sizes:
        for kind in ("random", "clustered"):
            archive = pack_codes(_codes(kind, n, args.bits, rng, centres, args.flip))
            queries = pack_codes(_codes(kind, args.queries, args.bits, rng, centres, args.flip))
            linear = search(queries, archive, k=args.k)
            start = time.perf_counter()
            mih = MultiIndexHashing(archive, args.bits)
            build_s = time.perf_counter() - start
            fast = mih.search(queries, k=args.k)
            if not (np.array_equal(fast.indices, linear.indices)
                    and np.array_equal(fast.distances, linear.distances)):
                raise SystemExit(f"multi-index result differs from the linear scan ({kind}, n={n})")
            cells = [_qps(partial(search, queries, archive, k=args.k), args.queries, args.repeats),
                     _qps(partial(mih.search, queries, k=args.k), args.queries, args.repeats)]
            faiss_run = _faiss_search(archive, queries, args.k)
            text = [f"{w:6.0f}/{c:<6.0f}" for w, c in cells]
            if faiss_run is None:
                text.append(f"{'-':>13}")
            else:
                w, c = _qps(faiss_run, args.queries, args.repeats)
                text.append(f"{w:6.0f}/{c:<6.0f}")
            print(f"{n:>9} {kind:>9} {' '.join(text)} {build_s:11.2f}", flush=True)


if __name__ == "__main__":
    main()
