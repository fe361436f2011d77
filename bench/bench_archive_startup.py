"""Archive start-up time and memory per record: open a memory-mapped archive of n records, search, prepare.

Run: ``python bench/bench_archive_startup.py [--sizes 100000 1000000 10000000] [--bits 64]``.

For each size an archive of random codes (with 8-d image and 4-d text features, the smallest that
still exercise the format) is written with ``participant.archive.Archive.add``; then a fresh Python
process opens it (``Archive.open`` + ``HammingIndex.from_word_major``: the mapping only), answers a
first top-100 query by the linear scan straight off the map, and builds the fast structure
(``prepare``). Times are wall clock; the page cache is warm (the archive was just written).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
from participant.archive import Archive
from pfmh_model.hamming_index import HammingIndex
t1 = time.perf_counter()
snap = Archive(sys.argv[1]).open()
index = HammingIndex.from_word_major(np.asarray(snap.codes_t), snap.bits)
t2 = time.perf_counter()
rss_open = int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])
query = np.ascontiguousarray(np.asarray(snap.codes_t)[:, :1].T)
index.search_packed(query, 100)
t3 = time.perf_counter()
index.prepare()
t4 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_query_s": t3 - t2, "prepare_s": t4 - t3,
                  "rss_open_kb": rss_open, "rss_peak_kb": rss, "method": index.method}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from participant.archive import Archive
    from pfmh_model.record_file import RecordBatch

    rng = np.random.default_rng(0)
    words = -(-args.bits // 64)
    print("| records | disk bytes/record | codes bytes/record | open s (mmap) | first query s (scan) | prepare s | "
          "structure | RSS after open MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            codes = rng.integers(0, 2**63, size=(n, words), dtype=np.int64).view(np.uint64)
            if args.bits % 64:
                codes[:, -1] &= np.uint64((1 << (args.bits % 64)) - 1)
            batch = RecordBatch(np.zeros((n, 8), np.float32), np.zeros((n, 4), np.float32), np.ones((n, 2), bool),
                                None, None)
            archive = Archive(Path(tmp) / "archive")
            snap = archive.add(batch, codes, bits=args.bits, model_version="r1-bench")
            disk = sum(p.stat().st_size for p in (archive.root / snap.generation).iterdir())
            del batch, codes, snap
            out = subprocess.run([sys.executable, "-c", _CHILD, str(archive.root)], capture_output=True, text=True,
                                 check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
            r = json.loads(out.stdout)
            print(f"| {n:.0e} | {disk / n:.1f} | {8 * words} | {r['open_s']:.4f} | {r['first_query_s']:.3f} | "
                  f"{r['prepare_s']:.2f} | {r['method']} | {r['rss_open_kb'] / 1024:.0f} | "
                  f"{r['rss_peak_kb'] / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
