"""How a round ends: its unmasked sum aggregated, persisted and published, or its abort recorded.

``RoundCommit._complete`` turns the decoded sum into the new global state (``pfmh_model.server_step``) and
writes it with the round log entry before any site can see it; a failed write rolls the state back and the
round aborts. ``_abort`` records the outcome and tells every waiting site (nothing was revealed).
"""
from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from coordinator.metrics import CoordinatorMetrics
from coordinator.persistence import CoordinatorState, StateStore, atomic_write
from coordinator.round_run import RoundPhase, RoundRun
from federation.plan import FederationSettings
from pfmh_model.aggregation import GlobalState, SiteUpload, UploadLayout
from pfmh_model.errors import ModelError
from pfmh_model.server_step import aggregator
from security.dp_config import DPMode
from security.errors import RoundAborted

logger = logging.getLogger(__name__)
# Set to "1" only in test and soak runs: completed rounds' decoded sums go to <state_dir>/aggregates/.
RECORD_AGGREGATES_ENV = "PFMH_TEST_RECORD_AGGREGATES"


class RoundCommit:
    """Mixin of ``RoundEngine``: a round's outcome (state and lock are the engine's)."""

    settings: FederationSettings
    layout: UploadLayout
    store: StateStore
    state: CoordinatorState
    metrics: CoordinatorMetrics
    cond: threading.Condition
    clock: Callable[[], float]

    if TYPE_CHECKING:  # the engine's (coordinator.rounds, coordinator.misbehaviour)
        def _advance(self, run: RoundRun, phase: RoundPhase, expected: set[str]) -> None: ...

        def _misbehaviour(self, run: RoundRun) -> dict: ...  # type: ignore[type-arg]

    def _complete(self, run: RoundRun, total, survivors: tuple[str, ...], expected: set[str]) -> None:
        summed = SiteUpload.from_vector(total, self.layout)
        train = self.settings.train
        try:
            new = aggregator(self.settings.method)(summed, run.start_state, bits=train.bits, seed=train.seed)
        except ModelError as exc:  # e.g. a FedAvg weight total <= 0 sent by a faulty site: abort, keep driving
            raise RoundAborted(f"the unmasked sum is not a valid aggregate: {exc}") from exc
        if os.environ.get(RECORD_AGGREGATES_ENV) == "1":
            self._record_aggregate(run.number, total)
        before = (self.state.completed_rounds, self.state.prototypes, self.state.shared_model,
                  len(self.state.history), self.state.open_round)
        self.state.completed_rounds += 1
        self.state.prototypes, self.state.shared_model = new.prototypes, new.shared_model
        seconds = self.clock() - run.started
        self.state.history.append({"round": run.number, "outcome": "completed", "survivors": list(survivors),
                                   "cohort": list(run.cohort), "seconds": round(seconds, 3),
                                   "inputs": list(survivors), "dp": self._dp_expected(),  # the round log
                                   **self._misbehaviour(run)})
        self.state.open_round = None
        try:
            self.store.save_round_outcome(self.state, completed=True)  # before anyone can see the result
        except BaseException:  # not committed: the round is aborted, so the state must not say it completed
            (self.state.completed_rounds, self.state.prototypes, self.state.shared_model, kept,
             self.state.open_round) = before
            del self.state.history[kept:]
            raise
        run.result = GlobalState(self.state.completed_rounds, new.prototypes, new.shared_model)
        run.survivors = survivors
        self._advance(run, RoundPhase.DONE, expected)
        self.metrics.rounds_completed.inc()
        self.metrics.completed_rounds.set(self.state.completed_rounds)
        self.metrics.round_seconds.observe(seconds)
        self.metrics.upload_bytes.set(self.layout.length * 8)
        logger.info("round %d completed (%d/%d) with %d survivors in %.1fs", run.number,
                    self.state.completed_rounds, self.settings.rounds, len(survivors), seconds)

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
            self.metrics.rounds_aborted.labels(reason_label(reason)).inc()
            self.cond.notify_all()
        logger.warning("round %d aborted: %s (nothing revealed)", run.number, reason)


def reason_label(reason: str) -> str:
    """A bounded metric label for an abort reason."""
    if reason.startswith("internal error"):
        return "internal_error"
    for key in ("threshold", "shutting down", "reconstruct", "match"):
        if key in reason:
            return key.replace(" ", "_")
    return "other"
