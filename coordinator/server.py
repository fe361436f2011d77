"""``run_server``: the coordinator's mTLS gRPC server and round driver, as one context manager.

Yields ``(server, port, engine)``; on exit it drains: health turns NOT_SERVING, the round in
flight is aborted (nothing revealed, sites are told), in-flight RPCs get ``grace_s`` to finish.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from coordinator.auth import AuthInterceptor, current_site
from coordinator.config import CoordinatorConfig
from coordinator.interceptors import ErrorInterceptor, MetricsInterceptor
from coordinator.ledgers import LedgerStore
from coordinator.metrics import CoordinatorMetrics
from coordinator.persistence import StateStore
from coordinator.rounds import RoundEngine
from coordinator.servicer import FederationServicer
from federation.layout import upload_layout
from proto import federation_pb2_grpc as pb_grpc
from security.errors import InvalidMessage
from security.pki_verify import load_certificate

logger = logging.getLogger(__name__)
SERVICE_NAME = "pfmh.v1.Federation"


def _rejected(metrics: CoordinatorMetrics, engine: RoundEngine, kind: str, error: BaseException | None) -> None:
    """A message was rejected: count it by kind, and by site for the repeated-offence exclusion."""
    metrics.rejected.labels(kind).inc()
    engine.note_invalid(current_site(), kind, error if error is not None else InvalidMessage("malformed request"))


def _credentials(cfg: CoordinatorConfig, base: Path) -> grpc.ServerCredentials:
    key = (base / cfg.tls.key).read_bytes()
    cert = (base / cfg.tls.cert).read_bytes()
    ca = (base / cfg.tls.ca_cert).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


@contextlib.contextmanager
def run_server(cfg: CoordinatorConfig, *, base_dir: Path | str = ".", registry: CollectorRegistry | None = None,
               listen: str | None = None) -> Iterator[tuple[grpc.Server, int, RoundEngine]]:
    """Start the coordinator; yields ``(server, bound port, engine)`` and drains on exit.

    Args:
        cfg: the loaded configuration.
        base_dir: folder that relative paths in ``cfg`` are taken from (the config file's folder).
        registry: Prometheus registry for the metrics (a fresh one if None).
        listen: override of ``cfg.server.listen`` (e.g. ``127.0.0.1:0`` in tests).
    """
    base = Path(base_dir)
    registry = registry or CollectorRegistry()
    metrics = CoordinatorMetrics(registry, sites=cfg.sites)
    state_dir = base / cfg.state_dir
    engine = RoundEngine(cfg.federation, sites=cfg.sites, layout=upload_layout(cfg.federation),
                         store=StateStore(state_dir), metrics=metrics, liveness_s=cfg.server.liveness_s,
                         gather_s=cfg.server.gather_s, exclude_rounds=cfg.server.exclude_rounds,
                         max_invalid_messages=cfg.server.max_invalid_messages)
    ledgers = LedgerStore(state_dir)
    auth = AuthInterceptor(ca_cert=load_certificate(base / cfg.tls.ca_cert),
                           crl_path=(base / cfg.tls.crl) if cfg.tls.crl else None, enrolled=cfg.sites,
                           on_failure=lambda reason: metrics.auth_failures.labels(reason).inc())
    limit = cfg.server.max_message_mb * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
               ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
               ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
               ("grpc.keepalive_permit_without_calls", 1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.server.max_workers,
                                                    thread_name_prefix="pfmh-rpc"),
                         interceptors=[auth, MetricsInterceptor(metrics),
                                       ErrorInterceptor(lambda kind, error: _rejected(metrics, engine, kind, error))],
                         options=options, maximum_concurrent_rpcs=cfg.server.max_workers * 4)
    servicer = FederationServicer(engine, metrics, long_poll_s=cfg.server.long_poll_s, on_ledger=ledgers.receive,
                                  ledger_head=ledgers.head)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(listen or cfg.server.listen, _credentials(cfg, base))
    if port == 0:
        raise OSError(f"cannot listen on {listen or cfg.server.listen}")
    server.start()
    driver = threading.Thread(target=engine.run_forever, name="pfmh-rounds", daemon=True)
    driver.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("coordinator of federation %s listening on port %d", cfg.federation.federation_id, port)
    try:
        yield server, port, engine
    finally:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        engine.stop()
        driver.join(timeout=cfg.server.grace_s + 5)
        server.stop(cfg.server.grace_s).wait()
        logger.info("coordinator stopped")
