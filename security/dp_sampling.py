"""Poisson subsampling for DP-SGD from the operating system's CSPRNG, never from a seeded generator.

The subsampled-Gaussian accountant (Opacus RDP/PRV) assumes that *which* records enter a step is secret:
each record joins a step's batch independently with probability q, and nobody else can predict the draw.
A batch order drawn from a generator seeded with ``train.seed`` and the site index, both known to the
coordinator, would let it know the batches, and the amplification by subsampling would not hold. Every
draw here therefore comes from ``os.urandom`` (the kernel CSPRNG), 53 uniform bits per record and step.

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (Poisson "lot" sampling);
    Mironov, Talwar & Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019.
"""
from __future__ import annotations

import os

import numpy as np

from security.errors import UnsafeConfiguration

__all__ = ["poisson_sample"]

_BITS = 53  # uniforms on a 2^-53 grid: the resolution of a float64 in [0, 1)


def poisson_sample(n_records: int, sample_rate: float) -> np.ndarray:
    """Indices of a Poisson sample: each of ``n_records`` joins independently with ``sample_rate``.

    Returns:
        Sorted int64 indices; possibly empty (a DP-SGD step with an empty batch still counts).

    Raises:
        UnsafeConfiguration: ``n_records`` < 0 or ``sample_rate`` outside (0, 1].
    """
    if isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 0:
        raise UnsafeConfiguration(f"n_records {n_records!r} must be an integer >= 0")
    if not 0.0 < float(sample_rate) <= 1.0:
        raise UnsafeConfiguration(f"sample_rate {sample_rate!r} must be in (0, 1]")
    uniform = np.frombuffer(os.urandom(8 * n_records), dtype=np.uint64) >> np.uint64(64 - _BITS)
    cut = np.uint64(min(int(float(sample_rate) * 2**_BITS), 2**_BITS))
    return np.flatnonzero(uniform < cut).astype(np.int64)
