"""ReportLedger bytes per round, counted by the real site daemons' own gRPC clients (issue #12, item 6).

Builds ``pfmh-demo``'s files (CA, certificates, synthetic data split, configs; DP on) and runs the real
coordinator and one real ``SiteDaemon`` per site in this process, over mutual TLS on 127.0.0.1. Each
site's client reports the serialised size of every request it sends (``CoordinatorClient.on_bytes``);
this script keeps the ``ReportLedger`` ones, one per completed round, and prints beside each the size of a
``LedgerReport`` holding the site's whole ledger at that moment (what a site sent before reports became
increments). Only product code runs, so the same script measures an older checkout too.

    python bench/bench_ledger_report.py --rounds 4 --sites 3 --preset tiny --epochs 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from coordinator import local_demo
    from coordinator.config import load_config
    from coordinator.server import run_server
    from participant.config import load_config as load_site_config
    from participant.site import SiteDaemon
    from proto import federation_pb2 as pb

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="pfmh-bench-ledger-")) / "demo"
    demo_args = local_demo.build_parser().parse_args([
        "--workdir", str(work), "--preset", args.preset, "--sites", str(args.sites), "--rounds", str(args.rounds),
        "--epochs", str(args.epochs), "--bits", str(args.bits), "--dp", args.dp])
    coordinator_toml, sites = local_demo.prepare(demo_args)
    rows: list[dict] = []
    lock = threading.Lock()
    with run_server(load_config(coordinator_toml), base_dir=work, listen="127.0.0.1:0") as (_, port, engine):
        daemons = []
        for site in sites:
            cfg = replace(load_site_config(work / f"site-{site}.toml"), coordinator=f"127.0.0.1:{port}")
            daemon = SiteDaemon(cfg, base=work)
            inner = daemon.client.on_bytes

            def spy(kind: str, sent: int, received: int, daemon=daemon, inner=inner, site=site) -> None:  # noqa: ANN001
                if kind == "ReportLedger":
                    lines = daemon.privacy.ledger.export_lines()
                    whole = pb.LedgerReport(federation_id=daemon.settings.federation_id, lines=lines).ByteSize()
                    with lock:
                        done = sum(r["site"] == site for r in rows)
                        rows.append({"site": site, "report": done + 1, "entries": len(lines), "sent": sent,
                                     "whole": whole})
                inner(kind, sent, received)

            daemon.client.on_bytes = spy
            daemons.append(daemon)
        threads = [threading.Thread(target=d.run) for d in daemons]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        completed = engine.state.completed_rounds
    if completed != args.rounds:
        raise SystemExit(f"only {completed} of {args.rounds} rounds completed; see the log above")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--dp", default="local", choices=["local", "distributed"])
    args = p.parse_args(argv)
    rows = run(args)
    print(f"\nReportLedger request bytes ({args.sites} sites, {args.rounds} rounds, DP {args.dp}, "
          f"preset {args.preset})")
    print(f"{'site':<12} {'round':>5} {'entries':>7} {'sent (B)':>9} {'whole ledger (B)':>17}")
    for r in sorted(rows, key=lambda r: (r["site"], r["report"])):
        print(f"{r['site']:<12} {r['report']:>5} {r['entries']:>7} {r['sent']:>9,} {r['whole']:>17,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
