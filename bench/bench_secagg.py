"""Secure aggregation cost: client masking, server unmasking and bytes on the wire, SecAgg vs SecAgg+.

Run: ``python bench/bench_secagg.py [--n 10 100 500] [--d 1e3 1e5 1e7] [--modes full plus] [--dropout 0.1]
[--prg chacha20] [--budget-s 30] [--full-max-n 100]``.

Per cohort size n and mode (``full``: every site pairs with every other one, Bonawitz et al. 2017; ``plus``:
random Harary graph with k = ceil(2 log2 n) rounded up to even, Bell et al. 2020) one real round is run
with all n clients (advertise, sign, verify, Shamir-share, seal, open, derive pairwise seeds, unmask);
``--dropout`` of the sites that shared keys then skip the masked-input phase, so the server must rebuild
their mask keys and regenerate their pairwise masks. For each vector length d a fresh server replays
that round's messages with d-length masked vectors; the other clients' uploads are synthetic (server
cost does not depend on their values), while one real client's masking is timed on a d-length vector.

Columns: ``mask_s`` = one client's encode + self mask + its pairwise masks + serialisation of d values;
``keys_s`` = mean ShareKeys work per client; ``open_s`` = mean per-client opening of received shares and
pairwise seed derivation (d-independent part of MaskedInput); ``sum_s`` = server summation of all
uploads; ``unmask_s`` = server UnmaskResponse parsing + reconstruction + mask removal + decoding.
Times are CPU seconds of this single-threaded process (``time.process_time``), so other load on a shared
machine inflates them less than wall time; the final target line prints both. Bytes: protobuf-style size of
every message a surviving site sends and receives (field tags and length prefixes, no gRPC/TLS framing).
Plain payload = the float64 vector, 8 bytes per value; expansion = site bytes / (8 d). Cells whose estimated
time exceeds ``--budget-s`` are skipped and say so.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np

from security import fixed_point
from security.masking import PairwiseMask, apply_masks
from security.prg import MaskSeed, PrgAlgorithm, add_streams
from security.secagg_client import SecAggClient
from security.secagg_config import SecAggConfig
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from security.secagg_server import SecAggServer
from security.signing import SigningKey


def _varint(n: int) -> int:
    return max(1, math.ceil(n.bit_length() / 7))


def wire_bytes(obj: object) -> int:
    """Protobuf-style encoded size of a message dataclass (tag + length prefix per field)."""
    total = 0
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, bytes | str):
                size = len(item.encode() if isinstance(item, str) else item)
                total += 1 + _varint(size) + size
            elif isinstance(item, int):
                total += 1 + _varint(item)
            else:
                size = wire_bytes(item)
                total += 1 + _varint(size) + size
    return total


@dataclasses.dataclass
class Round:
    """Messages of one real round (clients with d = 1), replayed for every d."""

    base: SecAggConfig
    sites: list[str]
    adverts: dict[str, AdvertiseKeys]
    shares: dict[str, list[EncryptedShare]]
    inbox: dict[str, tuple[EncryptedShare, ...]]
    directories: dict[str, KeyDirectory]
    request: UnmaskRequest
    responses: dict[str, UnmaskResponse]
    keys_s: float
    open_s: float
    pairs: int


def _config(mode: str, n: int, d: int, prg: PrgAlgorithm) -> SecAggConfig:
    k = 2 * n if mode == "full" else None
    return SecAggConfig(federation_id="bench", vector_length=d, fraction_bits=20, max_abs_value=1000.0,
                        neighbours=k, prg=prg)


def run_clients(mode: str, n: int, dropout: float, prg: PrgAlgorithm, rng: np.random.Generator) -> Round:
    """One real round over n clients with d = 1; returns every message and per-client timings."""
    base = _config(mode, n, 1, prg)
    sites = [f"site-{i:03d}" for i in range(n)]
    keys = {s: SigningKey.generate() for s in sites}
    verify = {s: k.verify_key() for s, k in keys.items()}
    clients = {s: SecAggClient(s, config=base, signing_key=keys[s]) for s in sites}
    server = SecAggServer(base, sites, round_number=1)
    adverts = {s: clients[s].advertise(1, sites) for s in sites}
    for s in sites:
        server.receive_advertisement(s, adverts[s])
    server.close_advertisements()
    directories = {s: server.directory_for(s) for s in sites}  # compact per-site form for SecAgg+
    start = time.process_time()
    shares = {s: clients[s].share_keys(directories[s], verify_keys=verify) for s in sites}
    keys_s = (time.process_time() - start) / n
    for s in sites:
        server.receive_shares(s, shares[s])
    inbox = server.close_shares()
    dropped = set(rng.choice(sites, size=int(round(dropout * n)), replace=False).tolist())
    start = time.process_time()
    uploads = {s: clients[s].masked_input(inbox[s], np.zeros(1)) for s in sites if s not in dropped}
    open_s = (time.process_time() - start) / len(uploads)
    for s, message in uploads.items():
        server.receive_masked_input(s, message)
    request = server.close_masked_inputs()
    responses = {s: clients[s].unmask(request) for s in request.survivors}
    graph = {s: {m.recipient for m in shares[s]} for s in sites}
    pairs = sum(len(graph[u] & set(request.survivors)) for u in request.dropouts)
    return Round(base, sites, adverts, shares, inbox, directories, request, responses, keys_s, open_s, pairs)


def time_masking(d: int, neighbours: int, prg: PrgAlgorithm, repeat: int) -> tuple[float, float, float, float]:
    """Best-of-``repeat`` CPU seconds of one client's (encode, masks, to-bytes) and the best wall total."""
    x = np.random.default_rng(0).uniform(-1000.0, 1000.0, d)
    best = (math.inf, math.inf, math.inf, math.inf)
    for _ in range(repeat):
        seeds = [MaskSeed.generate() for _ in range(neighbours)]
        pairwise = [PairwiseMask(seed, "site-000", f"site-{i + 1:03d}") for i, seed in enumerate(seeds)]
        wall, t0 = time.perf_counter(), time.process_time()
        encoded = fixed_point.encode(x, fraction_bits=20, max_abs=1000.0)
        t1 = time.process_time()
        apply_masks(encoded, self_seed=MaskSeed.generate(), algorithm=prg, pairwise=pairwise)
        t2 = time.process_time()
        MaskedInput.from_vector("bench", 1, "site-000", encoded)
        t3, wall = time.process_time(), time.perf_counter() - wall
        if t3 - t0 < sum(best[:3]):
            best = (t1 - t0, t2 - t1, t3 - t2, wall)
    return best


