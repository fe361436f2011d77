"""Fixed-point encoding of float64 vectors into Z_2^64 (two's complement) and back.

Encoding: ``q = round(v * 2^f)`` (round half to even), stored as int64 and reinterpreted as uint64, so a
negative ``q`` becomes ``2^64 + q``. Sums are taken mod 2^64 (numpy uint64 arithmetic wraps).

Overflow bound: for ``|v| <= max_abs`` each ``|q| <= ceil(max_abs * 2^f)``. The sum of ``n`` encodings
is the exact integer sum, recovered by reinterpreting the uint64 result as int64, as long as
``n * ceil(max_abs * 2^f) < 2^63``. :func:`check_overflow` proves this with exact rational arithmetic
(``fractions.Fraction``) and raises :class:`OverflowRisk` otherwise. Precision: one value decodes within
``2^-(f+1)``; a sum of ``n`` within ``n * 2^-(f+1)`` (plus float64 rounding once ``|q| > 2^53``).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from security.errors import OverflowRisk

MAX_FRACTION_BITS = 52
_SIGNED_LIMIT = 2**63


def check_overflow(n_sites: int, max_abs: float, fraction_bits: int) -> None:
    """Prove ``n_sites * ceil(max_abs * 2^fraction_bits) < 2^63`` or raise.

    Args:
        n_sites: number of vectors summed (the cohort size), >= 1.
        max_abs: bound on every encoded value's magnitude (> 0, finite).
        fraction_bits: fraction bits f, in [0, 52].

    Raises:
        OverflowRisk: the bound fails or an argument is out of range; the message gives the value,
            the limit and the fix.
    """
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise OverflowRisk(f"n_sites={n_sites!r} must be an int >= 1")
    if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) \
            or not 0 <= fraction_bits <= MAX_FRACTION_BITS:
        raise OverflowRisk(f"fraction_bits={fraction_bits!r} must be an int in [0, {MAX_FRACTION_BITS}]")
    if not (isinstance(max_abs, int | float) and math.isfinite(max_abs) and max_abs > 0):
        raise OverflowRisk(f"max_abs={max_abs!r} must be a finite number > 0")
    per_site = math.ceil(Fraction(max_abs) * 2**fraction_bits)
    total = n_sites * per_site
    if total >= _SIGNED_LIMIT:
        raise OverflowRisk(
            f"{n_sites} sites * max|v| {max_abs} * 2^{fraction_bits} = 2^{math.log2(total):.2f} "
            f">= 2^63 limit; "
            f"lower fraction_bits, max_abs_value (clip harder upstream) or the cohort size")


def encode(values: npt.NDArray[np.float64], *, fraction_bits: int, max_abs: float) -> npt.NDArray[np.uint64]:
    """Encode a float vector as uint64 two's-complement fixed point.

    Shape:
        values: (d,) float64 (any float array is converted); returns (d,) uint64, a new array.

    Raises:
        OverflowRisk: a value is NaN/inf or ``|v| > max_abs`` (clip upstream, e.g. DP clipping, or raise
            ``max_abs_value``), or the arguments fail :func:`check_overflow` for one site.
    """
    check_overflow(1, max_abs, fraction_bits)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise OverflowRisk(f"encode expects a 1-D vector, got shape {x.shape}; flatten it first")
    if x.size:
        peak = max(float(x.max()), -float(x.min()))  # NaN propagates, so one test covers NaN, inf and range
        if not peak <= max_abs:
            bad = int(np.flatnonzero(~(np.abs(x) <= max_abs))[0])
            raise OverflowRisk(f"|value| {abs(x[bad])} at index {bad} > max_abs_value {max_abs} (or not finite); "
                               f"clip upstream (DP clipping) or raise max_abs_value")
    scaled = np.multiply(x, float(2**fraction_bits))  # exact: power-of-two scaling, bounded by check_overflow
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: npt.NDArray[np.uint64], *, fraction_bits: int) -> npt.NDArray[np.float64]:
    """Decode a uint64 fixed-point vector (one encoding or a mod-2^64 sum of several) to float64.

    Shape:
        total: (d,) uint64; returns (d,) float64, a new array.

    Raises:
        OverflowRisk: wrong dtype or fraction_bits out of range.
    """
    arr = np.asarray(total)
    if arr.dtype != np.uint64:
        raise OverflowRisk(f"decode expects uint64, got {arr.dtype}; pass the masked-sum vector unchanged")
    if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) \
            or not 0 <= fraction_bits <= MAX_FRACTION_BITS:
        raise OverflowRisk(f"fraction_bits={fraction_bits!r} must be an int in [0, {MAX_FRACTION_BITS}]")
    return np.ldexp(arr.view(np.int64).astype(np.float64), -fraction_bits)
