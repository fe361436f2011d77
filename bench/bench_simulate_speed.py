"""Wall time of whole ``pfmh-simulate`` runs, variants side by side in one run (issue 13's goals).

Runs, alternating the variants so background load hits them alike:
- the full Wiki run (10 sites, alpha 0.1, 20 rounds, 10 + 10 epochs, 32 bits, pfmh) when
  ``--wiki`` exists, against the reference code's 25 min 41 s;
- ``pfmh-simulate --preset small --rounds 3`` (its other defaults: pfmh, 64 bits).

Variants are extra flags: by default the sites trained one at a time (the old path) and
together (the default now). Each run is a fresh process; the final mAPs are printed so the
speed-up can be checked not to cost accuracy.

    python bench/bench_simulate_speed.py [--wiki ../shared/data/wiki.h5] [--repeats 1] [--only wiki|small]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REFERENCE_WIKI_S = 25 * 60 + 41
VARIANTS = {"one site at a time": ["--one-site-at-a-time"], "sites together": []}


def _run(args: list[str], out: Path) -> tuple[float, str]:
    cmd = [str(Path(sys.executable).parent / "pfmh-simulate"), *args, "--quiet", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    result = json.loads((out / "result.json").read_text())
    last = result["methods"]["pfmh"]["rounds"][-1]
    return seconds, f"{last['mean_site_map']:.3f} / {last['global_map']:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wiki", type=Path, default=Path("../shared/data/wiki.h5"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", choices=["wiki", "small"], default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench_simulate_speed"))
    args = p.parse_args(argv)
    cases = {}
    if args.only in (None, "wiki"):
        if args.wiki.is_file():
            cases["wiki"] = ["--data", str(args.wiki), "--sites", "10", "--alpha", "0.1", "--rounds", "20",
                             "--personal-epochs", "10", "--shared-epochs", "10", "--bits", "32", "--methods", "pfmh"]
        else:
            print(f"skipping the Wiki run: {args.wiki} not found")
    if args.only in (None, "small"):
        cases["small"] = ["--preset", "small", "--rounds", "3"]
    rows = []
    for case, flags in cases.items():
        for r in range(args.repeats):
            for name, extra in VARIANTS.items():
                seconds, maps = _run(flags + extra, args.out / f"{case}-{r}-{len(extra)}")
                rows.append((case, name, seconds, maps))
                print(f"{case}, {name}, repeat {r + 1}: {seconds:.1f} s, per-site / global mAP {maps}", flush=True)
    print("\n| run | training | wall s | per-site / global mAP | x reference (Wiki) |")
    print("|---|---|---|---|---|")
    for case, name, seconds, maps in rows:
        ref = f"{REFERENCE_WIKI_S / seconds:.0f}x" if case == "wiki" else "-"
        print(f"| {case} | {name} | {seconds:.1f} | {maps} | {ref} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
