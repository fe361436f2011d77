"""Misbehaving sites: a message refused at the door costs its sender the round and excludes it for a while.

A site whose advertisement or survivor signature fails its check, or that sends ``max_invalid_messages``
rejected messages in one round, is refused for the rest of the round and left out of the next
``exclude_rounds`` rounds: logged, counted (``pfmh_site_exclusions_total``) and written to the round log,
so exclusions survive a restart. Late, duplicate or aborted-round messages are an innocent slow site's,
and cost nothing.
"""
from __future__ import annotations

import logging
import threading

from coordinator.metrics import CoordinatorMetrics
from coordinator.round_run import RoundRun
from security.errors import RoundAborted, StageOutOfOrder

logger = logging.getLogger(__name__)


class Misbehaviour:
    """Mixin of ``RoundEngine``: the exclusion policy (state and lock are the engine's)."""

    cond: threading.Condition
    current: RoundRun | None
    sites: tuple[str, ...]
    metrics: CoordinatorMetrics
    exclude_rounds: int
    max_invalid_messages: int
    excluded: dict[str, int]

    def _exclude(self, run: RoundRun, site: str, reason: str) -> None:
        """Refuse ``site`` for the rest of ``run`` and leave it out of the next ``exclude_rounds`` rounds."""
        run.refused.add(site)
        if self.exclude_rounds <= 0 or site in run.exclusions:
            return
        until = run.number + self.exclude_rounds
        self.excluded[site] = max(self.excluded.get(site, 0), until)
        run.exclusions[site] = {"until_round": until, "reason": reason[:200]}
        self.metrics.exclusions.labels(self.metrics.site(site), _offence_label(reason)).inc()
        logger.warning("round %d: site %s is excluded from rounds %d-%d: %s", run.number, site, run.number + 1,
                       until, reason)
        self.cond.notify_all()

    def _refuse(self, run: RoundRun, site: str, kind: str, what: str, exc: BaseException) -> None:
        """A message failed its signature or replay check at the door: name the sender, count it, exclude it."""
        logger.warning("round %d: refused the %s of site %s: %s", run.number, what, site, exc)
        self.metrics.refused.labels(self.metrics.site(site), kind).inc()
        self._exclude(run, site, f"refused {what} in round {run.number}: {exc}"[:200])

    def note_invalid(self, site: str, kind: str, error: BaseException) -> None:
        """A message of ``site`` was rejected as invalid; repeated ones exclude it (called by the interceptor)."""
        if (self.exclude_rounds <= 0 or isinstance(error, StageOutOfOrder | RoundAborted) or site not in self.sites
                or "duplicate" in str(error)):
            return  # late, aborted or a retried delivery: an innocent slow site, not a misbehaving one
        with self.cond:
            run = self.current
            if run is None or site not in run.cohort:
                return
            run.invalid[site] = run.invalid.get(site, 0) + 1
            if run.invalid[site] >= self.max_invalid_messages:
                self._exclude(run, site, f"{run.invalid[site]} invalid messages in round {run.number} "
                                         f"(last: {kind}: {str(error)[:120]})")

    def _misbehaviour(self, run: RoundRun) -> dict:
        """Round-log fields: sites refused in this round, excluded from later ones, and left out of it."""
        out: dict = {}
        if run.refused:
            out["refused"] = sorted(run.refused)
        if run.exclusions:
            out["excluded"] = dict(sorted(run.exclusions.items()))
        if run.left_out:
            out["left_out_excluded"] = list(run.left_out)
        return out


def _offence_label(reason: str) -> str:
    """A bounded metric label for why a site was excluded."""
    for key, label in (("advertisement", "advertisement"), ("survivor signature", "survivor_signature"),
                       ("invalid messages", "invalid_messages")):
        if key in reason:
            return label
    return "other"
