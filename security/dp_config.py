"""``DPConfig``: the differential-privacy policy of a federation, validated when built.

The federation plan (``federation/plan.py``: ``PrivacySettings``) builds one at load time, so these
rules are the ones both daemons enforce; each refusal names its setting (``UnsafeSetting.setting``).

Secure choices are the defaults: local noise (private even against the coordinator), RDP accounting,
weights ``1/sqrt(#labels)`` (sensitivity sqrt(2)) and secure aggregation on. The dataset-dependent rule
delta < 1/n_records is checked by :meth:`DPConfig.check_records` once the site knows n.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from security.accountant import AccountantKind
from security.dp_noise import NoiseMode
from security.dp_sensitivity import l2_sensitivity
from security.errors import UnsafeConfiguration, UnsafeSetting

__all__ = ["DPMode", "DPConfig"]


class DPMode(enum.StrEnum):
    """Where noise is added: nowhere (``off``), in full per site (``local``), or shared (``distributed``)."""

    OFF = "off"
    LOCAL = "local"
    DISTRIBUTED = "distributed"


@dataclass(frozen=True, slots=True)
class DPConfig:
    """Differential-privacy settings (strings are accepted for the enum fields and converted).

    Attributes:
        mode: ``off``, ``local`` or ``distributed`` (distributed needs ``secure_aggregation``).
        noise_multiplier: sigma, the noise std in units of the sensitivity (> 0 unless off). Larger is more
            private and less accurate; use :func:`security.dp_calibration.calibrate_sigma`.
        delta: the delta of (epsilon, delta)-DP; must stay below 1/n_records.
        epsilon_max: total epsilon a site may spend; releases past it are refused.
        accountant: ``rdp`` (default) or ``prv`` (tighter, slower).
        label_cap: L; records with more than L labels are down-weighted to L labels' worth (None: L = 1,
            weights 1/sqrt(#labels)). Sensitivity sqrt(2 L).
        min_cohort: m, the fewest honest sites whose noise enters any decoded sum (distributed mode).
        secure_aggregation: whether uploads are masked so the coordinator sees only sums.

    Raises:
        UnsafeConfiguration: any invariant above fails (the message names the field, value and fix).
        ValueError: an unknown mode or accountant string.
    """

    mode: DPMode = DPMode.LOCAL
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    epsilon_max: float = 8.0
    accountant: AccountantKind = AccountantKind.RDP
    label_cap: int | None = None
    min_cohort: int = 1
    secure_aggregation: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", DPMode(self.mode))
        object.__setattr__(self, "accountant", AccountantKind(self.accountant))
        try:
            l2_sensitivity(label_cap=self.label_cap)  # validates label_cap
        except UnsafeConfiguration as exc:
            raise UnsafeSetting("label_cap", str(exc)) from None
        if not 0.0 < self.delta < 1.0:
            raise UnsafeSetting("delta", f"delta={self.delta!r} must be in (0, 1); use well below 1/n_records")
        if not (math.isfinite(self.epsilon_max) and self.epsilon_max > 0.0):
            raise UnsafeSetting("epsilon_max", f"epsilon_max={self.epsilon_max!r} must be > 0 and finite")
        if self.mode is not DPMode.OFF and not (math.isfinite(self.noise_multiplier)
                                                and self.noise_multiplier > 0.0):
            raise UnsafeSetting("noise_multiplier", f"noise_multiplier={self.noise_multiplier!r} must be > 0 when "
                                f"mode is {self.mode.value!r}; set a positive sigma or mode \"off\"")
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, int) or self.min_cohort < 1:
            raise UnsafeSetting("min_cohort", f"min_cohort={self.min_cohort!r} must be an integer >= 1")
        if self.mode is DPMode.DISTRIBUTED and not self.secure_aggregation:
            raise UnsafeSetting("mode", "mode 'distributed' needs secure aggregation (each upload carries "
                                f"only 1/{self.min_cohort} of the noise variance); enable it or use mode 'local'")

    @property
    def enabled(self) -> bool:
        return self.mode is not DPMode.OFF

    @property
    def noise_mode(self) -> NoiseMode | None:
        """The :class:`NoiseMode` to pass to ``add_gaussian_noise``, or None when DP is off."""
        return None if self.mode is DPMode.OFF else NoiseMode(self.mode.value)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one site's ``[sums, counts]`` under this ``label_cap``."""
        return l2_sensitivity(label_cap=self.label_cap)

    def check_records(self, n_records: int) -> None:
        """Refuse a delta that is not below 1/n_records (such a delta allows leaking a whole record).

        Raises:
            UnsafeConfiguration: n_records < 1, or delta >= 1/n_records.
        """
        if isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1:
            raise UnsafeConfiguration(f"n_records {n_records!r} must be an integer >= 1")
        if self.enabled and self.delta * n_records >= 1.0:
            raise UnsafeConfiguration(f"dp.delta {self.delta:g} >= 1/n_records = {1.0 / n_records:g} "
                                      f"(n_records={n_records}); set delta below {0.1 / n_records:.1g}")
