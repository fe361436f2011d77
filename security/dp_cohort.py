"""Distributed DP noise: how many honest sites' noise shares every decoded sum is guaranteed to hold.

In ``distributed`` mode each site adds only a share of the Gaussian noise and secure aggregation reveals only
sums. The share must be sized for the *smallest* sum the coordinator can ever decode, with the noise of the
sites that collude with it removed (a colluder can subtract its own share):

- to remove the self mask of an honest site u the coordinator needs t shares of u's self seed, and only
  survivors reveal them (``SecAggClient.unmask``). For the coalition (the coordinator and c colluders) to
  isolate the sum over a set S of honest inputs, all of u's surviving share holders must lie in S or among
  the colluders, so |S| + c >= t: every decodable sum of honest inputs holds at least t - c of them (not
  "at least t inputs": under SecAgg+ colluders and dropouts may together know all masks of a small S);
- each site therefore adds variance ``(sigma * S)^2 / m`` with ``m = t - c`` (``noise_cohort``), and every
  decodable sum carries at least the target variance (docs/PRIVACY.md section 3).

``min_sites`` plays no part. ``sum_noise_multiplier`` is what the ledger records for the full sum over the
cohort that survived, assuming c of its members collude.
"""
from __future__ import annotations

import math

from security.errors import UnsafeConfiguration

__all__ = ["noise_cohort", "sum_noise_multiplier"]


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UnsafeConfiguration(f"{name} {value!r} must be an integer >= {low}")
    return value


def noise_cohort(*, threshold: int, colluding_sites: int) -> int:
    """m = t - c: the fewest honest noise shares in any sum that secure aggregation can decode.

    Raises:
        UnsafeConfiguration: c >= t (some decodable sum could hold no honest noise at all).
    """
    t = _int("threshold", threshold, 1)
    c = _int("colluding_sites", colluding_sites, 0)
    if c >= t:
        raise UnsafeConfiguration(f"privacy.colluding_sites = {c} >= the secure-aggregation threshold {t}: a "
                                  "decodable sum could hold no honest noise; lower privacy.colluding_sites, raise "
                                  "secagg.threshold, or use privacy.mode = \"local\"")
    return t - c


def sum_noise_multiplier(*, sigma: float, contributors: int, cohort: int, colluding_sites: int) -> float:
    """Noise multiplier the decoded sum carries from its honest contributors: ``sigma * sqrt((k - c) / m)``.

    Raises:
        UnsafeConfiguration: fewer than ``cohort + colluding_sites`` contributors (the sum would hold less
            noise than every site's ledger charged for).
    """
    k = _int("contributors", contributors, 0)
    m = _int("cohort", cohort, 1)
    c = _int("colluding_sites", colluding_sites, 0)
    if k - c < m:
        raise UnsafeConfiguration(f"{k} contributors with {c} possible colluders leave {k - c} honest noise "
                                  f"shares < the {m} the noise was sized for; the sum must not be revealed")
    return float(sigma) * math.sqrt((k - c) / m)
