"""Thread counts side by side on a busy machine: one Linear step, then a whole pfmh-simulate round.

For each thread count it times (1) a 64 x 512 -> 256 Linear + tanh forward/backward step in a
fresh process and (2) ``pfmh-simulate --preset small --methods pfmh --rounds 1 --bits 32
--threads N``, alternating the counts so background load hits them alike, while ``--busy``
other CPU-bound processes (a Python spin loop each) run beside it. ``--threads 0`` is the old
simulation default (one thread per core); 1 is the rule in ``pfmh_model/threads.py``.

    python bench/bench_threads.py [--threads 1 0] [--busy 1] [--repeats 1] [--timeout-s 400]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

_STEP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]) or torch.get_num_threads())
x, lin = torch.randn(64, 512), torch.nn.Linear(512, 256)
for _ in range(20):
    lin(x).tanh().sum().backward()
start, n = time.perf_counter(), 200
for _ in range(n):
    lin(x).tanh().sum().backward()
print((time.perf_counter() - start) / n * 1e3)
"""


def _step_ms(threads: int, timeout_s: float) -> str:
    try:
        out = subprocess.run([sys.executable, "-c", _STEP, str(threads)], capture_output=True, text=True,
                             timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return f"> {timeout_s:.0f} s"
    return f"{float(out.stdout):.2f}"


def _simulate_s(threads: int, timeout_s: float) -> str:
    cmd = [str(Path(sys.executable).parent / "pfmh-simulate"), "--preset", "small", "--methods", "pfmh",
           "--rounds", "1", "--bits", "32", "--quiet", "--out", "runs/bench_threads", "--threads", str(threads)]
    started = time.perf_counter()
    try:
        subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return f"> {timeout_s:.0f} (killed)"
    return f"{time.perf_counter() - started:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread counts (0: one per core)")
    p.add_argument("--busy", type=int, default=1, help="CPU-bound processes running beside the measurement")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=400.0, help="a simulate run past this is killed")
    p.add_argument("--skip-simulate", action="store_true", help="only the Linear step")
    args = p.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    rows: dict[int, list[tuple[str, str]]] = {t: [] for t in args.threads}
    try:
        for r in range(args.repeats):
            for t in args.threads:
                step = _step_ms(t, args.timeout_s)
                sim = "-" if args.skip_simulate else _simulate_s(t, args.timeout_s)
                rows[t].append((step, sim))
                print(f"repeat {r + 1}, threads {t}: step {step} ms, simulate {sim} s", flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print(f"\n{args.busy} busy process(es) beside the run\n")
    print("| torch threads | Linear step (ms) | pfmh-simulate small, 1 round, 32 bits (s) |")
    print("|---|---|---|")
    for t, cells in rows.items():
        name = f"{t} (one per core)" if t == 0 else str(t)
        print(f"| {name} | {' / '.join(c[0] for c in cells)} | {' / '.join(c[1] for c in cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
