"""Where a Wiki federation's CPU time goes: phases, top operators, and the matmul floor (issue 13).

Runs ``--rounds`` rounds of the full Wiki setting (10 sites, alpha 0.1, 10 + 10 epochs, 32 bits,
pfmh) in this process with one thread and prints, side by side in one run:

- CPU seconds (``time.process_time``) per round of the personal phase, the shared phase and the
  evaluation;
- the operators with the most self time in one profiled round (``torch.profiler``), as shares;
- the matmul FLOPs the whole 20-round run needs, and the matmul rate this CPU reaches at the
  batched shapes of the run, hence the CPU seconds the matmuls alone need.

    python bench/profile_simulate.py [--wiki ../shared/data/wiki.h5] [--rounds 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import flops_per_record  # noqa: E402

import pfmh_model.local_round as local_round  # noqa: E402
from pfmh_model.data import load_h5  # noqa: E402
from pfmh_model.federation import Federation, FederationConfig  # noqa: E402
from pfmh_model.partition import partition_dataset  # noqa: E402
from pfmh_model.training import TrainConfig  # noqa: E402

FULL_ROUNDS, EPOCHS = 20, 20


def _timed(fn, totals: dict[str, float], key: str):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.process_time() - start
    return wrapper


def _bmm_rate(a: int, rows: int, n_in: int, n_out: int, repeats: int = 200) -> float:
    """GFLOP per CPU second of the forward baddbmm and its two backward bmms at one shape."""
    x, w, g, b = (torch.randn(a, rows, n_in), torch.randn(a, n_in, n_out), torch.randn(a, rows, n_out),
                  torch.randn(a, 1, n_out))
    ops = (lambda: torch.baddbmm(b, x, w), lambda: torch.bmm(g, w.mT), lambda: torch.bmm(x.mT, g))
    for op in ops:
        op()
    start = time.process_time()
    for _ in range(repeats):
        for op in ops:
            op()
    return 3 * 2 * a * rows * n_in * n_out * repeats / (time.process_time() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wiki", type=Path, default=Path("../shared/data/wiki.h5"))
    p.add_argument("--rounds", type=int, default=2, help="rounds timed (one more is profiled)")
    args = p.parse_args(argv)
    if not args.wiki.is_file():
        print(f"profile_simulate: error: {args.wiki} not found (pass --wiki)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    data = load_h5(args.wiki)
    sites = partition_dataset(data, num_sites=10, alpha=0.1, seed=0)
    federation = Federation(sites, FederationConfig(rounds=args.rounds + 1, train=TrainConfig(bits=32)))
    totals: dict[str, float] = {}
    local_round.train_personal_together = _timed(local_round.train_personal_together, totals, "personal phase")
    local_round.train_shared_together = _timed(local_round.train_shared_together, totals, "shared phase")
    for _ in range(args.rounds):
        federation.run_round()
        _timed(federation.evaluate, totals, "evaluation")()
    print(f"CPU seconds per round ({args.rounds} rounds, one thread):")
    for key, value in totals.items():
        print(f"  {key}: {value / args.rounds:.2f}")
    from torch.profiler import profile

    with profile() as prof:
        federation.run_round()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    print("operator self time in one round (share):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key}: {e.self_cpu_time_total / total:.1%}")
    per_record = flops_per_record(federation.trainers[0].personal)
    flops = len(data.train) * EPOCHS * FULL_ROUNDS * per_record
    rate = _bmm_rate(10, 64, 128, 256)
    print(f"matmul FLOPs of the full {FULL_ROUNDS}-round run: {flops / 1e12:.2f} TFLOP "
          f"({per_record / 1e6:.2f} MFLOP per record and step)")
    print(f"batched matmul rate at (10, 64, 128) x (10, 128, 256), forward + backward: {rate:.1f} GFLOP/s "
          f"-> the matmuls alone need {flops / rate / 1e9:.1f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
