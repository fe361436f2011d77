"""The coordinator's round engine: cohort selection, phase deadlines, secure aggregation, aggregation.

One driver thread walks each round through its phases (``RoundPhase``); gRPC handler threads hand
in messages (``submit_*``) and long-poll for the next phase's output (``await_*``). Advertisements and
survivor signatures are verified against the sender's certificate-bound key before they are relayed; a
refused one costs its sender the round (the others do not wait for it), and a site refused at the door,
or with ``max_invalid_messages`` rejected messages in one round, is excluded from the next
``exclude_rounds`` rounds (logged, counted, and written to the round log). All shared
state sits behind one ``threading.Condition``. A phase closes when every expected site has
submitted or its deadline passes; sites that sent nothing count as dropped. Below the
threshold the round aborts (``RoundAborted``), nothing is revealed, and the next round starts.

All arithmetic and crypto live elsewhere: ``security.secagg_server`` unmasks the sum;
``pfmh_model.aggregation`` turns it into global prototypes and the FedAvg model.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from coordinator.metrics import CoordinatorMetrics
from coordinator.persistence import CoordinatorState, StateStore, atomic_write
from coordinator.round_run import Poll, RoundPhase, RoundRun
from federation.plan import FederationSettings
from federation.secagg import secagg_config
from pfmh_model.aggregation import GlobalState, SiteUpload, UploadLayout
from pfmh_model.errors import ModelError
from pfmh_model.server_step import aggregator
from security.consistency import SurvivorSignature
from security.dp_config import DPMode
from security.errors import InvalidMessage, RoundAborted, SecurityError, StageOutOfOrder
from security.pki_verify import load_certificate, site_signing_public_key
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from security.secagg_server import SecAggServer
from security.signing import VerifyKey

logger = logging.getLogger(__name__)
# Set to "1" only in test and soak runs: completed rounds' decoded sums go to <state_dir>/aggregates/.
RECORD_AGGREGATES_ENV = "PFMH_TEST_RECORD_AGGREGATES"


class RoundEngine:
    """Runs rounds until ``settings.rounds`` have completed.

    Args:
        settings: the federation settings (also sent to sites).
        sites: enrolled site ids.
        layout: the upload vector layout of this federation.
        store: crash-safe state; a restarted engine resumes after the last completed round.
        metrics: Prometheus collector.
        liveness_s: a site counts as live if it called within this many seconds.
        gather_s: once ``min_sites`` are live, wait at most this long for the other enrolled sites.
        exclude_rounds: rounds a misbehaving site is left out of (0: never exclude).
        max_invalid_messages: rejected messages in one round after which a site is excluded.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, settings: FederationSettings, *, sites: tuple[str, ...], layout: UploadLayout,
                 store: StateStore, metrics: CoordinatorMetrics, liveness_s: float = 30.0, gather_s: float = 3.0,
                 exclude_rounds: int = 3, max_invalid_messages: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.sites = sites
        self.layout = layout
        self.secagg_config = secagg_config(settings, vector_length=layout.length)  # once, for every round
        self.store = store
        self.metrics = metrics
        self.liveness_s = liveness_s
        self.gather_s = gather_s
        self.clock = clock
        self.cond = threading.Condition()
        self.state: CoordinatorState = store.load()
        self.runs: dict[int, RoundRun] = {}
        self.current: RoundRun | None = None
        self.last_seen: dict[str, float] = {}
        self.departed: dict[str, str] = {}
        self.exclude_rounds = exclude_rounds
        self.max_invalid_messages = max_invalid_messages
        self.excluded: dict[str, int] = {}  # site -> last round number it is left out of
        for entry in self.state.history:  # exclusions survive a restart (they are in the round log)
            for site, info in entry.get("excluded", {}).items():
                self.excluded[site] = max(self.excluded.get(site, 0), int(info["until_round"]))
        self.stopping = False
        metrics.completed_rounds.set(self.state.completed_rounds)
        metrics.current_round.set(self.state.last_round_started)
        if self.state.completed_rounds:
            logger.info("resuming after round %d (%d rounds completed)", self.state.last_round_started,
                        self.state.completed_rounds)

    # ------------------------------------------------------------------ state helpers
    @property
    def finished(self) -> bool:
        return self.state.completed_rounds >= self.settings.rounds or bool(self.stalled)

    @property
    def stalled(self) -> str:
        """Why no further round can run (too few sites remain), or ''."""
        remaining = len(set(self.sites) - set(self.departed))
        if remaining >= self.settings.min_sites:
            return ""
        left = ", ".join(f"{s} ({why})" for s, why in sorted(self.departed.items()))
        return f"only {remaining} sites remain < min_sites {self.settings.min_sites}; left: {left}"

    def leave(self, site: str, reason: str) -> None:
        """``site`` stops taking part: it drops out of the current round at once and is no longer live."""
        reason = reason[:200]  # site-supplied: bounded, and logged with repr (no forged log lines)
        with self.cond:
            self.departed[site] = reason
            self.last_seen.pop(site, None)
            self.cond.notify_all()
        if self.state.completed_rounds >= self.settings.rounds:  # the normal end: sites leave after the last round
            logger.info("site %s left after the last round: %r", site, reason)
            return
        logger.warning("site %s left the federation: %r", site, reason)
        if self.stalled:
            logger.error("federation cannot continue: %s", self.stalled)

    def global_state(self) -> GlobalState:
        return GlobalState(self.state.completed_rounds, self.state.prototypes, self.state.shared_model)

    def live_sites(self) -> list[str]:
        now, upcoming = self.clock(), self.state.last_round_started + 1
        return sorted(s for s, t in self.last_seen.items() if now - t <= self.liveness_s and s not in self.departed
                      and self.excluded.get(s, 0) < upcoming)

    # ------------------------------------------------------------------ misbehaviour
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

    def _refuse_if_excluded(self, run: RoundRun, site: str) -> None:
        if site in run.refused:
            raise InvalidMessage(f"site {site!r} was refused earlier in round {run.number}; it takes no "
                                 f"further part in this round")

    @staticmethod
    def _verify_key(certificate_pem: bytes) -> VerifyKey:
        return VerifyKey(site_signing_public_key(load_certificate(certificate_pem)))

    def touch(self, site: str) -> None:
        with self.cond:
            self.departed.pop(site, None)  # a site that joins again is back
            self.last_seen[site] = self.clock()
            self.cond.notify_all()

    def _run(self, round_number: int, phase: RoundPhase) -> RoundRun:
        run = self.runs.get(round_number)
        if run is None:
            # FAILED_PRECONDITION, like a closed phase: a late site loses the round, not its place
            raise StageOutOfOrder(f"round {round_number} is not in progress (current round: "
                                 f"{self.current.number if self.current else 'none'})")
        if run.phase is not phase:
            raise StageOutOfOrder(f"round {round_number} is in phase {run.phase}, not {phase}")
        return run

    def _await(self, site: str, round_number: int, phase: RoundPhase, timeout_s: float) -> RoundRun | None:
        """Wait until round ``round_number`` has moved past ``phase``; None if it is unknown."""
        deadline = self.clock() + timeout_s
        with self.cond:
            self.last_seen[site] = self.clock()
            while True:
                run = self.runs.get(round_number)
                if run is None or run.reached(phase) or self.stopping:
                    return run
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return run
                self.cond.wait(remaining)

    # ------------------------------------------------------------------ participant-facing
    def await_round(self, site: str, after_round: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        """Long-poll for a round that includes ``site`` and is numbered after ``after_round``."""
        deadline = self.clock() + timeout_s
        with self.cond:
            while True:
                self.last_seen[site] = self.clock()  # the driver polls liveness; no notify (waiters would spin)
                run = self.current
                if (run is not None and run.number > after_round and site in run.cohort
                        and run.phase is RoundPhase.ADVERTISE):
                    return Poll.READY, run
                if self.finished:
                    return Poll.FINISHED, None
                remaining = deadline - self.clock()
                if remaining <= 0 or self.stopping:
                    return Poll.PENDING, None
                self.cond.wait(min(remaining, 1.0))

    def submit_advertisement(self, site: str, message: AdvertiseKeys, certificate_pem: bytes) -> None:
        """Verify the signature against ``site``'s certificate-bound key, then accept it for relay.

        A forged or replayed advertisement is refused (SignatureInvalid, or InvalidMessage for a reused
        key); its sender is out of this round, which goes on without waiting for it, and is excluded.
        """
        key = self._verify_key(certificate_pem)
        with self.cond:
            run = self._run(message.round, RoundPhase.ADVERTISE)
            self._refuse_if_excluded(run, site)
            try:
                run.server.receive_advertisement(site, message, verify_key=key)
            except SecurityError as exc:
                if not isinstance(exc, StageOutOfOrder) and "duplicate" not in str(exc):
                    self._refuse(run, site, "AdvertiseKeys", "advertisement", exc)
                raise
            run.certificates[site] = certificate_pem
            run.submitted.add(site)
            self.cond.notify_all()

    def await_directory(self, site: str, round_number: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        return self._poll(self._await(site, round_number, RoundPhase.ADVERTISE, timeout_s), RoundPhase.ADVERTISE)

    def submit_shares(self, site: str, round_number: int, shares: list[EncryptedShare]) -> None:
        with self.cond:
            run = self._run(round_number, RoundPhase.SHARE_KEYS)
            run.server.receive_shares(site, shares)
            run.submitted.add(site)
            self.cond.notify_all()

    def await_inbox(self, site: str, round_number: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        return self._poll(self._await(site, round_number, RoundPhase.SHARE_KEYS, timeout_s), RoundPhase.SHARE_KEYS)

    def unmask_request_for(self, site: str, run: RoundRun) -> UnmaskRequest | None:
        """The survivors and dropouts announced to ``site`` (the same for every site; tests of a lying
        coordinator replace this method)."""
        return run.unmask_request

    def submit_survivor_signature(self, site: str, message: SurvivorSignature) -> None:
        """Phase 5a: verify ``site``'s signature on the view it was told before relaying it."""
        with self.cond:
            run = self._run(message.round, RoundPhase.CONSISTENCY)
            self._refuse_if_excluded(run, site)
            certificate = run.certificates.get(site)
            key = self._verify_key(certificate) if certificate else None
            try:
                run.server.receive_survivor_signature(site, message, verify_key=key,
                                                      request=self.unmask_request_for(site, run))
            except SecurityError as exc:
                if not isinstance(exc, StageOutOfOrder) and "duplicate" not in str(exc):
                    self._refuse(run, site, "SubmitSurvivorSignature", "survivor signature", exc)
                raise
            run.submitted.add(site)
            self.cond.notify_all()

    def await_signatures(self, site: str, round_number: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        return self._poll(self._await(site, round_number, RoundPhase.CONSISTENCY, timeout_s),
                          RoundPhase.CONSISTENCY)

    def submit_masked_input(self, site: str, message: MaskedInput) -> None:
        with self.cond:
            run = self._run(message.round, RoundPhase.MASKED_INPUT)
            run.server.receive_masked_input(site, message)
            run.submitted.add(site)
            run.masked_inputs.add(site)
            self.cond.notify_all()

    def await_unmask_request(self, site: str, round_number: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        run = self._await(site, round_number, RoundPhase.MASKED_INPUT, timeout_s)
        return self._poll(run, RoundPhase.MASKED_INPUT)

    def submit_unmask(self, site: str, message: UnmaskResponse) -> None:
        with self.cond:
            run = self._run(message.round, RoundPhase.UNMASK)
            run.server.receive_unmask_response(site, message)
            run.submitted.add(site)
            self.cond.notify_all()

    def await_result(self, site: str, round_number: int, timeout_s: float) -> tuple[Poll, RoundRun | None]:
        return self._poll(self._await(site, round_number, RoundPhase.UNMASK, timeout_s), RoundPhase.UNMASK)

    def _poll(self, run: RoundRun | None, phase: RoundPhase) -> tuple[Poll, RoundRun | None]:
        if run is None:
            return Poll.ABORTED, None
        if run.phase is RoundPhase.ABORTED:
            return Poll.ABORTED, run
        return (Poll.READY if run.reached(phase) else Poll.PENDING), run

    # ------------------------------------------------------------------ driver
    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def run_forever(self) -> None:
        """Drive rounds until finished or ``stop()``; meant for a dedicated thread."""
        while True:
            with self.cond:
                if self.stopping or self.finished:
                    return
            cohort = self._gather()
            if cohort:
                self._run_round(cohort)

    def _gather(self) -> tuple[str, ...] | None:
        """Wait for ``min_sites`` live sites, then up to ``gather_s`` more for the rest of the enrolled ones."""
        with self.cond:
            first_ready: float | None = None
            while not self.stopping:
                live = self.live_sites()
                self.metrics.live_sites.set(len(live))
                if len(live) >= self.settings.min_sites:
                    first_ready = first_ready or self.clock()
                    upcoming = self.state.last_round_started + 1
                    allowed = sum(1 for site in self.sites if self.excluded.get(site, 0) < upcoming)
                    if len(live) == allowed or self.clock() - first_ready >= self.gather_s:
                        return tuple(live)
                else:
                    first_ready = None
                self.cond.wait(0.2)
        return None

    def _wait_phase(self, run: RoundRun, expected: set[str], timeout_s: float) -> None:
        deadline = self.clock() + timeout_s
        with self.cond:
            while not self.stopping and not (expected - set(self.departed) - run.refused) <= run.submitted:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                self.cond.wait(min(remaining, 0.5))
            if self.stopping:
                raise RoundAborted("coordinator is shutting down")

    def _advance(self, run: RoundRun, phase: RoundPhase, expected: set[str]) -> None:
        """Close the current phase (dropouts = expected sites that sent nothing) and open ``phase``."""
        now = self.clock()
        self.metrics.phase_seconds.labels(run.phase.value).observe(now - run.phase_started)
        for site in sorted(expected - run.submitted):
            self.metrics.dropouts.labels(self.metrics.site(site), run.phase.value).inc()
            logger.warning("round %d: %s dropped out in %s", run.number, site, run.phase)
        run.phase, run.phase_started = phase, now
        run.submitted = set()
        self.cond.notify_all()

    def _start(self, cohort: tuple[str, ...]) -> RoundRun:
        with self.cond:
            self.state.last_round_started += 1
            number = self.state.last_round_started
            self.state.open_round = {"round": number, "cohort": list(cohort)}
            self.store.save_round_started(self.state)  # write-ahead: round numbers are never reused
            run = RoundRun(number, cohort, SecAggServer(self.secagg_config, cohort, round_number=number),
                           self.global_state(),
                           started=self.clock(), phase_started=self.clock())
            run.left_out = tuple(sorted(s for s, last in self.excluded.items() if last >= number))
            if run.left_out:
                logger.warning("round %d leaves out excluded site(s) %s", number, ", ".join(run.left_out))
            self.runs[number] = run
            for old in [n for n in self.runs if n < number - 2]:
                del self.runs[old]
            self.current = run
            self.metrics.rounds_started.inc()
            self.metrics.current_round.set(number)
            self.metrics.cohort_size.set(len(cohort))
            self.cond.notify_all()
        logger.info("round %d started with cohort %s", number, ", ".join(cohort))
        return run

    def _run_round(self, cohort: tuple[str, ...]) -> None:
        try:
            run = self._start(cohort)
        except SecurityError as exc:  # e.g. an unsafe threshold for this cohort size
            logger.error("cannot start a round with %d sites: %s", len(cohort), exc)
            with self.cond:
                self.cond.wait(self.gather_s)
            return
        s = self.settings
        try:
            self._wait_phase(run, set(cohort), s.train_timeout_s)
            with self.cond:
                run.directory = run.server.close_advertisements()
                # O(k) advertisements per site instead of O(n) (SecAgg+); the full list for a full graph
                run.directories = {a.site_id: run.server.directory_for(a.site_id)
                                   for a in run.directory.advertisements}
                self._advance(run, RoundPhase.SHARE_KEYS, set(cohort))
            advertised = {a.site_id for a in run.directory.advertisements}
            self._wait_phase(run, advertised, s.phase_timeout_s)
            with self.cond:
                run.inbox = run.server.close_shares()
                self._advance(run, RoundPhase.MASKED_INPUT, advertised)
            shared = set(run.inbox)
            self._wait_phase(run, shared, s.phase_timeout_s)
            with self.cond:
                run.unmask_request = run.server.close_masked_inputs()
                self._advance(run, RoundPhase.CONSISTENCY if s.secagg.consistency_check else RoundPhase.UNMASK,
                              shared)
            survivors = set(run.unmask_request.survivors)
            if s.secagg.consistency_check:
                self._wait_phase(run, survivors, s.phase_timeout_s)
                with self.cond:
                    run.signatures = run.server.close_consistency()
                    self._advance(run, RoundPhase.UNMASK, survivors)
                survivors = set(run.signatures)
            self._wait_phase(run, survivors, s.phase_timeout_s)
            with self.cond:
                aggregate = run.server.finish()
                self._complete(run, aggregate.total, aggregate.survivors, survivors)
        except RoundAborted as exc:
            self._abort(run, exc.reason)

    def _complete(self, run: RoundRun, total, survivors: tuple[str, ...], expected: set[str]) -> None:
        summed = SiteUpload.from_vector(total, self.layout)
        train = self.settings.train
        try:
            new = aggregator(self.settings.method)(summed, run.start_state, bits=train.bits, seed=train.seed)
        except ModelError as exc:  # e.g. a FedAvg weight total <= 0 sent by a faulty site: abort, keep driving
            raise RoundAborted(f"the unmasked sum is not a valid aggregate: {exc}") from exc
        if os.environ.get(RECORD_AGGREGATES_ENV) == "1":
            self._record_aggregate(run.number, total)
        self.state.completed_rounds += 1
        self.state.prototypes, self.state.shared_model = new.prototypes, new.shared_model
        seconds = self.clock() - run.started
        self.state.history.append({"round": run.number, "outcome": "completed", "survivors": list(survivors),
                                   "cohort": list(run.cohort), "seconds": round(seconds, 3),
                                   "inputs": list(survivors), "dp": self._dp_expected(),  # the round log
                                   **self._misbehaviour(run)})
        self.state.open_round = None
        self.store.save_round_outcome(self.state, completed=True)  # before anyone can see the result
        run.result = GlobalState(self.state.completed_rounds, new.prototypes, new.shared_model)
        run.survivors = survivors
        self._advance(run, RoundPhase.DONE, expected)
        self.metrics.rounds_completed.inc()
        self.metrics.completed_rounds.set(self.state.completed_rounds)
        self.metrics.round_seconds.observe(seconds)
        self.metrics.upload_bytes.set(self.layout.length * 8)
        logger.info("round %d completed (%d/%d) with %d survivors in %.1fs", run.number,
                    self.state.completed_rounds, self.settings.rounds, len(survivors), seconds)

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

    def _record_aggregate(self, number: int, total: np.ndarray) -> None:
        """Test hook (``PFMH_TEST_RECORD_AGGREGATES=1``): keep the decoded sum as ``aggregates/round-N.npy``.

        Security: the sum is exactly what the coordinator learns by design; no site's own input is kept.
        Written before the round is committed, so every completed round has its file (see docs/SOAK.md).
        """
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(total, dtype=np.float64), allow_pickle=False)
        atomic_write(self.store.dir / "aggregates" / f"round-{number}.npy", buffer.getvalue())

    def _dp_expected(self) -> bool:
        """Whether every site's input must carry a DP release (the audit's cross-check, ``dp`` in the round log)."""
        s = self.settings
        return s.privacy.mode is not DPMode.OFF and (s.uses_prototypes or s.uses_dp_sgd)

    def _abort(self, run: RoundRun, reason: str) -> None:
        with self.cond:
            run.abort_reason = reason
            self.metrics.phase_seconds.labels(run.phase.value).observe(self.clock() - run.phase_started)
            run.phase = RoundPhase.ABORTED
            self.state.history.append({"round": run.number, "outcome": "aborted", "reason": reason,
                                       "cohort": list(run.cohort), "inputs_received": sorted(run.masked_inputs),
                                       "dp": self._dp_expected(), **self._misbehaviour(run)})
            self.state.open_round = None
            self.store.save_round_outcome(self.state, completed=False)
            self.metrics.rounds_aborted.labels(_reason_label(reason)).inc()
            self.cond.notify_all()
        logger.warning("round %d aborted: %s (nothing revealed)", run.number, reason)


def _offence_label(reason: str) -> str:
    """A bounded metric label for why a site was excluded."""
    for key, label in (("advertisement", "advertisement"), ("survivor signature", "survivor_signature"),
                       ("invalid messages", "invalid_messages")):
        if key in reason:
            return label
    return "other"


def _reason_label(reason: str) -> str:
    """A bounded metric label for an abort reason."""
    for key in ("threshold", "shutting down", "reconstruct", "match"):
        if key in reason:
            return key.replace(" ", "_")
    return "other"
