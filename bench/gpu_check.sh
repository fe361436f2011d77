#!/usr/bin/env bash
# The MIRFlickr-shaped federation on CUDA beside the CPU, records/s per site in one run (< 5 min).
#   bench/gpu_check.sh [extra bench_devices.py args, e.g. --epochs 1]
# Needs a torch build with CUDA in .venv (the pinned local wheel is CPU-only). Without a CUDA
# device it says so and times the CPU alone, so the script itself is tested everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PFMH_PYTHON:-.venv/bin/python}
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    devices=(cpu cuda)
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
    echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; timing the CPU only"
    devices=(cpu)
fi
exec timeout 290 "$PY" bench/bench_devices.py --devices "${devices[@]}" --both-paths "$@"
