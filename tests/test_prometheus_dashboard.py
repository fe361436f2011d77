"""A real Prometheus server scrapes a coordinator during a short real federation on 127.0.0.1, then every
PromQL expression of every Grafana panel is evaluated through Prometheus' HTTP API and must return data.

Needs the ``prometheus`` binary (Debian package ``prometheus``; ``.ci/run`` installs it). Without it the
test is skipped with that reason.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from coordinator.server import run_server, upload_layout
from proto import federation_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.netfed import FED, channel, coordinator_config, join_sites, make_pki

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "pfmh.json"
SITES = ["site-a", "site-b", "site-c", "site-d"]
# Grafana's built-in interval variables, as Grafana would expand them for a short time range.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _panel_queries() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(panel: dict) -> None:
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((panel.get("title", "?"), target["expr"]))
        for child in panel.get("panels", []):
            walk(child)

    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        walk(panel)
    return out


def _query(base: str, expr: str) -> dict:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _federate(port: int, pki, cfg) -> None:  # noqa: ANN001
    """One completed round with a dropout, one aborted round, site reports, and refused calls."""
    layout = upload_layout(cfg.federation)
    sites = join_sites(port, pki, cfg, SITES)
    configs = [s.wait_round(0) for s in sites]
    for s, c in zip(sites, configs, strict=True):
        s.advertise(c)
    for s in sites:
        s.share_keys()
    for s in sites[:3]:  # site-d drops out after share-keys
        s.masked_input(np.ones(layout.length))
    for s in sites[:3]:
        s.sign_survivors()
    for s in sites[:3]:
        s.unmask()
    first = sites[0].result()
    assert first.status == pb.READY
    for k, s in enumerate(sites[:3]):
        s.stub.ReportMetrics(pb.SiteMetrics(federation_id=FED, round=first.round, bits=8, map=0.5 + 0.1 * k,
                                            epsilon_spent=1.0 + k, epsilon_max=8.0, noise_multiplier=2.0), timeout=5)
    # a second round that aborts: only two sites advertise
    configs = [s.wait_round(first.round) for s in sites[:3]]
    for s, c in zip(sites[:2], configs[:2], strict=True):
        s.advertise(c)
    assert sites[0].poll("GetAdvertisements").status == pb.ABORTED
    # refused calls: a revoked-looking stranger is simply not enrolled
    intruder = channel(port, *pki.site_files("intruder"))
    with pytest.raises(grpc.RpcError):
        sites[0].stub.AdvertiseKeys(pb.AdvertiseKeysRequest(federation_id=FED, round=99), timeout=5)
    from proto import federation_pb2_grpc as pb_grpc

    with pytest.raises(grpc.RpcError):
        pb_grpc.FederationStub(intruder).GetStatus(pb.StatusRequest(), timeout=5)
    intruder.close()


def test_every_dashboard_query_returns_data_from_a_live_run(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server is not installed (apt-get install prometheus; .ci/run does this)")
    # Prepare: a coordinator with its metrics endpoint, and Prometheus scraping it every second
    pki = make_pki(tmp_path, [*SITES, "intruder"])
    cfg = coordinator_config(tmp_path, SITES, min_sites=3, phase_timeout_s=2.0, train_timeout_s=3.0)
    cfg = replace(cfg, server=replace(cfg.server, liveness_s=60.0, gather_s=0.5))
    registry = CollectorRegistry()
    metrics_port, prom_port = _free_port(), _free_port()
    http_server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: pfmh-coordinator\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=2).read()  # noqa: S310
                break
            except OSError:
                assert prom.poll() is None, prom.stderr.read().decode() if prom.stderr else "prometheus exited"
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.3)
        # Execute: a short real federation while Prometheus scrapes
        with run_server(cfg, base_dir=tmp_path, registry=registry) as (_, port, _engine):
            time.sleep(2)  # a scrape before anything happens, so increase() sees the rise
            _federate(port, pki, cfg)
            time.sleep(4)  # several scrapes after the run
        # Assert: every panel query parses and returns data
        failures = []
        queries = _panel_queries()
        assert len(queries) >= 10
        for title, expr in queries:
            answer = _query(base, expr)
            if answer.get("status") != "success" or not answer["data"]["result"]:
                failures.append(f"{title}: {expr} -> {answer}")
        assert not failures, "\n".join(failures)
    finally:
        prom.terminate()
        prom.wait(20)
        http_server.shutdown()
