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

from federation.plan import PrivacySettings
from security.accountant import OpacusAccountant
from security.dp_budget import BudgetGuard
from security.dp_cohort import sum_noise_multiplier
from security.dp_noise import NoiseMode, add_gaussian_noise, secure_generator
from security.dp_sensitivity import clipped_class_statistics
from security.errors import SecurityError
from security.ledger import Ledger
from security.signing import SigningKey

logger = logging.getLogger(__name__)
PROTOTYPE_MECHANISM = "gaussian_prototype_statistics"
DP_SGD_MECHANISM = "dp_sgd_shared_model"
ENCODER_MECHANISM = "dp_sgd_statistics_encoder"
SUM_RECORD = "dp_sum"  # after a completed round: the noise the decoded sum really carried
COVERED = {
    PROTOTYPE_MECHANISM: "per-class prototype sums and counts of this site (each record's contribution "
                         "scaled to a fixed L2 sensitivity given the encoder, Gaussian noise before masking)",
    DP_SGD_MECHANISM: "the shared model's update (per-record gradient clipping and noise by Opacus DP-SGD)",
    ENCODER_MECHANISM: "the encoder that computes the released statistics (per-record gradient clipping and "
                       "noise by Opacus DP-SGD, Poisson batches from the OS CSPRNG)",
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
        encoder_chain: which model computes the released statistics (written into every ledger entry).
    """

    def __init__(self, policy: PrivacySettings, *, epsilon_max: float, ledger_path: Path, signing_key: SigningKey,
                 site: str, encoder_chain: str = "") -> None:
        self.policy = policy
        self.enabled = policy.mode != "off"
        self.mode = NoiseMode(policy.mode) if self.enabled else None
        self.encoder_chain = encoder_chain
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

    def prototype_vector(self, codes: np.ndarray, labels: np.ndarray, *, noise_cohort: int = 1) -> np.ndarray:
        """[sums (C*b), counts (C)] of this site, each record scaled to the stated sensitivity, plus noise.

        Args:
            codes: continuous codes of the statistics encoder (DP-SGD-trained or frozen: the bound holds only
                given an encoder that is itself DP or data-independent; docs/PRIVACY.md).
            labels: the records' labels.
            noise_cohort: distributed mode's m, the fewest honest shares in any decodable sum
                (``security.dp_cohort.noise_cohort``); ignored in local mode.

        Shape:
            codes (n, b); labels (n, C); output (C*b + C,) float64.
        """
        if self.mode is None:
            raise SecurityError("prototype_vector needs DP on (mode local or distributed)")
        sums, counts, sensitivity = clipped_class_statistics(codes, labels, label_cap=self.label_cap)
        return add_gaussian_noise(np.concatenate([sums.ravel(), counts]), sigma=self.policy.noise_multiplier,
                                  sensitivity=sensitivity, mode=self.mode, min_cohort=noise_cohort,
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

    def record(self, releases: list[Release], round_number: int, *, what_without_dp: str = "",
               noise_cohort: int = 1) -> float:
        """Spend and append one signed ledger entry per release (call before the upload leaves)."""
        for r in releases:
            epsilon = self.guard.spend(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate,
                                       steps=r.steps, round_number=round_number)
            self.ledger.append({
                "kind": "dp_release", "round": round_number, "mechanism": r.mechanism,
                "mode": self.policy.mode, "noise_multiplier": r.noise_multiplier, "sensitivity": r.sensitivity,
                "sample_rate": r.sample_rate, "steps": r.steps, "delta": self.policy.delta, "epsilon": epsilon,
                "epsilon_max": self.guard.budget.epsilon_max, "accountant": self.policy.accountant,
                "covered": COVERED[r.mechanism], "encoder_chain": self.encoder_chain,
                **({"noise_cohort": noise_cohort, "colluding_sites": self.policy.colluding_sites}
                   if r.mechanism == PROTOTYPE_MECHANISM and self.mode is NoiseMode.DISTRIBUTED else {}),
                "not_covered": what_without_dp or "nothing else leaves the site in this round"})
        if what_without_dp and not releases and not self.enabled:
            self.ledger.append({"kind": "upload_without_dp", "round": round_number, "what": what_without_dp})
        return self.spent

    def record_sum(self, round_number: int, *, contributors: int, noise_cohort: int) -> None:
        """After a completed round: the noise multiplier the decoded sum carried for its real cohort.

        The accountant charged ``noise_multiplier`` (the guarantee for the smallest decodable cohort);
        a larger surviving cohort carries more honest noise, ``sigma * sqrt((k - c) / m)``.
        """
        if self.mode is not NoiseMode.DISTRIBUTED:
            return
        c = self.policy.colluding_sites
        self.ledger.append({"kind": SUM_RECORD, "round": round_number, "contributors": contributors,
                            "noise_cohort": noise_cohort, "colluding_sites": c,
                            "sum_noise_multiplier": sum_noise_multiplier(
                                sigma=self.policy.noise_multiplier, contributors=contributors,
                                cohort=noise_cohort, colluding_sites=c)})

    @property
    def spent(self) -> float:
        return self.guard.spent if len(self.accountant.history) else 0.0

    @property
    def epsilon_max(self) -> float:
        return self.guard.budget.epsilon_max

    def close(self) -> None:
        self.ledger.close()
