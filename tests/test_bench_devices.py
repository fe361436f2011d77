"""bench/gpu_check.sh runs end to end (CPU only here: it must say so) and bench_throughput's FLOP count."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from pfmh_model.network import HashNet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_throughput import flops_per_record  # noqa: E402


def test_gpu_check_runs_and_prints_records_per_second() -> None:
    env = {**os.environ, "PFMH_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--preset", "tiny", "--sites", "3", "--epochs", "1",
                          "--bits", "16"], capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    assert "| cpu | together |" in out and "| cpu | one at a time |" in out and "records/s per site" in out
    if not torch.cuda.is_available():
        assert "sees no CUDA device; timing the CPU only" in out


def test_flops_per_record_counts_every_linear_forward_and_backward() -> None:
    net = HashNet(image_dim=10, text_dim=6, bits=8, width=4, hidden=5, dropout=0.0)
    first = 2 * (10 * 5 + 6 * 5) * 2  # forward + weight gradient only
    rest = 2 * (5 * 4 * 2 + 2 * (4 * 8 + 8 * 4) + 4 * 8 + 8 * 4 + 4 * 16 + 16 * 4 + 4 * 8) * 3
    assert flops_per_record(net) == first + rest
