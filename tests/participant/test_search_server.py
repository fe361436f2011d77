"""The search server over real mutual TLS on 127.0.0.1: who may connect, answers, reload under load, drain."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from participant.archive_ops import archive_of
from participant.config import load_config
from participant.search_client import Query, SearchClient
from participant.search_engine import open_view
from participant.search_server import run_search_server
from pfmh_model.record_file import RecordBatch
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate
from tests.conftest import REPO_ROOT
from tests.participant.search_fixtures import make_site, write_model


def _serving_site(tmp: Path) -> tuple[Path, object]:
    """A site with an archive, a separate clients' CA named in [search], and a client certificate of it."""
    toml, data = make_site(tmp)
    clients = create_ca(federation_id="hospital-apps", out_dir=tmp / "clients")
    issue_certificate(ca=clients, role=Role.SITE, name="records-app")
    issue_certificate(ca=clients, role=Role.COORDINATOR, name="search")  # serverAuth, from the site's own CA
    with toml.open("a") as f:
        f.write('\n[search]\nlisten = "127.0.0.1:0"\nclient_ca = "clients/ca/ca.crt"\n'
                'cert = "clients/search/tls.crt"\nkey = "clients/search/tls.key"\nreload_s = 0.1\ngrace_s = 2.0\n')
    return toml, data


def _client(tmp: Path, port: int, who: str = "app") -> SearchClient:
    if who == "app":
        cert, key = tmp / "clients/records-app/tls.crt", tmp / "clients/records-app/tls.key"
    else:  # a certificate of the federation's CA: valid, but not of the CA the site named for search
        cert, key = tmp / "pki/site-a/tls.crt", tmp / "pki/site-a/tls.key"
    return SearchClient(f"127.0.0.1:{port}", ca_cert=tmp / "clients/ca/ca.crt", cert=cert, key=key, timeout_s=5)


def test_only_clients_of_the_named_ca_get_in(tmp_path: Path) -> None:
    # Prepare
    toml, data = _serving_site(tmp_path)
    cfg = load_config(toml)
    registry = CollectorRegistry()
    with run_search_server(cfg, base=tmp_path, registry=registry) as (_, port, engine):
        # Execute: a client of the named CA
        with _client(tmp_path, port) as client:
            answer = client.search([Query(data.database.image[5], data.database.text[5])], k=3)
            text_only = client.search([Query(None, data.database.text[5])], k=3)
            with pytest.raises(grpc.RpcError) as wrong_dim:
                client.search([Query(np.zeros(data.image_dim + 2), None)], k=3)
            health = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service="pfmh.search.v1.Search"), timeout=5)
        # Execute: a client with a certificate of the federation CA, and one with no certificate
        with _client(tmp_path, port, who="federation") as other, pytest.raises(grpc.RpcError) as foreign:
            other.search([Query(data.database.image[5], data.database.text[5])], k=3)
        bare = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
            (tmp_path / "clients/ca/ca.crt").read_bytes()), options=[("grpc.ssl_target_name_override", "localhost")])
        with pytest.raises(grpc.RpcError) as anonymous:
            health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest(), timeout=5)
        bare.close()
    # Assert
    assert answer.has_ids and answer.hits[0][0].distance == 0 and len(answer.hits[0]) == 3
    assert answer.model_version == engine.view.model.version
    assert len(text_only.hits[0]) == 3
    assert wrong_dim.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the model expects {data.image_dim}" in wrong_dim.value.details()
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    assert registry.get_sample_value("pfmh_search_queries_total", {"outcome": "ok"}) == 2
    assert registry.get_sample_value("pfmh_search_queries_total", {"outcome": "refused"}) == 1
    assert registry.get_sample_value("pfmh_search_archive_records") == len(data.database)
    assert registry.get_sample_value("pfmh_search_request_seconds_count") == 2


def test_reload_under_a_stream_of_queries_loses_none_and_mixes_no_versions(tmp_path: Path) -> None:
    # Prepare: the expected answer of the query under each (model, generation) the server will serve
    toml, data = _serving_site(tmp_path)
    cfg = load_config(toml)
    state = tmp_path / "state" / "site-a"
    image, text = data.query.image[:4], data.query.text[:4]
    present = np.ones((4, 2), bool)
    expected = {}

    def remember() -> None:
        view = open_view(state, archive_of(state))
        answer = view.search(image, text, present, 10)
        expected[(answer.model_version, answer.generation)] = [[(h.record_id, h.distance) for h in q]
                                                               for q in answer.hits]

    remember()
    replies, errors, stop = [], [], threading.Event()
    with run_search_server(cfg, base=tmp_path) as (_, port, engine):
        def stream() -> None:
            with _client(tmp_path, port) as client:
                while not stop.is_set():
                    try:
                        replies.append(client.search([Query(i, t) for i, t in zip(image, text, strict=True)], k=10))
                    except grpc.RpcError as exc:  # any failure is a lost query
                        errors.append(exc)

        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads:
            t.start()
        # Execute: a later round changes the model (re-encode + swap), then the archive grows
        time.sleep(0.3)
        write_model(state, data, seed=9, after_round=2)
        _wait_for(lambda: engine.view.model.version.startswith("r2-"))
        remember()
        time.sleep(0.3)
        model = engine.view.model
        extra = RecordBatch(data.query.image[4:6], data.query.text[4:6], np.ones((2, 2), bool),
                            np.array(["late-1", "late-2"], dtype=object), data.query.labels[4:6].astype(np.uint8))
        archive_of(state).add(extra, model.encode_batch(extra), bits=model.bits, model_version=model.version)
        _wait_for(lambda: len(engine.view.snapshot) == len(data.database) + 2)
        remember()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
    # Assert: nothing lost, three views served, each reply exactly its own view's answer
    assert not errors
    seen = {(r.model_version, r.generation) for r in replies}
    assert seen == set(expected) and len(seen) == 3
    for reply in replies:
        assert [[(h.record_id, h.distance) for h in q] for q in reply.hits] == \
            expected[(reply.model_version, reply.generation)]


def _wait_for(condition, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the server did not reload in time"
        time.sleep(0.05)


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    # Prepare
    toml, data = _serving_site(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "participant.cli", "serve-search", "--config", str(toml)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "search serving on port" in line, proc.stderr.read()  # type: ignore[union-attr]
        port = int(line.rsplit(" ", 1)[1])
        with _client(tmp_path, port) as client:
            assert client.stats().archive_size == len(data.database)
        # Execute
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # Assert
    assert proc.returncode == 0, err
    assert "draining" in out and "Traceback" not in err


def test_serve_without_client_ca_is_one_clear_line(tmp_path: Path) -> None:
    # Prepare
    toml, _ = make_site(tmp_path)
    cfg = load_config(toml)
    # Execute / Assert
    with pytest.raises(Exception, match="search.client_ca is not set"):
        with run_search_server(replace(cfg, search=replace(cfg.search, listen="127.0.0.1:0")), base=tmp_path):
            pass
