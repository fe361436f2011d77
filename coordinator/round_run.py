"""One round's state as the engine and the gRPC handlers see it: its phase, what each site sent, what
the coordinator relays, and the outcome. Only ``coordinator.rounds`` changes it, under its lock."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pfmh_model.aggregation import GlobalState
from security.consistency import SurvivorSignature
from security.secagg_messages import EncryptedShare, KeyDirectory, UnmaskRequest
from security.secagg_server import SecAggServer


class RoundPhase(enum.StrEnum):
    """Phases in the order a round walks them; ABORTED ends a round from any phase."""

    ADVERTISE = "advertise_keys"   # sites train locally, then advertise keys
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency_check"  # survivors sign the survivor set (skipped in the semi-honest mode)
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_ORDER = list(RoundPhase)


class Poll(enum.StrEnum):
    """What a long-polling site gets back: wait more, the phase output is ready, or the round is over."""

    PENDING = "pending"
    READY = "ready"
    ABORTED = "aborted"
    FINISHED = "finished"


@dataclass
class RoundRun:
    """One round in flight (or just ended)."""

    number: int
    cohort: tuple[str, ...]
    server: SecAggServer
    start_state: GlobalState
    started: float
    phase: RoundPhase = RoundPhase.ADVERTISE
    phase_started: float = 0.0
    submitted: set[str] = field(default_factory=set)
    masked_inputs: set[str] = field(default_factory=set)  # sites whose masked input arrived (the round log)
    certificates: dict[str, bytes] = field(default_factory=dict)
    directory: KeyDirectory | None = None
    directories: dict[str, KeyDirectory] = field(default_factory=dict)  # per site: its neighbours' only
    inbox: dict[str, tuple[EncryptedShare, ...]] | None = None
    unmask_request: UnmaskRequest | None = None
    signatures: dict[str, tuple[SurvivorSignature, ...]] | None = None  # per survivor: what it must count
    refused: set[str] = field(default_factory=set)     # sites whose message was refused at the door
    invalid: dict[str, int] = field(default_factory=dict)  # rejected messages per site this round
    exclusions: dict[str, dict] = field(default_factory=dict)  # site -> {"until_round", "reason"}
    left_out: tuple[str, ...] = ()                         # live sites not in the cohort: still excluded
    result: GlobalState | None = None
    survivors: tuple[str, ...] = ()
    abort_reason: str = ""

    def reached(self, phase: RoundPhase) -> bool:
        """Whether the round has moved past ``phase`` (an aborted round has passed every phase)."""
        return self.phase is RoundPhase.ABORTED or _ORDER.index(self.phase) > _ORDER.index(phase)
