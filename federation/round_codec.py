"""The wire codec of a round's frame: ``JoinReply``, ``RoundConfig`` and ``RoundResult`` <-> frozen domain types.

``codec`` converts the secure-aggregation phases; this module converts what surrounds them: what a site is
told when it joins (:class:`JoinAccepted`), the round it is offered (:class:`RoundOffer`) and how that round
ended (:class:`RoundOutcome`). Each type has ``to_proto`` and ``from_proto``; the servicer, the site daemon,
the soak site and the test helpers build and read these messages only through them. Tensors travel as
``pfmh.v1.Tensor`` (``proto.tensors``); ``None`` is the empty tensor. ``status`` is the ``pb.PollStatus``
value of the reply.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.plan import FederationSettings
from proto import federation_pb2 as pb
from proto.tensors import from_tensor, to_tensor


def _tensors(**arrays: np.ndarray | None) -> dict[str, pb.Tensor]:
    """The tensor fields that hold an array (an absent one decodes as ``None`` just as an empty one does)."""
    return {name: to_tensor(array) for name, array in arrays.items() if array is not None}


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                         and bool(np.array_equal(a, b)))


@dataclass(frozen=True, eq=False)
class RoundOffer:
    """A round the coordinator offers (``WaitForRound``'s reply); only ``status`` and ``completed_rounds``
    are set while no round is open (PENDING, FINISHED).

    Shape:
        global_prototypes (C, B) float64 or None; shared_model (P,) float64 or None.
    """
    status: int
    federation_id: str
    completed_rounds: int
    round: int = 0
    cohort: tuple[str, ...] = ()
    threshold: int = 0
    neighbours: int = 0
    fraction_bits: int = 0
    max_abs_value: float = 0.0
    vector_length: int = 0
    global_prototypes: np.ndarray | None = None
    shared_model: np.ndarray | None = None
    phase_timeout_s: float = 0.0
    train_timeout_s: float = 0.0

    def to_proto(self) -> pb.RoundConfig:
        return pb.RoundConfig(status=self.status, federation_id=self.federation_id, round=self.round,
                              completed_rounds=self.completed_rounds, cohort=list(self.cohort),
                              threshold=self.threshold, neighbours=self.neighbours,
                              fraction_bits=self.fraction_bits, max_abs_value=self.max_abs_value,
                              vector_length=self.vector_length, phase_timeout_s=self.phase_timeout_s,
                              train_timeout_s=self.train_timeout_s,
                              **_tensors(global_prototypes=self.global_prototypes, shared_model=self.shared_model))

    @classmethod
    def from_proto(cls, reply: pb.RoundConfig) -> RoundOffer:
        """Raises ``proto.tensors.TensorError`` when a tensor's shape and bytes disagree."""
        return cls(status=reply.status, federation_id=reply.federation_id, completed_rounds=reply.completed_rounds,
                   round=reply.round, cohort=tuple(reply.cohort), threshold=reply.threshold,
                   neighbours=reply.neighbours, fraction_bits=reply.fraction_bits,
                   max_abs_value=reply.max_abs_value, vector_length=reply.vector_length,
                   global_prototypes=from_tensor(reply.global_prototypes),
                   shared_model=from_tensor(reply.shared_model), phase_timeout_s=reply.phase_timeout_s,
                   train_timeout_s=reply.train_timeout_s)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundOffer):
            return NotImplemented
        return self.to_proto() == other.to_proto()


@dataclass(frozen=True, eq=False)
class RoundOutcome:
    """How a round ended (``GetRoundResult``'s reply): READY with the new global state and the survivors,
    ABORTED with its reason, or PENDING.

    Shape:
        prototypes (C, B) float64 or None; model (P,) float64 or None.
    """
    status: int
    round: int
    completed_rounds: int
    survivors: tuple[str, ...] = ()
    prototypes: np.ndarray | None = None
    model: np.ndarray | None = None
    abort_reason: str = ""

    def to_proto(self) -> pb.RoundResult:
        return pb.RoundResult(status=self.status, round=self.round, completed_rounds=self.completed_rounds,
                              survivors=list(self.survivors), abort_reason=self.abort_reason,
                              **_tensors(global_prototypes=self.prototypes, shared_model=self.model))

    @classmethod
    def from_proto(cls, reply: pb.RoundResult) -> RoundOutcome:
        """Raises ``proto.tensors.TensorError`` when a tensor's shape and bytes disagree."""
        return cls(status=reply.status, round=reply.round, completed_rounds=reply.completed_rounds,
                   survivors=tuple(reply.survivors), prototypes=from_tensor(reply.global_prototypes),
                   model=from_tensor(reply.shared_model), abort_reason=reply.abort_reason)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundOutcome):
            return NotImplemented
        return (self.status, self.round, self.completed_rounds, self.survivors, self.abort_reason) == (
            other.status, other.round, other.completed_rounds, other.survivors, other.abort_reason) and \
            _same(self.prototypes, other.prototypes) and _same(self.model, other.model)


@dataclass(frozen=True)
class JoinAccepted:
    """What a site is told when it joins: the federation's settings, the enrolled sites, the next round,
    and the head of the site's ledger as the coordinator last verified it (``(0, "")`` before its first
    report)."""
    settings: FederationSettings
    protocol_version: int
    enrolled_sites: tuple[str, ...]
    next_round: int
    ledger_entries: int = 0
    ledger_head_hash: str = ""

    @property
    def ledger_head(self) -> tuple[int, str]:
        return self.ledger_entries, self.ledger_head_hash

    def to_proto(self) -> pb.JoinReply:
        return pb.JoinReply(federation_id=self.settings.federation_id, protocol_version=self.protocol_version,
                            settings_json=self.settings.to_json(), enrolled_sites=list(self.enrolled_sites),
                            next_round=self.next_round, ledger_entries=self.ledger_entries,
                            ledger_head_hash=self.ledger_head_hash)

    @classmethod
    def from_proto(cls, reply: pb.JoinReply) -> JoinAccepted:
        """Raises what ``FederationSettings.from_json`` raises for a bad settings document."""
        return cls(settings=FederationSettings.from_json(reply.settings_json), protocol_version=reply.protocol_version,
                   enrolled_sites=tuple(reply.enrolled_sites), next_round=reply.next_round,
                   ledger_entries=reply.ledger_entries, ledger_head_hash=reply.ledger_head_hash)
