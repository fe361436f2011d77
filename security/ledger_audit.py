"""The ledger's record schema and the checks on it: epsilon recomputed, and the releases cross-checked
against the coordinator's round log (numpy/cryptography only; both daemons use it, neither imports the other).

Records (``LedgerEntry.record``) are the types of ``security.ledger_records``, written by
``participant.privacy.SitePrivacy``: ``dp_release`` (:class:`DpRelease`, one per DP mechanism of an upload),
``upload_without_dp`` (:class:`UploadWithoutDp`) and, in distributed mode after a completed round, ``dp_sum``
(:class:`DpSum`: the noise the decoded sum carried; informative, it charges nothing). :func:`check_releases`
reads them back (``read_record`` checks each schema) and checks that each recorded epsilon follows from the
recorded history; :func:`cross_check` compares them with :class:`RoundWitness` records, the coordinator's
own account of whose masked input entered which round's revealed sum.

Security:
    The cross-check closes what signatures cannot: a site that cut its ledger's tail (or never wrote an entry)
    holds a valid, shorter chain, but the round log still says its input entered those rounds' sums. A
    release recorded for a round where the site was in the cohort but its input never reached a revealed sum
    (aborted round, dropped before upload) is kept as charged: the site records before it uploads, so the
    charge errs towards privacy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from security.accountant import epsilon_for
from security.errors import UnsafeConfiguration
from security.ledger import LedgerEntry
from security.ledger_records import DpRelease, DpSum, MalformedRecord, UploadWithoutDp, read_record

REL_TOL = 1e-9
DP_RELEASE, NO_DP, DP_SUM = DpRelease.KIND, UploadWithoutDp.KIND, DpSum.KIND
COMPLETED, ABORTED, INTERRUPTED = "completed", "aborted", "interrupted"


class AuditFailed(Exception):
    """A site's ledger failed the audit; the message names site, reason, seq and round, and the fix."""

    def __init__(self, site: str, reason: str, detail: str, *, seq: int | None = None,
                 round_number: int | None = None) -> None:
        where = "".join([f" at seq {seq}" if seq is not None else "",
                         f" (round {round_number})" if round_number is not None else ""])
        super().__init__(f"site {site!r}: {reason}{where}: {detail}")
        self.site, self.reason, self.seq, self.round_number = site, reason, seq, round_number


@dataclass(frozen=True, slots=True)
class Release:
    """One verified ledger entry: a DP release or an upload without DP, with where it sits in the ledger."""

    seq: int
    time: str
    entry: DpRelease | UploadWithoutDp
    epsilon_recomputed: float | None = None

    @property
    def round(self) -> int:
        return self.entry.round

    @property
    def kind(self) -> str:
        return self.entry.KIND

    @property
    def record(self) -> dict[str, Any]:
        """The record as the ledger holds it (``kind`` and every field)."""
        return self.entry.to_record()

    def get(self, key: str) -> Any:
        """A field of the record by name (None where the record has no such field)."""
        return self.record.get(key)

    @property
    def budget_left(self) -> float | None:
        """``epsilon_max - epsilon`` after this release, never below 0 (None for an upload without DP)."""
        return self.entry.budget_left if isinstance(self.entry, DpRelease) else None


def last_release(releases: Sequence[Release]) -> Release | None:
    """The latest ``dp_release`` (it carries the whole history's epsilon), or None."""
    return next((r for r in reversed(releases) if r.kind == DP_RELEASE), None)


def check_releases(entries: Sequence[LedgerEntry], *, site: str) -> tuple[Release, ...]:
    """Check every record's schema and recompute each DP release's epsilon from the recorded history.

    Args:
        entries: the site's verified ledger entries, oldest first.
        site: the site id, for messages.

    Raises:
        AuditFailed: ``malformed_record``, ``round_order``, ``epsilon_mismatch`` or ``budget_exceeded``.
    """
    history: list[tuple[float, float, int]] = []
    out: list[Release] = []
    last_round = -1
    for e in entries:
        try:
            rec = read_record(e.record)
        except MalformedRecord as exc:
            raw = e.record.get("round")
            raise AuditFailed(site, "malformed_record", f"{exc}; the ledger is not from a compatible "
                              "pfmh-participant", seq=e.seq,
                              round_number=raw if isinstance(raw, int) else None) from exc
        if rec.round < last_round:
            raise AuditFailed(site, "round_order", f"round {rec.round} recorded after round {last_round}",
                              seq=e.seq, round_number=rec.round)
        last_round = rec.round
        if isinstance(rec, DpSum):  # checked, not charged: the releases of the round were charged already
            continue
        if isinstance(rec, UploadWithoutDp):
            out.append(Release(e.seq, e.time, rec))
            continue
        history.append((rec.noise_multiplier, rec.sample_rate, rec.steps))
        try:
            recomputed = epsilon_for(history, rec.delta, rec.accountant)
        except UnsafeConfiguration as exc:
            raise AuditFailed(site, "malformed_record", str(exc), seq=e.seq, round_number=rec.round) from exc
        if not math.isclose(rec.epsilon, recomputed, rel_tol=REL_TOL, abs_tol=0.0):
            raise AuditFailed(site, "epsilon_mismatch", f"recorded epsilon {rec.epsilon!r} but the {len(history)} "
                              f"recorded releases give {recomputed!r} ({rec.accountant}, delta "
                              f"{rec.delta:g}); the ledger understates or misstates the spent budget",
                              seq=e.seq, round_number=rec.round)
        if rec.epsilon > rec.epsilon_max * (1 + REL_TOL):
            raise AuditFailed(site, "budget_exceeded", f"epsilon {rec.epsilon:.6g} > epsilon_max "
                              f"{rec.epsilon_max:.6g}; the site released past its budget",
                              seq=e.seq, round_number=rec.round)
        out.append(Release(e.seq, e.time, rec, recomputed))
    return tuple(out)