def time_server(rnd: Round, d: int) -> tuple[float, float]:
    """Replay the round into a d-length server; return (summation seconds, unmask seconds)."""
    config = dataclasses.replace(rnd.base, vector_length=d)
    server = SecAggServer(config, rnd.sites, round_number=1)
    for s in rnd.sites:
        server.receive_advertisement(s, rnd.adverts[s])
    server.close_advertisements()
    for s in rnd.sites:
        server.receive_shares(s, rnd.shares[s])
    server.close_shares()
    payload = bytes(8 * d)
    start = time.process_time()
    for s in rnd.request.survivors:
        server.receive_masked_input(s, MaskedInput("bench", 1, s, payload))
    sum_s = time.process_time() - start
    if server.close_masked_inputs() != rnd.request:
        raise RuntimeError("replayed round diverged from the recorded one")
    start = time.process_time()
    for s, response in rnd.responses.items():
        server.receive_unmask_response(s, response)
    server.finish()
    return sum_s, time.process_time() - start


def site_bytes(rnd: Round, d: int) -> int:
    """Bytes sent plus received by the first surviving site."""
    s = rnd.request.survivors[0]
    sent = (wire_bytes(rnd.adverts[s]) + sum(wire_bytes(m) for m in rnd.shares[s])
            + wire_bytes(MaskedInput("bench", 1, s, bytes(8 * d))) + wire_bytes(rnd.responses[s]))
    received = wire_bytes(rnd.directories[s]) + sum(wire_bytes(m) for m in rnd.inbox[s]) + wire_bytes(rnd.request)
    return sent + received


