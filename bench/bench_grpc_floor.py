"""gRPC's own cost per call, with a handler that does nothing: the floor under the search server's latency.

Run: ``python bench/bench_grpc_floor.py [--calls 2000] [--reply-bytes 6000]``.

Starts, one after the other, a sync ``grpc.server`` (thread pool of 8, then of 1) and a
``grpc.aio`` server in their own processes, each over mutual TLS on 127.0.0.1 with certificates
from the project's CA code, each answering a fixed reply of ``--reply-bytes`` bytes. A Python
client makes ``--calls`` sequential calls after 200 warm-up calls. Printed per server: its CPU
time per call (user + system of the server process, from /proc) and the client's p50/p99
wall-clock latency.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]


def _serve(mode: str, pki: Path, workers: int, reply_bytes: int) -> None:
    key, cert, ca = ((pki / p).read_bytes() for p in ("search/tls.key", "search/tls.crt", "ca/ca.crt"))
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    reply = b"x" * reply_bytes
    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: reply)})
    if mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        server.add_generic_rpc_handlers((handler,))
        print(server.add_secure_port("127.0.0.1:0", credentials), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        print(server.add_secure_port("127.0.0.1:0", credentials), flush=True)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reply-bytes", type=int, default=6000)
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PKI", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve[0], Path(args.serve[1]), int(args.serve[2]), args.reply_bytes)
        return
    sys.path.insert(0, str(REPO))
    from security.pki import Role, create_ca
    from security.pki_issue import issue_certificate

    print(f"{args.calls} sequential calls, {args.reply_bytes}-byte replies, mTLS on 127.0.0.1")
    print("| server | server CPU ms/call | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        pki = Path(tmp_name) / "pki"
        ca = create_ca(federation_id="bench", out_dir=pki)
        issue_certificate(ca=ca, role=Role.SITE, name="client")
        issue_certificate(ca=ca, role=Role.COORDINATOR, name="search")
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca/ca.crt").read_bytes(),
                                             private_key=(pki / "client/tls.key").read_bytes(),
                                             certificate_chain=(pki / "client/tls.crt").read_bytes())
        for mode, workers in (("sync", 8), ("sync", 1), ("aio", 0)):
            proc = subprocess.Popen([sys.executable, __file__, "--reply-bytes", str(args.reply_bytes), "--serve",
                                     mode, str(pki), str(workers)], stdout=subprocess.PIPE, text=True)
            try:
                port = int(proc.stdout.readline())  # type: ignore[union-attr]
                with grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                         options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
                    call = channel.unary_unary("/bench.Floor/Call")
                    request = b"q" * 600
                    for _ in range(200):
                        call(request)
                    cpu, latencies = _cpu_s(proc.pid), []
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        call(request)
                        latencies.append(time.perf_counter() - start)
                    cpu_ms = (_cpu_s(proc.pid) - cpu) / args.calls * 1e3
            finally:
                proc.terminate()
                proc.wait(10)
            latencies.sort()
            name = f"sync, {workers} worker{'s' if workers > 1 else ''}" if mode == "sync" else "grpc.aio"
            print(f"| {name} | {cpu_ms:.3f} | {latencies[len(latencies) // 2] * 1e3:.3f} | "
                  f"{latencies[int(len(latencies) * 0.99)] * 1e3:.3f} |", flush=True)


if __name__ == "__main__":
    main()
