"""Issue #16: the coordinator checks advertisements before relaying them and names the culprit.

Real coordinator on 127.0.0.1, real SecAggClients; one site replays another site's advertisement (keys and
signature) as its own. It is refused at the door (INVALID_ARGUMENT naming it), logged and counted, the
round completes without it at once (not after the training timeout), it sits out the next round, and the
exclusion is in the round log and the audit report.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from coordinator.audit import audit_state_dir
from coordinator.audit_report import report_markdown
from coordinator.server import upload_layout
from proto import federation_pb2 as pb
from tests.netfed import FED, coordinator, coordinator_config, join_sites, make_pki

NAMES = ["site-a", "site-b", "site-c", "site-d"]


def _cfg(tmp: Path, *, exclude_rounds: int):  # noqa: ANN202
    cfg = coordinator_config(tmp, NAMES, rounds=2, min_sites=3, phase_timeout_s=3.0, train_timeout_s=30.0)
    return replace(cfg, server=replace(cfg.server, liveness_s=30.0, gather_s=0.5, exclude_rounds=exclude_rounds))


def test_replayed_advertisement_is_refused_the_round_goes_on_and_the_sender_is_excluded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    pki = make_pki(tmp_path, NAMES)
    cfg = _cfg(tmp_path, exclude_rounds=1)
    with coordinator(tmp_path, cfg) as (port, engine):
        layout = upload_layout(cfg.federation)
        sites = join_sites(port, pki, cfg, NAMES)
        honest, culprit = sites[:3], sites[3]
        configs = [s.wait_round(0) for s in sites]
        adverts = [s.advertise(c) for s, c in zip(honest, configs[:3], strict=True)]
        culprit.secagg.advertise(configs[3].round, list(configs[3].cohort))
        replay = pb.AdvertiseKeysRequest(federation_id=FED, round=configs[3].round,
                                         share_public_key=adverts[0].share_public_key,
                                         mask_public_key=adverts[0].mask_public_key, signature=adverts[0].signature)
        started = time.monotonic()
        # Execute 1: the replay is refused at the door
        with pytest.raises(grpc.RpcError) as info:
            culprit.stub.AdvertiseKeys(replay, timeout=10)
        # Execute 2: the honest sites finish the round without waiting for the culprit
        for s in honest:
            s.share_keys()
        for s in honest:
            s.masked_input(np.ones(layout.length))
        for s in honest:
            s.sign_survivors()
        for s in honest:
            s.unmask()
        first = honest[0].result()
        seconds = time.monotonic() - started
        # Execute 3: the next round leaves the culprit out
        culprit.secagg.abort()
        second_configs = [s.wait_round(first.round) for s in honest]
        history = list(engine.state.history)
        refused = engine.metrics.refused.labels("site-d", "AdvertiseKeys")._value.get()
        excluded = engine.metrics.exclusions.labels("site-d", "advertisement")._value.get()
    # Assert: a clear status to the culprit, a log line and labelled metrics naming it
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'site-d'" in info.value.details() and "not signed by its certified key" in info.value.details()
    assert any("refused the advertisement of site site-d" in r.getMessage() for r in caplog.records)
    assert refused == 1 and excluded == 1
    # Assert: the round completed with the three others, well before the 30 s training timeout
    assert first.status == pb.READY and sorted(first.survivors) == NAMES[:3] and seconds < 15
    # Assert: excluded from the next round, recorded in the round log and in the audit report
    assert all("site-d" not in c.cohort for c in second_configs)
    assert history[0]["refused"] == ["site-d"]
    assert history[0]["excluded"]["site-d"]["until_round"] == first.round + 1
    (tmp_path / "state" / "coordinator" / "ledgers").mkdir(exist_ok=True)  # scripted sites keep no ledger
    report = audit_state_dir(tmp_path / "state" / "coordinator")
    assert report.exclusions[0]["site"] == "site-d" and report.exclusions[0]["round"] == first.round
    assert "## Sites excluded for misbehaving" in report_markdown(report)


def test_a_site_sending_invalid_messages_is_excluded_after_the_limit(tmp_path: Path) -> None:
    # Prepare: max_invalid_messages = 3 (the default)
    pki = make_pki(tmp_path, NAMES)
    cfg = _cfg(tmp_path, exclude_rounds=2)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites = join_sites(port, pki, cfg, NAMES)
        configs = [s.wait_round(0) for s in sites]
        bad = pb.MaskedInputRequest(federation_id=FED, round=configs[0].round, masked_uint64_le=b"\0" * 8,
                                    vector_length=2)
        # Execute: two invalid messages are tolerated, the third excludes the sender
        for count in range(3):
            with pytest.raises(grpc.RpcError):
                sites[3].stub.SubmitMaskedInput(bad, timeout=10)
            if count < 2:
                assert "site-d" not in engine.excluded
        # Assert
        assert engine.excluded["site-d"] == configs[0].round + 2
        assert engine.metrics.exclusions.labels("site-d", "invalid_messages")._value.get() == 1
        with pytest.raises(grpc.RpcError) as info:
            sites[3].advertise(configs[3])
        assert "refused earlier in round" in info.value.details()
