"""Calibration: the noise multiplier for a target (epsilon, delta) over R rounds, and rounds affordable.

``calibrate_sigma`` follows Opacus' ``get_noise_multiplier`` (same start, doubling and bisection, so the same
result for the same accountant) without assigning an accountant's history from outside: it doubles sigma
from 20 until epsilon <= target, then bisects and always keeps the upper end, whose epsilon is <= target.
The answer therefore leans toward privacy: epsilon(sigma) <= target and target - epsilon(sigma) <=
``epsilon_tolerance`` (unless the interval shrinks to float precision first; then too the upper end)).

Prototype releases use the whole local dataset, so the default sample rate is q = 1 (one step per round).

References:
    Opacus ``opacus/accountants/utils.py: get_noise_multiplier``.
"""
from __future__ import annotations

import math
import warnings

from security.accountant import AccountantKind, epsilon_for
from security.errors import UnsafeConfiguration

__all__ = ["MAX_SIGMA", "calibrate_sigma", "max_rounds"]

MAX_SIGMA = 1e6
_MAX_ROUNDS = 1 << 31


def _epsilon(sigma: float, q: float, rounds: int, delta: float, kind: AccountantKind) -> float:
    with warnings.catch_warnings():  # probes at large sigma hit the edge of Opacus' order grid; the bound
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # is then loose,
        return epsilon_for([(sigma, q, rounds)], delta, kind)  # i.e. conservative, never optimistic


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsafeConfiguration(f"{name} {value!r} must be an integer >= 1")


def calibrate_sigma(*, target_epsilon: float, delta: float, rounds: int, sample_rate: float = 1.0,
                    accountant: AccountantKind | str = AccountantKind.RDP,
                    epsilon_tolerance: float = 0.01) -> float:
    """Smallest-found noise multiplier whose epsilon after ``rounds`` releases at ``delta`` is <= target.

    Args:
        target_epsilon: epsilon allowed after all rounds.
        delta: target delta (keep it below 1/n_records).
        rounds: number of releases (steps) to cover.
        sample_rate: q per release; 1.0 for prototype statistics.
        accountant: ``"rdp"`` (default) or ``"prv"``.
        epsilon_tolerance: stop once target - epsilon(sigma) <= this.

    Returns:
        sigma with ``epsilon(sigma) <= target_epsilon`` (conservative; never overshoots).

    Raises:
        UnsafeConfiguration: a non-positive target or tolerance, bad rounds, or a budget that needs
            sigma > ``MAX_SIGMA``.
    """
    kind = AccountantKind(accountant)
    _check_positive_int("rounds", rounds)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0.0):
        raise UnsafeConfiguration(f"target_epsilon {target_epsilon!r} must be > 0 and finite")
    if not epsilon_tolerance > 0.0:
        raise UnsafeConfiguration(f"epsilon_tolerance {epsilon_tolerance!r} must be > 0")
    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:
        sigma_high *= 2.0
        if sigma_high > MAX_SIGMA:
            raise UnsafeConfiguration(f"target_epsilon {target_epsilon} over {rounds} rounds at delta "
                                      f"{delta} needs sigma > {MAX_SIGMA:g}; raise it or cut rounds")
        eps_high = _epsilon(sigma_high, sample_rate, rounds, delta, kind)
    while target_epsilon - eps_high > epsilon_tolerance and sigma_high - sigma_low > 1e-12 * sigma_high:
        sigma = (sigma_low + sigma_high) / 2.0
        eps = _epsilon(sigma, sample_rate, rounds, delta, kind)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


def max_rounds(*, noise_multiplier: float, delta: float, epsilon_max: float, sample_rate: float = 1.0,
               accountant: AccountantKind | str = AccountantKind.RDP) -> int:
    """Largest number of releases R with epsilon(R) <= ``epsilon_max`` (0 if not even one fits).

    Returns at most 2^31 (treat that as "unbounded for practical purposes").

    Raises:
        UnsafeConfiguration: invalid noise multiplier, sample rate, delta or epsilon_max.
    """
    kind = AccountantKind(accountant)
    if not (math.isfinite(epsilon_max) and epsilon_max > 0.0):
        raise UnsafeConfiguration(f"epsilon_max {epsilon_max!r} must be > 0 and finite")

    def fits(r: int) -> bool:
        return _epsilon(noise_multiplier, sample_rate, r, delta, kind) <= epsilon_max

    if not fits(1):
        return 0
    good, bad = 1, 2
    while fits(bad):  # epsilon grows with R: double until it does not fit
        good, bad = bad, bad * 2
        if bad > _MAX_ROUNDS:
            return _MAX_ROUNDS
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good
