"""Gaussian noise for prototype statistics: ``local`` (full noise per site) and ``distributed`` (a share).

Local mode adds N(0, (sigma * sensitivity)^2) per coordinate, which protects a site even against the
coordinator. Distributed mode adds N(0, (sigma * sensitivity)^2 / m) with m = ``min_cohort``: the sum of
k >= m such shares has std ``sigma * sensitivity * sqrt(k / m) >= sigma * sensitivity``, so the decoded
aggregate is at least as private as one local release. Each site alone is then under-noised, so the mode is
only valid with secure aggregation (the coordinator sees only the sum) and when every decoded sum holds at
least m honest sites' noise: choose m <= (secure-aggregation threshold t) - (sites that may collude with
the coordinator).

Accounting: the whole local dataset contributes each round, so a prototype release is one Gaussian step
with sample rate q = 1 (no subsampling amplification): ``accountant.step(noise_multiplier=sigma,
sample_rate=1.0)`` once per round; in distributed mode sigma is the effective multiplier of the sum.

Noise is added to the float64 vector BEFORE fixed-point encoding and masking: rounding to the 2^-f grid
and masking are post-processing and cannot weaken the guarantee, while noise added after encoding would be
quantised by the caller's choice of f and could overflow the encoding bound.

Security:
    The default generator is numpy's PCG64 seeded with 256 bits from ``os.urandom``; it is not a
    cryptographic PRG, and floating-point Gaussian sampling leaks through the low-order bits of the result
    (Mironov 2012 shows the attack for the Laplace mechanism). We accept this residual risk: outputs are
    rounded to the fixed-point grid before they leave the site (a partial form of Mironov's snapping) and,
    in distributed mode, only sums of several sites are ever decoded. A discrete Gaussian sampler
    (Canonne, Kamath & Steinke 2020) would close it and is not implemented.

References:
    Dwork & Roth 2014, Thm. A.1; Mironov, "On Significance of the Least Significant Bits for Differential
    Privacy", CCS 2012; Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy",
    NeurIPS 2020; Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism", ICML 2021, Sec. 1.
"""
from __future__ import annotations

import enum
import math
import os

import numpy as np

from security.errors import UnsafeConfiguration

__all__ = ["NoiseMode", "noise_std", "secure_generator", "add_gaussian_noise"]


class NoiseMode(enum.StrEnum):
    """Who adds the noise: each site in full (``local``) or a 1/m share under secure aggregation."""

    LOCAL = "local"
    DISTRIBUTED = "distributed"


def secure_generator() -> np.random.Generator:
    """A fresh numpy Generator seeded with 256 bits from ``os.urandom`` (see the module's Security note)."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def noise_std(*, sigma: float, sensitivity: float, mode: NoiseMode, min_cohort: int = 1) -> float:
    """Per-coordinate std one site adds: ``sigma * sensitivity``, divided by sqrt(min_cohort) if distributed.

    Raises:
        UnsafeConfiguration: sigma or sensitivity is not positive and finite, min_cohort < 1, or mode unknown.
    """
    noise_mode = NoiseMode(mode)
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise UnsafeConfiguration(f"noise_multiplier sigma {sigma!r} must be > 0 and finite; "
                                  "calibrate it with calibrate_sigma or set DP mode off")
    if not (math.isfinite(sensitivity) and sensitivity > 0.0):
        raise UnsafeConfiguration(f"sensitivity {sensitivity!r} must be > 0 and finite; use l2_sensitivity()")
    if isinstance(min_cohort, bool) or not isinstance(min_cohort, int) or min_cohort < 1:
        raise UnsafeConfiguration(f"min_cohort {min_cohort!r} must be an integer >= 1; "
                                  "set it to the fewest honest sites in any decoded sum")
    std = sigma * sensitivity
    return std / math.sqrt(min_cohort) if noise_mode is NoiseMode.DISTRIBUTED else std


def add_gaussian_noise(vector: np.ndarray, *, sigma: float, sensitivity: float, mode: NoiseMode,
                       min_cohort: int = 1, secure_aggregation: bool = False,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """Return ``vector + N(0, noise_std^2 I)`` as a new float64 array (the input is not modified).

    Args:
        vector: the statistics to release, before fixed-point encoding and masking.
        sigma: noise multiplier (std in units of the sensitivity), the value given to the accountant.
        sensitivity: L2 sensitivity of ``vector`` (from :mod:`security.dp_sensitivity`).
        mode: ``local`` or ``distributed``.
        min_cohort: m, the fewest honest sites whose noise enters any decoded sum (distributed mode only).
        secure_aggregation: must be True in distributed mode; the caller vouches that only sums are revealed.
        rng: Generator for the noise; default :func:`secure_generator`. Pass one only in tests.

    Shape:
        - vector: (d,) float64; return: (d,) float64

    Security:
        Distributed mode protects a site from the coordinator only through secure aggregation and only
        while at least ``min_cohort`` honest sites survive into each decoded sum.

    Raises:
        UnsafeConfiguration: distributed mode without secure aggregation, a non-float64 / non-1-D /
            non-finite vector, or invalid sigma, sensitivity or min_cohort.
    """
    noise_mode = NoiseMode(mode)
    if noise_mode is NoiseMode.DISTRIBUTED and secure_aggregation is not True:
        raise UnsafeConfiguration("distributed noise without secure aggregation leaves each upload with only "
                                  f"1/{min_cohort} of the noise variance; enable secure aggregation or use "
                                  "local mode")
    std = noise_std(sigma=sigma, sensitivity=sensitivity, mode=noise_mode, min_cohort=min_cohort)
    v = np.asarray(vector)
    if v.dtype != np.float64 or v.ndim != 1:
        raise UnsafeConfiguration(f"vector must be 1-D float64, got {v.dtype} with shape {v.shape}; "
                                  "add noise before fixed-point encoding")
    if not np.all(np.isfinite(v)):
        raise UnsafeConfiguration("vector holds NaN or inf; fix the statistics before adding noise")
    gen = rng if rng is not None else secure_generator()
    return v + gen.normal(0.0, std, size=v.shape)
