"""An unexpected exception inside a round, injected into a real networked round on 127.0.0.1: the round is
aborted with nothing revealed, the cause is logged and counted, and the next round runs; a failure that
repeats every round turns health NOT_SERVING and stops the driver."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import rounds
from coordinator.rounds import MAX_FAILED_ROUNDS
from proto import federation_pb2 as pb
from security.secagg_server import SecAggServer
from tests.netfed import (
    channel,
    coordinator,
    coordinator_config,
    drive_to_masked_input,
    join_sites,
    make_pki,
)

SITES = ["site-a", "site-b", "site-c"]


def _cfg(tmp: Path, rounds_: int = 3):
    cfg = coordinator_config(tmp, SITES, rounds=rounds_)
    return replace(cfg, server=replace(cfg.server, liveness_s=30.0, gather_s=0.2))


def _failures(engine, exception: str) -> float:
    return engine.metrics.registry.get_sample_value("pfmh_round_failures_total", {"exception": exception}) or 0.0


def test_exception_inside_a_round_aborts_it_logs_counts_and_the_next_round_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the first close of the masked-input phase raises something no one expected
    pki = make_pki(tmp_path, SITES)
    cfg = _cfg(tmp_path)
    real = SecAggServer.close_masked_inputs
    calls = {"n": 0}

    def faulty(self):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault in close_masked_inputs")
        return real(self)

    monkeypatch.setattr(SecAggServer, "close_masked_inputs", faulty)
    caplog.set_level(logging.WARNING, logger="coordinator.rounds")
    with coordinator(tmp_path, cfg) as (port, engine):
        sites = join_sites(port, pki, cfg, SITES)
        # Execute: round 1 reaches the masked-input phase, where the fault hits
        drive_to_masked_input(sites, 0)
        told = [s.sign_survivors() for s in sites]
        results = [s.result() for s in sites]
        # Assert: aborted, nothing revealed, cause logged and counted
        assert all(t.status == pb.ABORTED for t in told)
        assert all(r.status == pb.ABORTED and r.prototypes is None for r in results)
        assert engine.runs[1].result is None and engine.state.completed_rounds == 0
        assert _failures(engine, "RuntimeError") == 1
        assert engine.metrics.registry.get_sample_value("pfmh_rounds_aborted_total",
                                                        {"reason": "internal_error"}) == 1
        logged = [r for r in caplog.records if r.levelno == logging.ERROR and "round 1 failed" in r.getMessage()]
        assert logged and "injected fault in close_masked_inputs" in str(logged[0].exc_info[1])
        # Execute: the driver goes on; round 2 completes
        for s in sites:
            s.secagg.abort()
        drive_to_masked_input(sites, 1)
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        second = [s.result() for s in sites]
        # Assert
        assert all(r.status == pb.READY and r.round == 2 for r in second)
        assert engine.state.completed_rounds == 1 and engine.failure == ""
        assert engine.failed_in_a_row == 0
        for s in sites:
            s.close()
    history = json.loads((tmp_path / "state" / "coordinator" / "rounds.json").read_text())["history"]
    assert history[0]["outcome"] == "aborted"
    assert history[0]["reason"] == "internal error: RuntimeError: injected fault in close_masked_inputs"
    assert history[1]["outcome"] == "completed"


def test_a_failure_in_every_round_turns_health_not_serving_and_stops_the_driver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: every round fails while starting (as a bad PRG name did before config validation)
    pki = make_pki(tmp_path, SITES)
    cfg = _cfg(tmp_path, rounds_=10)

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ValueError("'rot13' is not a valid PrgAlgorithm")

    monkeypatch.setattr(rounds, "SecAggServer", broken)
    with coordinator(tmp_path, cfg) as (port, engine):
        key, cert, ca = pki.site_files("site-a")
        health = health_pb2_grpc.HealthStub(channel(port, key, cert, ca))
        request = health_pb2.HealthCheckRequest(service="pfmh.v1.Federation")
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # Execute: sites join, so rounds start and fail
        sites = join_sites(port, pki, cfg, SITES)
        deadline = time.monotonic() + 30
        while not engine.failure and time.monotonic() < deadline:
            time.sleep(0.1)
        # Assert
        assert f"{MAX_FAILED_ROUNDS} rounds in a row failed" in engine.failure
        assert "ValueError: 'rot13' is not a valid PrgAlgorithm" in engine.failure
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _failures(engine, "ValueError") == MAX_FAILED_ROUNDS
        assert engine.state.last_round_started == MAX_FAILED_ROUNDS  # no further round was started
        reply = sites[0].stub.WaitForRound(pb.WaitForRoundRequest(federation_id="testfed", after_round=0),
                                           timeout=5)
        assert reply.status == pb.PENDING  # nothing half-started is handed out
        for s in sites:
            s.close()
    history = json.loads((tmp_path / "state" / "coordinator" / "rounds.json").read_text())["history"]
    assert [h["outcome"] for h in history] == ["aborted"] * MAX_FAILED_ROUNDS
    assert all(h["reason"].startswith("internal error: ValueError") for h in history)
