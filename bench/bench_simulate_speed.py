"""Wall time of whole ``pfmh-simulate`` runs, variants side by side in one run (issue 13's goals).

Runs, alternating the variants so background load hits them alike:
- the full Wiki run (10 sites, alpha 0.1, 20 rounds, 10 + 10 epochs, 32 bits, pfmh) when
  ``--wiki`` exists, against the reference code's 25 min 41 s;
- ``pfmh-simulate --preset small --rounds 3`` (its other defaults: pfmh, 64 bits).

CPU seconds (the run and its workers, from ``getrusage``) are printed beside wall seconds: on a
machine shared with other jobs they say what the run costs, while wall time says what the load
allowed. Variants are extra flags: the sites trained one at a time in one process (the old path),
together in one process, and together in two worker processes (the default on 2 cores). Each
run is a fresh process with one torch thread per process; the final mAPs are printed so the
speed-up can be checked not to cost accuracy.

    python bench/bench_simulate_speed.py [--wiki ../shared/data/wiki.h5] [--repeats 1] [--only wiki|small]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REFERENCE_WIKI_S = 25 * 60 + 41
VARIANTS = {"one site at a time, 1 process": ["--one-site-at-a-time", "--workers", "1"],
            "together, 1 process": ["--workers", "1"],
            "together, 2 processes": ["--workers", "2"]}


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(args: list[str], out: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the run and its worker processes) and final mAPs of one run."""
    cmd = [str(Path(sys.executable).parent / "pfmh-simulate"), *args, "--quiet", "--out", str(out)]
    started, cpu = time.perf_counter(), _cpu_children()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, _cpu_children() - cpu
    result = json.loads((out / "result.json").read_text())
    last = result["methods"]["pfmh"]["rounds"][-1]
    return seconds, cpu, f"{last['mean_site_map']:.3f} / {last['global_map']:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wiki", type=Path, default=Path("../shared/data/wiki.h5"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", choices=["wiki", "small"], default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench_simulate_speed"))
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
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
            for v, name in enumerate(args.variants):
                seconds, cpu, maps = _run(flags + VARIANTS[name], args.out / f"{case}-{r}-{v}")
                rows.append((case, name, seconds, cpu, maps))
                print(f"{case}, {name}, repeat {r + 1}: {seconds:.1f} s wall, {cpu:.1f} s CPU, per-site / global "
                      f"mAP {maps}", flush=True)
    print("\n| run | training | wall s | CPU s | per-site / global mAP | x reference (Wiki, wall) |")
    print("|---|---|---|---|---|---|")
    for case, name, seconds, cpu, maps in rows:
        ref = f"{REFERENCE_WIKI_S / seconds:.0f}x" if case == "wiki" else "-"
        print(f"| {case} | {name} | {seconds:.1f} | {cpu:.1f} | {maps} | {ref} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
