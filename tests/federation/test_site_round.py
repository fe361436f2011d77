"""``federation.site_round.SiteRound``: hooks fire just before each message leaves, and a phase that does not
come back READY ends the round for the site (its reply kept), nothing sent after it."""
from __future__ import annotations

from typing import Any

import pytest

from federation.peers import PeerVerifier
from federation.round_codec import RoundOffer
from federation.site_round import RoundAbandoned, SiteRound
from proto import federation_pb2 as pb
from security.pki import create_ca
from security.pki_verify import load_certificate
from security.secagg_client import SecAggClient
from security.secagg_config import SecAggConfig
from security.signing import SigningKey


class _Recorder:
    """A transport that logs every call and answers every poll with one fixed reply."""

    def __init__(self, events: list[str], reply: Any) -> None:
        self.events, self.reply = events, reply

    def call(self, method: str, request: Any) -> Any:
        self.events.append(f"call {method}")
        return pb.Ack()

    def poll(self, method: str, request: pb.PhaseQuery, *, deadline_s: float) -> Any:
        self.events.append(f"poll {method} {deadline_s:g}s")
        return self.reply


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> PeerVerifier:
    ca = create_ca(federation_id="fed", out_dir=tmp_path_factory.mktemp("pki"))
    return PeerVerifier(load_certificate(ca.root / "ca" / "ca.crt"))


def _round(events: list[str], reply: Any, peers: PeerVerifier) -> SiteRound:
    config_ = SecAggConfig(federation_id="fed", vector_length=4, fraction_bits=16, max_abs_value=8.0)
    secagg = SecAggClient("site-a", signing_key=SigningKey.generate(), config=config_)
    config = RoundOffer(status=pb.READY, federation_id="fed", completed_rounds=0, round=3,
                        cohort=("site-a", "site-b", "site-c"), phase_timeout_s=5.0, train_timeout_s=10.0)
    return SiteRound(secagg=secagg, transport=_Recorder(events, reply), peers=peers, config=config,
                     federation_id="fed", consistency_check=True, before_send=lambda p: events.append(f"hook {p}"))


def test_the_hook_runs_before_the_message_leaves_and_an_aborted_phase_ends_the_round(peers: PeerVerifier) -> None:
    # Prepare: the coordinator aborts the round while the site waits for the key directory
    events: list[str] = []
    aborted = pb.Advertisements(status=pb.ABORTED, round=3)
    steps = _round(events, aborted, peers)
    # Execute
    steps.advertise()
    with pytest.raises(RoundAbandoned, match="GetAdvertisements: round 3 aborted") as caught:
        steps.share_keys()
    # Assert: advertise hook, then its message; the directory waited train + 2 phase timeouts; no ShareKeys
    assert events == ["hook advertise", "call AdvertiseKeys", "poll GetAdvertisements 20s"]
    assert caught.value.reply is aborted


def test_a_round_result_is_returned_whatever_its_status(peers: PeerVerifier) -> None:
    # Prepare
    events: list[str] = []
    steps = _round(events, pb.RoundResult(status=pb.ABORTED, abort_reason="too few survivors"), peers)
    # Execute
    result = steps.result()
    # Assert: an aborted result is the round's outcome, not an error of this site
    assert result.abort_reason == "too few survivors"
    assert events == ["hook result", "poll GetRoundResult 10s"]
