"""A site's privacy state: DP on its prototype statistics, one accountant, the budget guard, the ledger.

The signed ledger is the source of truth: on start the accountant is rebuilt from the ledger's
``dp_release`` entries, so a crash or restart can never reset the spent budget. Every upload
appends one entry per mechanism *before* the masked input leaves the site (conservative: a
release counts even if the round later aborts).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proto.settings import PrivacySettings
from security.accountant import OpacusAccountant
from security.dp_budget import BudgetGuard
from security.dp_noise import NoiseMode, add_gaussian_noise, secure_generator
from security.dp_sensitivity import clipped_class_statistics
from security.errors import SecurityError
from security.ledger import Ledger
from security.signing import SigningKey

logger = logging.getLogger(__name__)
PROTOTYPE_MECHANISM = "gaussian_prototype_statistics"
DP_SGD_MECHANISM = "dp_sgd_shared_model"
COVERED = {
    PROTOTYPE_MECHANISM: "per-class prototype sums and counts of this site (each record's contribution "
                         "scaled to a fixed L2 sensitivity, Gaussian noise before masking)",
    DP_SGD_MECHANISM: "the shared model's update (per-record gradient clipping and noise by Opacus DP-SGD)",
}


@dataclass(frozen=True)
class Release:
    """One mechanism's release in a round, as accounted."""

    mechanism: str
    noise_multiplier: float
    sensitivity: float
    sample_rate: float
    steps: int


class SitePrivacy:
    """DP mechanism, accounting and ledger of one site.

    Args:
        policy: the federation's DP policy (from the coordinator).
        epsilon_max: this site's own budget.
        ledger_path: the site's signed ledger (created if missing).
        signing_key: the site's certified Ed25519 key.
        site: the site id.
        min_cohort: m for distributed noise (the federation's ``min_sites``).
    """

    def __init__(self, policy: PrivacySettings, *, epsilon_max: float, ledger_path: Path, signing_key: SigningKey,
                 site: str, min_cohort: int) -> None:
        self.policy = policy
        self.enabled = policy.mode != "off"
        self.mode = NoiseMode(policy.mode) if self.enabled else None
        self.min_cohort = min_cohort
        self.accountant = OpacusAccountant(policy.accountant)
        self.ledger = Ledger.open(ledger_path, signing_key=signing_key, site_id=site)
        for entry in self.ledger.entries():  # rebuild the accountant from what was really released
            rec = entry.record
            if rec.get("kind") == "dp_release":
                self.accountant.step(noise_multiplier=rec["noise_multiplier"], sample_rate=rec["sample_rate"],
                                     steps=rec["steps"])
        self.guard = BudgetGuard(self.accountant, epsilon_max=epsilon_max, delta=policy.delta)
        self.rng = secure_generator()

    @property
    def label_cap(self) -> int | None:
        return self.policy.label_cap or None

    def prototype_vector(self, codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """[sums (C*b), counts (C)] of this site, each record scaled to the stated sensitivity, plus noise.

        Shape:
            codes (n, b) continuous codes of the personal model; labels (n, C); output (C*b + C,) float64.
        """
        if self.mode is None:
            raise SecurityError("prototype_vector needs DP on (mode local or distributed)")
        sums, counts, sensitivity = clipped_class_statistics(codes, labels, label_cap=self.label_cap)
        return add_gaussian_noise(np.concatenate([sums.ravel(), counts]), sigma=self.policy.noise_multiplier,
                                  sensitivity=sensitivity, mode=self.mode, min_cohort=self.min_cohort,
                                  secure_aggregation=True, rng=self.rng)

    def check(self, releases: list[Release], round_number: int) -> float:
        """Projected epsilon after ``releases``; raises BudgetExceeded (nothing recorded) if over budget."""
        probe = BudgetGuard(self.accountant.copy(), epsilon_max=self.guard.budget.epsilon_max,
                            delta=self.policy.delta)
        epsilon = probe.spent
        for r in releases:
            epsilon = probe.spend(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate, steps=r.steps,
                                  round_number=round_number)
        return epsilon

    def record(self, releases: list[Release], round_number: int, *, what_without_dp: str = "") -> float:
        """Spend and append one signed ledger entry per release (call before the upload leaves)."""
        for r in releases:
            epsilon = self.guard.spend(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate,
                                       steps=r.steps, round_number=round_number)
            self.ledger.append({
                "kind": "dp_release", "round": round_number, "mechanism": r.mechanism,
                "mode": self.policy.mode, "noise_multiplier": r.noise_multiplier, "sensitivity": r.sensitivity,
                "sample_rate": r.sample_rate, "steps": r.steps, "delta": self.policy.delta, "epsilon": epsilon,
                "epsilon_max": self.guard.budget.epsilon_max, "accountant": self.policy.accountant,
                "covered": COVERED[r.mechanism],
                "not_covered": what_without_dp or "nothing else leaves the site in this round"})
        if what_without_dp and not releases:
            self.ledger.append({"kind": "upload_without_dp", "round": round_number, "what": what_without_dp})
        return self.spent

    @property
    def spent(self) -> float:
        return self.guard.spent if len(self.accountant.history) else 0.0

    @property
    def epsilon_max(self) -> float:
        return self.guard.budget.epsilon_max

    def close(self) -> None:
        self.ledger.close()
