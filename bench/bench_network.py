"""Communication and cost of privacy, measured on the wire by the real daemons (``pfmh-demo`` processes).

For each configuration (share mode x DP mode) it runs a whole local federation (coordinator + sites as
separate processes, mutual TLS, secure aggregation always on) and reads what the sites report per
round: bytes sent and received (serialised gRPC messages, counted by the site's client), the round's
wall time, and epsilon. The plain payload is the upload vector in float64 (8 bytes a value: prototype
sums and counts, plus n_k * weights when the model is shared); "wire / payload" is all bytes a site
sends in a round (keys, shares, masked vector, unmask shares, ledger and metrics reports) divided by it.

Secure aggregation cannot be switched off in the daemons (an unmasked upload would reveal a site's
statistics), so the cost of privacy compares DP on vs off with secure aggregation on in both.

    python bench/bench_network.py --preset small --rounds 3 --epochs 2
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LINE = re.compile(r"\[(?P<site>[\w-]+)\] (?P=site): round (?P<round>\d+) ok .*epsilon (?P<eps>[\d.]+)\s+"
                  r"sent (?P<sent>[\d,]+) B\s+received (?P<recv>[\d,]+) B\s+(?P<sec>[\d.]+)s")


def _payload_bytes(workdir: Path) -> int:
    from coordinator.config import load_config
    from coordinator.server import upload_layout

    return upload_layout(load_config(workdir / "coordinator.toml").federation).length * 8


def run_config(args: argparse.Namespace, share_mode: str, dp: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="pfmh-bench-net-")) / "demo"
    cmd = [sys.executable, "-m", "coordinator.local_demo", "--workdir", str(workdir), "--preset", args.preset,
           "--rounds", str(args.rounds), "--epochs", str(args.epochs), "--bits", str(args.bits),
           "--share-mode", share_mode, "--dp", dp, "--epsilon-max", "1000"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    rows = [m.groupdict() for m in LINE.finditer(out.stdout)]
    if out.returncode != 0 or not rows:
        raise RuntimeError(f"{share_mode}/{dp} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    sent = np.array([int(r["sent"].replace(",", "")) for r in rows])
    received = np.array([int(r["recv"].replace(",", "")) for r in rows])
    later = [float(r["sec"]) for r in rows if int(r["round"]) > 1]  # round 1 includes process warm-up
    return {"share_mode": share_mode, "dp": dp, "payload_bytes": _payload_bytes(workdir),
            "sent_per_round": float(sent.mean()), "received_per_round": float(received.mean()),
            "round_seconds": float(np.mean(later or [float(r["sec"]) for r in rows])),
            "epsilon_last": max(float(r["eps"]) for r in rows), "rounds": len(rows) // 3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--timeout-s", type=float, default=1800)
    args = p.parse_args(argv)
    results = [run_config(args, share, dp) for share in ("prototypes", "prototypes+model") for dp in ("off", "local")]
    print(f"\npreset {args.preset}, 3 sites, {args.rounds} rounds, {args.epochs}+{args.epochs} epochs, "
          f"{args.bits} bits; per site and round (mean over sites and rounds)")
    print("| share mode | DP | plain payload | sent on the wire | wire / payload | received | round wall time | "
          "epsilon after last round |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['share_mode']} | {r['dp']} | {r['payload_bytes']:,} B | {r['sent_per_round']:,.0f} B | "
              f"{r['sent_per_round'] / r['payload_bytes']:.3f} | {r['received_per_round']:,.0f} B | "
              f"{r['round_seconds']:.1f} s | {r['epsilon_last']:.2f} |")
    protos = next(r for r in results if r["share_mode"] == "prototypes" and r["dp"] == "local")
    model = next(r for r in results if r["share_mode"] == "prototypes+model" and r["dp"] == "local")
    ratio = model["sent_per_round"] / protos["sent_per_round"]
    print(f"\nprototype-only upload / model-sharing upload (sent bytes): 1/{ratio:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
