"""The gRPC servicer: translates ``pfmh.v1`` messages to domain types and back, nothing more.

The sender of every message is ``current_site()`` (from the verified certificate); site fields in
messages are filled by the coordinator, never trusted. Payload checks live in the domain
objects (``security.secagg_messages`` validate on construction, ``SecAggServer`` checks rounds,
senders, duplicates and lengths); errors become statuses in ``coordinator.interceptors``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import grpc

from coordinator.auth import current_site
from coordinator.metrics import CoordinatorMetrics
from coordinator.round_run import Poll
from coordinator.rounds import RoundEngine
from federation import codec
from federation.round_codec import JoinAccepted, RoundOffer, RoundOutcome
from proto import federation_pb2 as pb
from proto import federation_pb2_grpc as pb_grpc
from proto.settings import PROTOCOL_VERSION
from security.errors import InvalidMessage

logger = logging.getLogger(__name__)
POLL = {Poll.PENDING: pb.PENDING, Poll.READY: pb.READY, Poll.ABORTED: pb.ABORTED, Poll.FINISHED: pb.FINISHED}


class FederationServicer(pb_grpc.FederationServicer):
    """Thin RPC layer over ``RoundEngine``.

    Args:
        engine: the round engine.
        metrics: for site reports (epsilon, mAP).
        long_poll_s: longest wait of a long-poll RPC before it answers PENDING.
        on_ledger: called with (site, ledger lines, certificate PEM, seq of the first line) when a site
            reports its ledger; returns the number of verified entries.
        ledger_head: the ledger head verified for a site, ``(entries, hash)``; handed to it at Join.
    """

    def __init__(self, engine: RoundEngine, metrics: CoordinatorMetrics, *, long_poll_s: float,
                 on_ledger: Callable[[str, list[str], bytes, int], int],
                 ledger_head: Callable[[str], tuple[int, str]] = lambda site: (0, "")) -> None:
        self.engine = engine
        self.metrics = metrics
        self.long_poll_s = long_poll_s
        self.on_ledger = on_ledger
        self.ledger_head = ledger_head
        self.settings = engine.settings

    def _check_federation(self, federation_id: str) -> None:
        if federation_id != self.settings.federation_id:
            raise InvalidMessage(f"federation {federation_id!r} is not {self.settings.federation_id!r}")

    def _wait_s(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        wait = self.long_poll_s if remaining is None else min(self.long_poll_s, max(remaining - 0.5, 0.0))
        return wait

    # ------------------------------------------------------------------ join and round config
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        self._check_federation(request.federation_id)
        s = self.settings
        if request.protocol_version != PROTOCOL_VERSION:
            raise InvalidMessage(f"protocol version {request.protocol_version} is not {PROTOCOL_VERSION}")
        dims = (request.image_dim, request.text_dim, request.num_classes)
        if dims != (s.image_dim, s.text_dim, s.num_classes):
            raise InvalidMessage(f"site data has (image_dim, text_dim, classes) = {dims}, the federation "
                                 f"uses {(s.image_dim, s.text_dim, s.num_classes)}")
        site = current_site()
        self.engine.touch(site)
        logger.info("site %s joined (%d training records)", site, request.num_train_records)
        entries, head_hash = self.ledger_head(site)  # the site refuses to train if its own ledger is behind it
        return JoinAccepted(settings=s, protocol_version=PROTOCOL_VERSION, enrolled_sites=tuple(self.engine.sites),
                            next_round=self.engine.state.last_round_started + 1,
                            ledger_entries=entries, ledger_head_hash=head_hash).to_proto()

    def WaitForRound(self, request: pb.WaitForRoundRequest, context: grpc.ServicerContext) -> pb.RoundConfig:
        self._check_federation(request.federation_id)
        status, run = self.engine.await_round(current_site(), request.after_round, self._wait_s(context))
        idle = RoundOffer(status=POLL[status], federation_id=self.settings.federation_id,
                          completed_rounds=self.engine.state.completed_rounds)
        if run is None:
            return idle.to_proto()
        plan, secagg = run.server.plan, self.settings.secagg
        return replace(idle, round=run.number, cohort=tuple(run.cohort), threshold=plan.threshold,
                       neighbours=plan.neighbours, fraction_bits=secagg.fraction_bits,
                       max_abs_value=secagg.max_abs_value, vector_length=self.engine.layout.length,
                       global_prototypes=run.start_state.prototypes, shared_model=run.start_state.shared_model,
                       phase_timeout_s=self.settings.phase_timeout_s,
                       train_timeout_s=self.settings.train_timeout_s).to_proto()

    # ------------------------------------------------------------------ secure aggregation phases
    def AdvertiseKeys(self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        site = current_site()
        message = codec.advertise_from_proto(request, sender=site)
        certificate = context.auth_context()["x509_pem_cert"][0]
        self.engine.submit_advertisement(site, message, certificate)
        return pb.Ack(round=request.round)

    def GetAdvertisements(self, request: pb.PhaseQuery, context: grpc.ServicerContext) -> pb.Advertisements:
        self._check_federation(request.federation_id)
        status, run = self.engine.await_directory(current_site(), request.round, self._wait_s(context))
        if status is Poll.READY and run is not None and run.directory is not None:
            return codec.directory_to_proto(run.directories.get(current_site(), run.directory),
                                            certificates=run.certificates, status=POLL[status])
        return pb.Advertisements(status=POLL[status], round=request.round)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        site = current_site()
        self.engine.submit_shares(site, request.round, codec.shares_from_proto(request, sender=site))
        return pb.Ack(round=request.round)

    def GetShares(self, request: pb.PhaseQuery, context: grpc.ServicerContext) -> pb.SharesForSite:
        self._check_federation(request.federation_id)
        site = current_site()
        status, run = self.engine.await_inbox(site, request.round, self._wait_s(context))
        shares = run.inbox.get(site, ()) if status is Poll.READY and run is not None and run.inbox is not None else ()
        return codec.inbox_to_proto(shares, round_number=request.round, status=POLL[status])

    def SubmitMaskedInput(self, request: pb.MaskedInputRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        message = codec.masked_input_from_proto(request, sender=current_site())
        self.engine.submit_masked_input(current_site(), message)
        return pb.Ack(round=request.round)

    def GetUnmaskRequest(self, request: pb.PhaseQuery, context: grpc.ServicerContext) -> pb.UnmaskRequest:
        self._check_federation(request.federation_id)
        site = current_site()
        status, run = self.engine.await_unmask_request(site, request.round, self._wait_s(context))
        told = self.engine.unmask_request_for(site, run) if status is Poll.READY and run is not None else None
        return codec.unmask_request_to_proto(told, round_number=request.round, status=POLL[status])

    def SubmitSurvivorSignature(self, request: pb.SurvivorSignatureRequest,
                                context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        site = current_site()
        self.engine.submit_survivor_signature(site, codec.survivor_signature_from_proto(request, sender=site))
        return pb.Ack(round=request.round)

    def GetSurvivorSignatures(self, request: pb.PhaseQuery, context: grpc.ServicerContext) -> pb.SurvivorSignatures:
        self._check_federation(request.federation_id)
        site = current_site()
        status, run = self.engine.await_signatures(site, request.round, self._wait_s(context))
        signatures = (run.signatures.get(site, ()) if status is Poll.READY and run is not None
                      and run.signatures is not None else ())
        return codec.signatures_to_proto(signatures, round_number=request.round, status=POLL[status])

    def Unmask(self, request: pb.UnmaskReply, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        self.engine.submit_unmask(current_site(), codec.unmask_response_from_proto(request, sender=current_site()))
        return pb.Ack(round=request.round)

    def GetRoundResult(self, request: pb.PhaseQuery, context: grpc.ServicerContext) -> pb.RoundResult:
        self._check_federation(request.federation_id)
        status, run = self.engine.await_result(current_site(), request.round, self._wait_s(context))
        outcome = RoundOutcome(status=POLL[status], round=request.round,
                               completed_rounds=self.engine.state.completed_rounds)
        if run is not None:
            outcome = replace(outcome, abort_reason=run.abort_reason)
            if status is Poll.READY and run.result is not None:
                outcome = replace(outcome, prototypes=run.result.prototypes, model=run.result.shared_model,
                                  survivors=tuple(run.survivors))
        return outcome.to_proto()

    # ------------------------------------------------------------------ audit and status
    def ReportLedger(self, request: pb.LedgerReport, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        if len(request.lines) > 100_000:
            raise InvalidMessage("ledger report too long")
        count = self.on_ledger(current_site(), list(request.lines), context.auth_context()["x509_pem_cert"][0],
                               request.first_seq)
        return pb.Ack(detail=f"{count} entries verified")

    def ReportMetrics(self, request: pb.SiteMetrics, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        self.metrics.record_site_report(current_site(), bits=request.bits, map_value=request.map,
                                        epsilon_spent=request.epsilon_spent, epsilon_max=request.epsilon_max,
                                        noise_multiplier=request.noise_multiplier)
        return pb.Ack(round=request.round)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._check_federation(request.federation_id)
        self.engine.leave(current_site(), request.reason or "no reason given")
        return pb.Ack(detail="left")

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        engine = self.engine
        run = engine.current
        return pb.StatusReply(federation_id=self.settings.federation_id,
                              round=run.number if run else engine.state.last_round_started,
                              completed_rounds=engine.state.completed_rounds,
                              stage=run.phase.value if run else "waiting", live_sites=engine.live_sites(),
                              enrolled_sites=list(engine.sites))
