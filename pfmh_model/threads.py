"""The torch thread rule: one intra-op thread per process unless the caller asks for more.

Why one: torch's intra-op pool synchronises at the end of every operator, so a thread that the
OS has descheduled holds up every other one. Our steps are many small matrices (a 64-record
batch), where that wait dominates. Measured on the project's 2-core machine with one other
CPU-bound process running (``bench/bench_threads.py``, docs/BENCHMARKS.md): a 64 x 512 -> 256
Linear step took 0.6-0.8 ms on one thread and 1.5-31 ms on two, depending on where the
scheduler put the threads; one round of ``pfmh-simulate --preset small`` took 9.6-16.7 s on one
thread and 26-30 s on two (issue 13 saw 15.8 s against 845 s).

Parallelism comes from processes instead: the simulation trains its sites together
(``pfmh_model.site_batch``) and, on idle cores, can spread them over one-thread worker
processes (``pfmh_model.site_workers``, ``pfmh-simulate --workers``); the site daemon is one
process per site; benchmark sweeps run one process per cell.

The default is the same everywhere: ``pfmh-simulate --threads`` (via :func:`set_threads`), a
site's ``threads`` setting (``participant/config.py``, default 1) and the benchmark scripts (one
thread per process or worker).
"""
from __future__ import annotations

import os

import torch

from pfmh_model.errors import OptionError

__all__ = ["DEFAULT_THREADS", "set_threads"]

DEFAULT_THREADS = 1


def set_threads(threads: int = DEFAULT_THREADS) -> int:
    """Set torch's intra-op thread count for this process and return it.

    Args:
        threads: threads to use; 0 means one per CPU core (only sensible on an otherwise idle
            machine, see the module docstring).

    Raises:
        OptionError: ``threads`` is negative or not an integer.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise OptionError(f"threads={threads!r} is invalid: need an integer >= 0 (0: one per core; "
                          f"default {DEFAULT_THREADS})")
    count = threads or (os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count
