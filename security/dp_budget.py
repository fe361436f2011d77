"""Privacy budget: refuse any release that WOULD push epsilon past ``epsilon_max`` (checked before spending).

``BudgetGuard.check`` steps a copy of the accountant with the hypothetical release and computes epsilon on
it; the real accountant is untouched. ``spend`` runs the same check and only then records the release, so
a refused release leaves no trace and a site never uploads past its budget. A projected epsilon equal to
``epsilon_max`` is allowed; anything above (or NaN) is refused.

Security:
    The guard is only as good as its accountant's history: every release of the site's data (prototype
    statistics and DP-SGD steps alike) must go through the same guard, and the accountant state must be
    persisted (``accountant.state_dict()``) so that a restart cannot reset the budget.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from security.accountant import PrivacyAccountant
from security.errors import BudgetExceeded, UnsafeConfiguration

__all__ = ["PrivacyBudget", "BudgetGuard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """The (epsilon_max, delta) a site may spend in total.

    Raises:
        UnsafeConfiguration: epsilon_max not > 0 and finite, or delta outside (0, 1).
    """

    epsilon_max: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon_max) and self.epsilon_max > 0.0):
            raise UnsafeConfiguration(f"epsilon_max {self.epsilon_max!r} must be > 0 and finite")
        if not 0.0 < self.delta < 1.0:
            raise UnsafeConfiguration(f"delta {self.delta!r} must be in (0, 1); use well below 1/n_records")


class BudgetGuard:
    """Checks and records releases against a :class:`PrivacyBudget` on one accountant.

    Args:
        accountant: the site's accountant (the guard steps it on :meth:`spend`).
        epsilon_max: total epsilon allowed.
        delta: delta at which epsilon is measured.

    Raises:
        UnsafeConfiguration: invalid budget.
    """

    def __init__(self, accountant: PrivacyAccountant, *, epsilon_max: float, delta: float) -> None:
        self._accountant = accountant
        self._budget = PrivacyBudget(epsilon_max=epsilon_max, delta=delta)

    @property
    def budget(self) -> PrivacyBudget:
        return self._budget

    @property
    def accountant(self) -> PrivacyAccountant:
        return self._accountant

    @property
    def spent(self) -> float:
        """Epsilon spent so far at the budget's delta."""
        return self._accountant.epsilon(self._budget.delta)

    @property
    def remaining(self) -> float:
        """``epsilon_max - spent``, never below 0."""
        return max(0.0, self._budget.epsilon_max - self.spent)

    def check(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1,
              round_number: int | None = None) -> float:
        """Projected epsilon after the release; raises instead of returning when it would exceed the budget.

        Args:
            noise_multiplier: sigma of the release.
            sample_rate: q of the release (1.0 for prototype statistics).
            steps: number of such releases.
            round_number: named in the error message when given.

        Raises:
            BudgetExceeded: projected epsilon > epsilon_max.
            UnsafeConfiguration: invalid release parameters.
        """
        trial = self._accountant.copy()
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        projected = trial.epsilon(self._budget.delta)
        if not projected <= self._budget.epsilon_max:  # written so that NaN is refused too
            where = (f"at round {round_number}" if round_number is not None
                     else f"after {trial.num_steps} accounted steps")
            shown, limit = f"{projected:.6g}", f"{self._budget.epsilon_max:.6g}"
            if shown == limit:  # too close to tell apart at 6 digits
                shown, limit = repr(projected), repr(self._budget.epsilon_max)
            raise BudgetExceeded(f"epsilon would reach {shown} > epsilon_max {limit} {where} "
                                 f"(delta {self._budget.delta:g}); raise epsilon_max or noise_multiplier")
        return projected

    def spend(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1,
              round_number: int | None = None) -> float:
        """Check, then record the release on the accountant; returns the new epsilon.

        Raises:
            BudgetExceeded: as :meth:`check`; nothing is recorded then.
            UnsafeConfiguration: invalid release parameters.
        """
        projected = self.check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                               round_number=round_number)
        self._accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        logger.info("privacy budget: epsilon %.4g of %g spent (delta %g)", projected,
                    self._budget.epsilon_max, self._budget.delta)
        return projected
