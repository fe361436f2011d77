"""One site's secure-aggregation round over gRPC, phase by phase (Bonawitz et al. 2017 with SecAgg+ graphs).

The site daemon (``participant.site``), the soak participant (``bench/soak_site.py``) and the test harness
(``tests/netfed.py``) all walk a round with :class:`SiteRound`; they differ only in their transport (the
daemon's retrying client, the soak's, a bare stub) and in what they do between phases. The phases, in
order, each one long-poll for the phase's input and one message sent::

    advertise        -> AdvertiseKeys
    share_keys       GetAdvertisements -> ShareKeys
    masked_input     GetShares -> SubmitMaskedInput
    sign_survivors   GetUnmaskRequest -> SubmitSurvivorSignature (skipped when the federation runs the
                     semi-honest protocol, ``consistency_check = false``)
    unmask           GetSurvivorSignatures -> Unmask
    result           GetRoundResult

``before_send(point)`` runs just before each phase's message leaves, after the phase's input arrived, with
point in :data:`POINTS`: the daemon charges its DP release there before the masked input leaves; the soak
injects faults there.

Security:
    All arithmetic and cryptography are ``security.secagg_client.SecAggClient``'s; peer keys come only from
    certificates this site verified (``federation.peers``); every reply is decoded under this site's own
    federation id and round number (``federation.codec``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from federation import codec
from federation.peers import PeerVerifier
from federation.round_codec import RoundOffer, RoundOutcome
from proto import federation_pb2 as pb
from security.secagg_client import SecAggClient
from security.secagg_messages import AdvertiseKeys, MaskedInput, UnmaskRequest, UnmaskResponse
from security.signing import VerifyKey

POINTS = ("advertise", "share_keys", "masked_input", "sign_survivors", "unmask", "result")


class RoundAbandoned(Exception):
    """The round ended for this site (aborted, or a phase did not close in time); nothing was revealed.

    ``reply`` is the reply that ended it, where there was one (its ``status`` is not ``READY``).
    """

    def __init__(self, message: str, *, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


class Transport(Protocol):
    """How a site reaches the coordinator: a unary call, and a long-poll repeated until not PENDING."""

    def call(self, method: str, request: Any) -> Any: ...

    def poll(self, method: str, request: pb.PhaseQuery, *, deadline_s: float) -> Any: ...


class SiteRound:
    """One round of one site, walked phase by phase (call the phases in the order of the module docstring).

    Args:
        secagg: the site's SecAgg client (its state machine checks the phase order).
        transport: the connection to the coordinator.
        peers: verifies the relayed certificates.
        config: the round the coordinator offered (``WaitForRound``'s READY reply).
        federation_id: this site's federation.
        consistency_check: whether the federation runs the signed survivor-view check (phase 5a).
        before_send: called with a point of :data:`POINTS` just before that phase's message leaves.
    """

    def __init__(self, *, secagg: SecAggClient, transport: Transport, peers: PeerVerifier, config: RoundOffer,
                 federation_id: str, consistency_check: bool,
                 before_send: Callable[[str], None] = lambda point: None) -> None:
        self.secagg, self.transport, self.peers, self.config = secagg, transport, peers, config
        self.federation_id, self.number, self.consistency_check = federation_id, int(config.round), consistency_check
        self.before_send = before_send
        self.query = pb.PhaseQuery(federation_id=federation_id, round=self.number)
        self.phase_wait_s = 2 * config.phase_timeout_s
        self.verify_keys: dict[str, VerifyKey] = {}
        self.told: UnmaskRequest | None = None
        self.survivors: tuple[str, ...] = ()

    def _ready(self, method: str, deadline_s: float) -> Any:
        reply = self.transport.poll(method, self.query, deadline_s=deadline_s)
        if reply is None or reply.status != pb.READY:
            reason = getattr(reply, "abort_reason", "") if reply is not None else ""
            raise RoundAbandoned(reason or f"{method}: round {self.number} aborted", reply=reply)
        return reply

    # ------------------------------------------------------------------ phases
    def advertise(self) -> AdvertiseKeys:
        """Phase 2: fresh X25519 keys for the round's cohort, signed, sent."""
        advert = self.secagg.advertise(self.number, list(self.config.cohort))
        self.before_send("advertise")
        self.transport.call("AdvertiseKeys", codec.advertise_to_proto(advert))
        return advert

    def share_keys(self) -> None:
        """Phase 3: the relayed directory (peers' keys from verified certificates only), shares sealed, sent."""
        ads = self._ready("GetAdvertisements", self.config.train_timeout_s + self.phase_wait_s)
        directory, certificates = codec.directory_from_proto(ads, federation_id=self.federation_id,
                                                             round_number=self.number)
        self.verify_keys = self.peers.verify_keys(certificates)
        shares = self.secagg.share_keys(directory, verify_keys=self.verify_keys)
        self.before_send("share_keys")
        self.transport.call("ShareKeys", codec.shares_to_proto(self.federation_id, self.number, shares))

    def masked_input(self, vector: np.ndarray) -> MaskedInput:
        """Phase 4: the shares relayed to this site, then ``vector`` masked and sent.

        Shape:
            vector (L,) float64, L = the round's ``vector_length``.
        """
        inbox = self._ready("GetShares", self.phase_wait_s)
        received = codec.inbox_from_proto(inbox, federation_id=self.federation_id, round_number=self.number)
        masked = self.secagg.masked_input(received, vector)
        self.before_send("masked_input")
        self.transport.call("SubmitMaskedInput", codec.masked_input_to_proto(masked))
        return masked

    def sign_survivors(self) -> UnmaskRequest:
        """Phase 5a: the survivor set this site is told; signed and sent unless the protocol is semi-honest."""
        reply = self._ready("GetUnmaskRequest", self.phase_wait_s)
        self.told = codec.unmask_request_from_proto(reply, federation_id=self.federation_id,
                                                    round_number=self.number)
        if self.consistency_check:
            signed = self.secagg.sign_survivors(self.told)
            self.before_send("sign_survivors")
            self.transport.call("SubmitSurvivorSignature", codec.survivor_signature_to_proto(signed))
        return self.told

    def unmask(self) -> UnmaskResponse:
        """Phase 5: the neighbours' survivor signatures (if checked), then the shares revealed and sent."""
        if self.told is None:
            raise RuntimeError("SiteRound.unmask before sign_survivors")
        if self.consistency_check:
            bundle = self._ready("GetSurvivorSignatures", self.phase_wait_s)
            signatures = codec.signatures_from_proto(bundle, federation_id=self.federation_id,
                                                     round_number=self.number)
            response = self.secagg.unmask(self.told, signatures=signatures, verify_keys=self.verify_keys)
        else:
            response = self.secagg.unmask(self.told)
        self.before_send("unmask")
        self.transport.call("Unmask", codec.unmask_response_to_proto(response))
        return response

    def result(self) -> RoundOutcome:
        """The round's outcome: READY with the new global state, or ABORTED with its reason (not raised)."""
        self.before_send("result")
        return RoundOutcome.from_proto(self.transport.poll("GetRoundResult", self.query, deadline_s=self.phase_wait_s))

    def run(self, vector: np.ndarray) -> RoundOutcome:
        """Every phase in order, masking ``vector``; the round's result (READY or ABORTED)."""
        self.advertise()
        self.share_keys()
        self.masked_input(vector)
        self.sign_survivors()
        self.unmask()
        return self.result()
