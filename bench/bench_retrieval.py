"""Exact top-k Hamming search, one thread: ours (linear scan, HammingIndex) beside FAISS, and the gRPC server.

Run: ``python bench/bench_retrieval.py [--sizes 1000000 10000000] [--bits 64 128] [--kinds clustered real]
[--queries 200] [--single 100] [--k 100] [--server]``.

Archives (every one packed, 8 bytes per 64 bits):

- ``clustered``: ``--centres`` random centres with independent bit flips (``--flip``), like learned codes.
- ``real``: the codes a trained model gives the database split of Wiki (``--data``; the synthetic
  ``small`` preset when the file is absent), tiled up to size (so each code recurs n / 2,173 times);
  queries are the codes of the query split.
- ``random``: uniform random codes (the worst case for multi-index hashing).

Per archive, side by side in one process: queries/s by process CPU time (best of ``--repeats``) in one
batch of ``--queries`` and one query per call (``--single`` calls); build time; index memory per
record; and whether the answer is exact (ours: indices and distances identical to the linear scan;
FAISS: distances identical, since FAISS breaks ties its own way). FAISS (``pip install faiss-cpu``,
not a project dependency) runs ``IndexBinaryFlat`` and ``IndexBinaryMultiHash`` (``nhash`` tables of
``bits / nhash`` bits, ``nflip`` flips: approximate; its exact fraction is printed).

``--server`` adds one query at a time through ``pfmh-participant serve-search`` (a separate process,
real mTLS on 127.0.0.1) over the ``real`` archive at each size up to ``--server-max``: p50/p99 latency
of 1,000 calls through ``SearchClient`` (decoding the k hits), then of 1,000 more with the reply
left as bytes (the server's latency without the Python client's decoding), each encoding one new
record with the model and searching top-k; beside them, p50/p99 of 1,000 runs of a pure-Python loop
sized to the bytes p50 (what this machine alone does to the tail of work that long); the server
process's CPU time per call (user + system, from /proc: steadier than wall clock on a loaded
machine); and the server's start-up time and memory.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pfmh_model.hamming_index import HammingIndex  # noqa: E402
from pfmh_model.packed_codes import pack_codes  # noqa: E402
from pfmh_model.retrieval import search_transposed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- archives
def _clustered(n: int, bits: int, rng: np.random.Generator, centres: np.ndarray, flip: float) -> np.ndarray:
    out = np.empty((n, -(-bits // 64)), np.uint64)
    for s in range(0, n, 1 << 18):  # chunked: 1e7 x 128 random floats would need 10 GB at once
        m = min(n, s + (1 << 18)) - s
        out[s:s + m] = pack_codes(centres[rng.integers(0, len(centres), size=m)] ^ (rng.random((m, bits)) < flip))
    return out


def _random(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**63, size=(n, -(-bits // 64)), dtype=np.int64).view(np.uint64) & _pad_mask(bits)


def _pad_mask(bits: int) -> np.ndarray:
    words = -(-bits // 64)
    mask = np.full(words, np.uint64(2**64 - 1))
    if bits % 64:
        mask[-1] = np.uint64((1 << (bits % 64)) - 1)
    return mask


def trained_model(bits: int, data_path: str, epochs: int, seed: int = 0):  # noqa: ANN201
    """(trainer, dataset): the site network trained centrally for ``epochs`` on Wiki (or synthetic small)."""
    import torch

    from pfmh_model.data import load_h5
    from pfmh_model.synthetic import generate
    from pfmh_model.training import SiteTrainer, TrainConfig

    torch.set_num_threads(1)
    data = load_h5(data_path) if Path(data_path).is_file() else generate("small", seed=seed)
    trainer = SiteTrainer(dataclasses.replace(TrainConfig(), bits=bits, seed=seed, shared_epochs=epochs),
                          image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes)
    trainer.train_shared(data.train, prototypes=None, global_prototypes=None, distill=False)
    return trainer, data


def _tile(rows: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(rows, (n,) + rows.shape[1:]))


# ---------------------------------------------------------------------------------------------- timing
def _cpu_qps(run, count: int, repeats: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        cpu = time.process_time()
        run()
        best = min(best, time.process_time() - cpu)
    return count / max(best, 1e-9)


def _faiss():  # noqa: ANN202
    try:
        import faiss  # optional, only for the side-by-side figures
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    return faiss


def _extra_bytes(index: HammingIndex) -> int:
    """Memory of the structure ``prepare`` built, beyond the packed archive."""
    from pfmh_model.distinct_codes import DistinctCodes
    from pfmh_model.pivot_groups import PivotGroups

    fast = index._fast
    if fast is None:
        return 0
    if isinstance(fast, DistinctCodes):
        return fast.counts.nbytes + fast.offsets.nbytes + fast.rows.nbytes + fast.distinct_t.nbytes
    if isinstance(fast, PivotGroups):  # its archive_t is the served codes themselves, not a copy
        return fast.codes_t.nbytes + fast.rows.nbytes + fast.offsets.nbytes + fast.pivots_t.nbytes
    return sum(o.nbytes + i.nbytes + c.nbytes for o, i, c in fast.tables) + fast.archive_t.nbytes


def bench_archive(archive: np.ndarray, queries: np.ndarray, bits: int, args: argparse.Namespace) -> list[str]:
    """Table rows for one archive: ours and FAISS side by side."""
    n, k = len(archive), args.k
    single = queries[:args.single]
    archive_t = np.ascontiguousarray(archive.T)
    exact = search_transposed(queries, archive_t, k)
    rows = []

    def row(name: str, batched: float, one: float, build_s: float, bytes_per: float, exact_text: str) -> None:
        rows.append(f"| {n:.0e} | {bits} | {args.kind} | {name} | {batched:,.0f} | {one:,.0f} | {build_s:.2f} | "
                    f"{bytes_per:.1f} | {exact_text} |")

    scan = _cpu_qps(lambda: search_transposed(queries, archive_t, k), len(queries), args.repeats)
    scan1 = _cpu_qps(lambda: [search_transposed(single[i:i + 1], archive_t, k) for i in range(len(single))],
                     len(single), args.repeats)
    row("ours: linear scan", scan, scan1, 0.0, archive.nbytes / n, "yes (reference)")
    index = HammingIndex.from_word_major(archive_t, bits)
    start = time.perf_counter()
    index.prepare()
    build_s = time.perf_counter() - start
    got = index.search_packed(queries, k)
    same = np.array_equal(got.indices, exact.indices) and np.array_equal(got.distances, exact.distances)
    if not same:
        raise SystemExit(f"HammingIndex differs from the linear scan (n={n}, bits={bits}, {args.kind})")
    fast = _cpu_qps(lambda: index.search_packed(queries, k), len(queries), args.repeats)
    fast1 = _cpu_qps(lambda: [index.search_packed(single[i:i + 1], k) for i in range(len(single))],
                     len(single), args.repeats)
    row(f"ours: HammingIndex ({index.method})", fast, fast1, build_s, (archive.nbytes + _extra_bytes(index)) / n,
        "yes (identical)")
    faiss = _faiss()
    if faiss is None:
        rows.append(f"| {n:.0e} | {bits} | {args.kind} | FAISS: not installed | - | - | - | - | - |")
        return rows
    as_bytes, q_bytes = archive.view(np.uint8), np.ascontiguousarray(queries).view(np.uint8)
    s_bytes = q_bytes[:args.single]
    start = time.perf_counter()
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(as_bytes)
    build_s = time.perf_counter() - start
    distances, _ = flat.search(q_bytes, k)
    ok = np.array_equal(distances, exact.distances)
    qps = _cpu_qps(lambda: flat.search(q_bytes, k), len(queries), args.repeats)
    qps1 = _cpu_qps(lambda: [flat.search(s_bytes[i:i + 1], k) for i in range(len(s_bytes))], len(s_bytes),
                    args.repeats)
    row("FAISS IndexBinaryFlat", qps, qps1, build_s, archive.nbytes / n, "yes" if ok else "NO")
    nhash = max(1, round(bits / np.log2(n)))
    start = time.perf_counter()
    multi = faiss.IndexBinaryMultiHash(bits, nhash, bits // nhash)
    multi.nflip = args.nflip
    multi.add(as_bytes)
    build_s = time.perf_counter() - start
    distances, _ = multi.search(q_bytes, k)
    share = float(np.mean([np.array_equal(distances[i], exact.distances[i]) for i in range(len(queries))]))
    qps = _cpu_qps(lambda: multi.search(q_bytes, k), len(queries), args.repeats)
    qps1 = _cpu_qps(lambda: [multi.search(s_bytes[i:i + 1], k) for i in range(len(s_bytes))], len(s_bytes),
                    args.repeats)
    rows.append(f"| {n:.0e} | {bits} | {args.kind} | FAISS IndexBinaryMultiHash ({nhash}x{bits // nhash} bits, "
                f"nflip {args.nflip}) | {qps:,.0f} | {qps1:,.0f} | {build_s:.2f} | - | "
                f"{100 * share:.0f}% of queries |")
    return rows


# ---------------------------------------------------------------------------------------------- server
def write_site_state(state: Path, trainer, data, n: int) -> float:  # noqa: ANN001
    """A site's state folder as serve-search reads it: the settings, the trained model as the snapshot of
    round 1, and an archive of the database records (features, codes, ids r0.., labels) tiled to n.

    Returns:
        Seconds the archive took to write.
    """
    from federation.plan import FederationSettings, PrivacySettings
    from participant.archive import Archive
    from participant.site_model import model_version
    from pfmh_model.record_file import RecordBatch

    state.mkdir()
    config = dataclasses.asdict(trainer.config)
    config.pop("weights")
    settings = FederationSettings(federation_id="bench", image_dim=data.image_dim, text_dim=data.text_dim,
                                  num_classes=data.num_classes, method="pfmh", share_mode="prototypes",
                                  rounds=1, min_sites=1, train=config, privacy=PrivacySettings(mode="off"))
    (state / "settings.json").write_text(settings.to_json())
    trainer.save_snapshot(state / "trainer.pt", extra={"after_round": 1, "completed_rounds": 1})
    db = data.database
    codes = pack_codes(trainer.encode(db))
    ids = np.array([f"r{i}" for i in range(n)], dtype=object)
    batch = RecordBatch(_tile(db.image, n), _tile(db.text, n), np.ones((n, 2), bool), ids,
                        _tile(db.labels.astype(np.uint8), n))
    start = time.perf_counter()
    Archive(state / "archive").add(batch, _tile(codes, n), bits=trainer.config.bits,
                                   model_version=model_version(trainer, 1))
    return time.perf_counter() - start


def bench_server(n: int, trainer, data, args: argparse.Namespace) -> str:  # noqa: ANN001
    """p50/p99 of one query through serve-search over a tiled real archive of n records."""
    from participant.search_client import Query, SearchClient
    from participant.search_server import SERVICE_NAME
    from proto import search_pb2 as spb
    from security.pki import Role, create_ca
    from security.pki_issue import issue_certificate

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "state"
        write_s = write_site_state(state, trainer, data, n)
        ca = create_ca(federation_id="bench", out_dir=tmp / "pki")
        issue_certificate(ca=ca, role=Role.SITE, name="site")
        issue_certificate(ca=ca, role=Role.SITE, name="client")
        issue_certificate(ca=ca, role=Role.COORDINATOR, name="search")
        (tmp / "data.h5").write_bytes(b"")  # load_config checks the file exists; search never reads it
        (tmp / "site.toml").write_text(
            'site = "site"\nfederation_id = "bench"\ncoordinator = "127.0.0.1:1"\ndata = "data.h5"\n'
            'state_dir = "state"\n[tls]\nca_cert = "pki/site/ca.crt"\ncert = "pki/site/tls.crt"\n'
            'key = "pki/site/tls.key"\nsigning_key = "pki/site/signing.key"\n'
            '[search]\nlisten = "127.0.0.1:0"\nclient_ca = "pki/ca/ca.crt"\ncert = "pki/search/tls.crt"\n'
            'key = "pki/search/tls.key"\nreload_s = 60\n')
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "participant.cli", "serve-search", "--config",
                                 str(tmp / "site.toml"), "--log-level", "WARNING"],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            listening_s = time.perf_counter() - started
            port = int(line.rsplit(" ", 1)[1])
            with SearchClient(f"127.0.0.1:{port}", ca_cert=tmp / "pki/ca/ca.crt", cert=tmp / "pki/client/tls.crt",
                              key=tmp / "pki/client/tls.key", timeout_s=30) as client:
                while not client.stats().index_ready:
                    time.sleep(0.1)
                ready_s = time.perf_counter() - started
                q = data.query
                for i in range(50):  # warm-up
                    client.search([Query(q.image[i % len(q)], q.text[i % len(q)])], k=args.k)
                # The same calls with the reply left as bytes: what the server takes, without the Python
                # client's decoding of k hits (0.1-0.2 ms of the shared CPU) in the figure.
                raw = client.channel.unary_unary(f"/{SERVICE_NAME}/Search", response_deserializer=None,
                                                 request_serializer=spb.SearchRequest.SerializeToString)
                requests = [spb.SearchRequest(k=args.k, queries=[spb.Query(image=q.image[i].tolist(),
                                                                           text=q.text[i].tolist())])
                            for i in range(len(q))]
                lat, lat_raw = [], []
                cpu0 = _process_cpu_s(proc.pid)
                for i in range(1000):
                    t0 = time.perf_counter()
                    client.search([Query(q.image[i % len(q)], q.text[i % len(q)])], k=args.k)
                    lat.append(time.perf_counter() - t0)
                server_cpu_ms = (_process_cpu_s(proc.pid) - cpu0)  # over 1,000 calls: seconds = ms per call
                for i in range(1000):
                    t0 = time.perf_counter()
                    raw(requests[i % len(q)], timeout=30)
                    lat_raw.append(time.perf_counter() - t0)
            rss_kb = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        finally:
            proc.terminate()
            proc.wait(30)
        p50, p99 = np.percentile(np.array(lat) * 1e3, [50, 99])
        raw50, raw99 = np.percentile(np.array(lat_raw) * 1e3, [50, 99])
        busy50, busy99 = machine_jitter(raw50 / 1e3)
        return (f"| {n:.0e} | {trainer.config.bits} | {p50:.2f} | {p99:.2f} | {raw50:.2f} | {raw99:.2f} | "
                f"{busy50:.2f} | {busy99:.2f} | {server_cpu_ms:.2f} | "
                f"{listening_s:.2f} | {ready_s:.2f} | {rss_kb / 1024:.0f} | {write_s:.1f} |")


def _busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def machine_jitter(target_s: float, calls: int = 1000) -> tuple[float, float]:
    """p50/p99 ms of a pure-Python loop sized to take ``target_s``, timed like the calls.

    No network, no threads, no I/O: what this machine alone does to the tail of work that
    long (a VM's vCPU is descheduled now and then), to read the server's p99 against.
    """
    n = 10_000
    while True:  # size the loop to the target on this machine, now
        t0 = time.perf_counter()
        _busy(n)
        took = time.perf_counter() - t0
        if took >= target_s / 4:
            break
        n *= 2
    n = max(1, int(n * target_s / took))
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        _busy(n)
        lat.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(np.array(lat) * 1e3, [50, 99])
    return float(p50), float(p99)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--kinds", nargs="*", default=["clustered", "real"], choices=["clustered", "real", "random"],
                        help="archive kinds of the side-by-side table (none: only the server figure)")
    parser.add_argument("--queries", type=int, default=200, help="queries in the batched figure")
    parser.add_argument("--single", type=int, default=100, help="one-query calls in the single-query figure")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument("--flip", type=float, default=0.1, help="bit-flip probability of clustered codes")
    parser.add_argument("--nflip", type=int, default=2, help="IndexBinaryMultiHash flips per probe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wiki.h5"))
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the model behind 'real' codes")
    parser.add_argument("--server", action="store_true", help="also time one query through serve-search")
    parser.add_argument("--server-max", type=int, default=1_000_000)
    parser.add_argument("--tmp", default=None, help="folder for the server's archive (default: the system's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    models = {}
    print(f"exact top-{args.k}, 1 thread, queries/s by CPU time (best of {args.repeats}); batched = one call of "
          f"{args.queries} queries, single = {args.single} calls of one query")
    print("| archive | bits | codes | method | batched q/s | single q/s | build s | index bytes/record | exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bits in args.bits:
        centres = rng.integers(0, 2, size=(args.centres, bits)).astype(bool)
        for kind in args.kinds:
            if kind == "real" and bits not in models:
                models[bits] = trained_model(bits, args.data, args.epochs, args.seed)
            for n in args.sizes:
                args.kind = kind
                if kind == "clustered":
                    archive = _clustered(n, bits, rng, centres, args.flip)
                    queries = _clustered(args.queries, bits, rng, centres, args.flip)
                elif kind == "random":
                    archive, queries = _random(n, bits, rng), _random(args.queries, bits, rng)
                else:
                    trainer, data = models[bits]
                    archive = _tile(pack_codes(trainer.encode(data.database)), n)
                    queries = _tile(pack_codes(trainer.encode(data.query)), args.queries)
                for line in bench_archive(archive, queries, bits, args):
                    print(line, flush=True)
                del archive
    if args.server:
        print(f"\none query (k = {args.k}) through serve-search, 1,000 calls after 50 warm-up")
        print("| archive | bits | p50 ms | p99 ms | p50 ms, bytes | p99 ms, bytes | p50 ms, busy loop | "
              "p99 ms, busy loop | server CPU ms/query | "
              "listening after s | index ready after s | server RSS MB | archive write s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for bits in args.bits:
            if bits not in models:
                models[bits] = trained_model(bits, args.data, args.epochs, args.seed)
            for n in (s for s in args.sizes if s <= args.server_max):
                print(bench_server(n, *models[bits], args), flush=True)
    print(f"\nbench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