def calibrate(prg: PrgAlgorithm) -> float:
    """Seconds per (value x stream) of add_streams, for skipping infeasible cells."""
    target = np.zeros(1_000_000, dtype=np.uint64)
    start = time.process_time()
    add_streams(target, [(MaskSeed.generate(), 1)] * 4, algorithm=prg)
    return (time.process_time() - start) / 4e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--d", type=float, nargs="+", default=[1e3, 1e5, 1e7])
    parser.add_argument("--modes", nargs="+", choices=["full", "plus"], default=["full", "plus"])
    parser.add_argument("--dropout", type=float, default=0.1, help="fraction dropping before masked input")
    parser.add_argument("--prg", choices=[p.value for p in PrgAlgorithm], default="chacha20")
    parser.add_argument("--budget-s", type=float, default=30.0, help="skip cells estimated slower than this")
    parser.add_argument("--full-max-n", type=int, default=100,
                        help="largest n for full SecAgg (its O(n^2) Shamir/seal setup takes minutes at 500)")
    args = parser.parse_args(argv)
    prg = PrgAlgorithm(args.prg)
    rate = calibrate(prg)
    rng = np.random.default_rng(0)
    print(f"PRG {prg.value}: {rate * 1e9:.2f} ns per value-stream; dropout {args.dropout:.0%} before masked "
          f"input; plain payload = float64 (8 B/value)")
    header = (f"{'mode':<5}{'n':>5}{'k':>5}{'t':>5}{'d':>10}{'mask_s':>9}{'keys_s':>9}{'open_s':>9}{'sum_s':>9}"
              f"{'unmask_s':>10}{'site_KiB':>11}{'expand':>8}  note")
    print(header)
    print("-" * len(header))
    for mode in args.modes:
        for n in args.n:
            plan = _config(mode, n, 1, prg).plan(n)
            lead = f"{mode:<5}{n:>5}{plan.holders - 1:>5}{plan.threshold:>5}"
            if mode == "full" and n > args.full_max_n:
                print(f"{lead}{'-':>10}  skipped: full-graph setup is O(n^2) Python Shamir/sealing "
                      f"(minutes); pass --full-max-n {n}")
                continue
            start = time.perf_counter()
            rnd = run_clients(mode, n, args.dropout, prg, rng)
            setup_s = time.perf_counter() - start
            for d in (int(v) for v in args.d):
                streams_server = len(rnd.request.survivors) + rnd.pairs
                est_client, est_server = (plan.holders * d * rate), streams_server * d * rate
                cells = f"{lead}{d:>10}"
                if max(est_client, est_server) > args.budget_s:
                    print(f"{cells}  skipped: estimated {max(est_client, est_server):.0f} s > --budget-s "
                          f"({streams_server} server mask streams)")
                    continue
                mask_s = sum(time_masking(d, plan.holders - 1, prg, 3 if est_client < 1 else 1)[:3])
                sum_s, unmask_s = time_server(rnd, d)
                size = site_bytes(rnd, d)
                print(f"{cells}{mask_s:>9.4f}{rnd.keys_s:>9.4f}{rnd.open_s:>9.4f}{sum_s:>9.4f}{unmask_s:>10.3f}"
                      f"{size / 1024:>11.1f}{size / (8 * d):>8.3f}  setup {setup_s:.1f} s, "
                      f"{rnd.pairs} pairwise masks rebuilt")
    print("\ntarget: d = 1e7, 16 neighbours + self mask, one core (<= 0.4 s), best of 3, CPU seconds")
    for algorithm in PrgAlgorithm:
        enc, masks, ser, wall = time_masking(10_000_000, 16, algorithm, 3)
        print(f"  {algorithm.value:<11} masks (17 PRG streams + adds) {masks:.3f} s; encode {enc:.3f} s; "
              f"to bytes {ser:.3f} s; total {enc + masks + ser:.3f} s (wall {wall:.3f} s)")


if __name__ == "__main__":
    main()
