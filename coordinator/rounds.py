"""The coordinator's round engine: cohort selection, phase deadlines, secure aggregation, aggregation.

One driver thread walks each round through its phases (``RoundPhase``); gRPC handler threads hand
in messages (``submit_*``) and long-poll for the next phase's output (``await_*``, both in
``coordinator.round_inbox``); a round's end is ``coordinator.round_commit``'s. Advertisements and
survivor signatures are verified against the sender's certificate-bound key before they are relayed; a
refused one costs its sender the round (the others do not wait for it), and a site refused at the door,
or with ``max_invalid_messages`` rejected messages in one round, is excluded from the next
``exclude_rounds`` rounds (``coordinator.misbehaviour``: logged, counted, written to the round log). All shared
state sits behind one ``threading.Condition``. A phase closes when every expected site has
submitted or its deadline passes; sites that sent nothing count as dropped. Below the
threshold the round aborts (``RoundAborted``), nothing is revealed, and the next round starts.

Any other exception inside a round (a bug, a bad setting, a full disk) aborts it the same way:
nothing is revealed, sites polling it are told ABORTED, the cause is logged with its traceback and
counted in ``pfmh_round_failures_total``, and the next round runs after ``FAILED_ROUND_PAUSE_S``.
After ``max_failed_rounds`` such failures in a row (a failure that repeats every round) the driver
gives up: ``failure`` says why, ``on_fatal`` is called (the server turns health NOT_SERVING) and
the daemon exits non-zero.

All arithmetic and crypto live elsewhere: ``security.secagg_server`` unmasks the sum;
``pfmh_model.aggregation`` turns it into global prototypes and the FedAvg model.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from coordinator.metrics import CoordinatorMetrics
from coordinator.misbehaviour import Misbehaviour
from coordinator.persistence import CoordinatorState, StateStore
from coordinator.round_commit import RoundCommit, reason_label
from coordinator.round_inbox import RoundInbox
from coordinator.round_run import RoundPhase, RoundRun
from federation.plan import FederationSettings
from federation.secagg import secagg_config
from pfmh_model.aggregation import GlobalState, UploadLayout
from security.errors import RoundAborted, SecurityError
from security.secagg_server import SecAggServer

logger = logging.getLogger(__name__)
# Rounds in a row that may end in an unexpected exception before the driver gives up.
MAX_FAILED_ROUNDS = 3
FAILED_ROUND_PAUSE_S = 2.0  # pause after such a round before the next one starts


class RoundEngine(RoundInbox, Misbehaviour, RoundCommit):
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
        max_failed_rounds: rounds in a row ending in an unexpected exception after which the driver stops
            and ``failure`` is set (each such round is aborted and nothing of it is revealed).
        on_fatal: called once with ``failure`` when the driver gives up (health turns NOT_SERVING).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, settings: FederationSettings, *, sites: tuple[str, ...], layout: UploadLayout,
                 store: StateStore, metrics: CoordinatorMetrics, liveness_s: float = 30.0, gather_s: float = 3.0,
                 exclude_rounds: int = 3, max_invalid_messages: int = 3,
                 max_failed_rounds: int = MAX_FAILED_ROUNDS, on_fatal: Callable[[str], None] = lambda why: None,
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
        self.max_failed_rounds = max(max_failed_rounds, 1)
        self.failed_in_a_row = 0
        self.failure = ""  # why the driver gave up; '' while it runs
        self.last_failure = ""  # the last round failure's exception, for the give-up line
        self.on_fatal = on_fatal
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

    # ------------------------------------------------------------------ driver
    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def run_forever(self) -> None:
        """Drive rounds until finished, ``stop()``, or ``max_failed_rounds`` failures in a row; meant for a
        dedicated thread. It never dies silently: an exception outside a round also sets ``failure``."""
        try:
            while True:
                with self.cond:
                    if self.stopping or self.finished:
                        return
                cohort = self._gather()
                if cohort and not self._run_round(cohort):
                    self.failed_in_a_row += 1
                    if self.failed_in_a_row >= self.max_failed_rounds:
                        self._give_up(f"{self.failed_in_a_row} rounds in a row failed with an internal error "
                                      f"(last: {self.last_failure})")
                        return
                    with self.cond:  # a moment for a passing cause (a full disk, a slow mount) to clear
                        self.cond.wait_for(lambda: self.stopping, timeout=FAILED_ROUND_PAUSE_S)
        except Exception as exc:  # noqa: BLE001 - the driver must report, never vanish
            logger.exception("the round driver failed outside a round")
            self._give_up(f"the round driver failed: {type(exc).__name__}: {exc}")

    def _give_up(self, why: str) -> None:
        with self.cond:
            self.failure = why
            self.stopping = True  # long-polls return at once; sites see no new round
            self.cond.notify_all()
        logger.error("coordinator gives up: %s", why)
        self.on_fatal(why)

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

    def _run_round(self, cohort: tuple[str, ...]) -> bool:
        """One round; False if it ended in an unexpected exception (aborted, logged and counted)."""
        try:
            run = self._start(cohort)
        except SecurityError as exc:  # e.g. an unsafe threshold for this cohort size
            logger.error("cannot start a round with %d sites: %s", len(cohort), exc)
            with self.cond:
                self.cond.wait(self.gather_s)
            return True
        except Exception as exc:  # noqa: BLE001 - see _fail
            self._fail(None, exc)
            return False
        try:
            self._drive(run, cohort)
        except RoundAborted as exc:
            self._abort(run, exc.reason)
        except Exception as exc:  # noqa: BLE001 - see _fail
            self._fail(run, exc)
            return False
        self.failed_in_a_row = 0
        return True

    def _fail(self, run: RoundRun | None, exc: Exception) -> None:
        """An unexpected exception ended the round: abort it (nothing revealed), log the cause, count it."""
        cause = f"{type(exc).__name__}: {exc}"[:300]
        repeated, self.last_failure = cause == self.last_failure, cause
        number = run.number if run is not None else self.state.last_round_started
        logger.error("round %d failed with an internal error, aborting it (nothing revealed): %s", number,
                     cause, exc_info=None if repeated else exc)  # the traceback once per cause
        self.metrics.round_failures.labels(type(exc).__name__[:60]).inc()
        if run is None:  # it failed while starting: the number is taken (write-ahead), log it as aborted
            with self.cond:
                self.state.history.append({"round": number, "outcome": "aborted",
                                           "reason": f"internal error: {self.last_failure}",
                                           "cohort": list((self.state.open_round or {}).get("cohort", [])),
                                           "inputs_received": [], "dp": self._dp_expected()})
                self.state.open_round = None
                self.store.save_round_outcome(self.state, completed=False)
                self.metrics.rounds_aborted.labels(reason_label("internal error")).inc()
            logger.warning("round %d aborted: internal error (nothing revealed)", number)
            return
        if run.phase is RoundPhase.DONE:  # the round had completed and been committed: nothing to abort
            return
        self._abort(run, f"internal error: {self.last_failure}")

    def _drive(self, run: RoundRun, cohort: tuple[str, ...]) -> None:
        """Walk ``run`` through its phases; raises RoundAborted (or anything unexpected) to end it early."""
        s = self.settings
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