def round_summary(releases: Sequence[Release]) -> list[dict[str, Any]]:
    """Per round of ``releases``: its mechanisms, epsilon and budget left after it, and whether DP covered it."""
    rounds: dict[int, dict[str, Any]] = {}
    epsilon, left = 0.0, None
    for r in releases:
        row = rounds.setdefault(r.round, {"round": r.round, "mechanisms": [], "uploads_without_dp": []})
        if isinstance(r.entry, DpRelease):
            row["mechanisms"].append(r.entry.mechanism)
            epsilon, left = r.entry.epsilon, r.entry.budget_left
        else:
            row["uploads_without_dp"].append(r.entry.what)
        row.update(epsilon=epsilon, budget_left=left, all_dp=not row["uploads_without_dp"])
    return [rounds[k] for k in sorted(rounds)]


# ---------------------------------------------------------------------------------------------- cross-check
@dataclass(frozen=True, slots=True)
class RoundWitness:
    """The coordinator's record of one round (``coordinator.persistence``: ``rounds.json`` history).

    Attributes:
        round: the round number.
        outcome: ``completed``, ``aborted`` or ``interrupted`` (the coordinator stopped mid-round).
        cohort: the sites the round was started with.
        inputs: the sites whose masked inputs entered the revealed sum (empty unless completed).
        received: the sites whose masked inputs the coordinator received (None where not recorded).
        dp: whether every input of the round had to carry a DP release (None where not recorded).
    """

    round: int
    outcome: str
    cohort: frozenset[str]
    inputs: frozenset[str] = frozenset()
    received: frozenset[str] | None = None
    dp: bool | None = None


def cross_check(releases: Sequence[Release], witnesses: Mapping[int, RoundWitness], *,
                site: str) -> tuple[int, ...]:
    """Compare a site's checked releases with the round log; returns the rounds charged, not released.

    Fails when the site's input entered a completed round's revealed sum while DP was on but the ledger has
    no ``dp_release`` for that round (entries missing or cut off), or when the ledger claims a ``dp_release``
    for a round whose cohort did not include the site (or that the coordinator never ran).

    Raises:
        AuditFailed: ``release_missing`` or ``release_unwitnessed``, naming the site and the round.
    """
    dp_rounds = sorted({r.round for r in releases if r.kind == DP_RELEASE})
    last = max((r.round for r in releases), default=None)
    for w in sorted(witnesses.values(), key=lambda w: w.round):
        if w.outcome == COMPLETED and w.dp and site in w.inputs and w.round not in dp_rounds:
            ends = "it is empty" if last is None else f"its last entry is for round {last}"
            raise AuditFailed(site, "release_missing", f"the coordinator's round log shows this site's masked "
                              f"input in the revealed sum of round {w.round} (DP on), but its ledger has no "
                              f"dp_release for that round ({ends}); the ledger was cut or entries are missing",
                              round_number=w.round)
    for rnd in dp_rounds:
        witness = witnesses.get(rnd)
        if witness is None or site not in witness.cohort:
            why = ("the coordinator's round log has no such round" if witness is None
                   else f"the round's cohort was {', '.join(sorted(witness.cohort)) or 'empty'}")
            seq = next(r.seq for r in releases if r.round == rnd and r.kind == DP_RELEASE)
            raise AuditFailed(site, "release_unwitnessed", f"the ledger records a dp_release for a round in "
                              f"which this site was not in the cohort ({why})", seq=seq, round_number=rnd)
    return tuple(rnd for rnd in dp_rounds if site not in witnesses[rnd].inputs)
