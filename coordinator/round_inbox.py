"""The participant-facing half of the round engine: gRPC handler threads hand in messages and long-poll.

``submit_*`` checks a message at the door (phase, round, exclusion, the sender's certificate-bound key for
signed messages) and hands it to the round's ``SecAggServer``; ``await_*`` waits until the round has moved
past a phase and answers READY, PENDING or ABORTED (``Poll``). The driver (``coordinator.rounds``) owns the
phases; both halves share one ``threading.Condition``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from coordinator.round_run import Poll, RoundPhase, RoundRun
from security.consistency import SurvivorSignature
from security.errors import InvalidMessage, SecurityError, StageOutOfOrder
from security.pki_verify import load_certificate, site_signing_public_key
from security.secagg_messages import AdvertiseKeys, EncryptedShare, MaskedInput, UnmaskRequest, UnmaskResponse
from security.signing import VerifyKey


class RoundInbox:
    """Mixin of ``RoundEngine``: what the gRPC servicer calls (state and lock are the engine's)."""

    cond: threading.Condition
    runs: dict[int, RoundRun]
    current: RoundRun | None
    last_seen: dict[str, float]
    departed: dict[str, str]
    stopping: bool
    clock: Callable[[], float]

    if TYPE_CHECKING:  # the engine's (coordinator.rounds, coordinator.misbehaviour)
        @property
        def finished(self) -> bool: ...

        def _refuse(self, run: RoundRun, site: str, kind: str, what: str, exc: BaseException) -> None: ...

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
