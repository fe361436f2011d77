"""``pfmh-participant serve-search``: the site's search service over mutual-TLS gRPC (proto/search.proto).

``run_search_server`` yields ``(server, port, engine)``. Clients must present a certificate of the
CA named by ``search.client_ca``; anything else fails the TLS handshake. A reload thread looks for
a new model snapshot or archive generation every ``search.reload_s`` (at once on SIGHUP) and swaps
the view between requests (``SearchEngine.refresh``); every reply names the model version and
generation it was computed with. On exit (SIGTERM) health turns NOT_SERVING, new requests are
refused and in-flight ones get ``search.grace_s`` to finish.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from participant.archive_ops import archive_of
from participant.config import SiteConfig
from participant.search_engine import ArchiveView, SearchEngine, SearchRefused
from participant.search_wire import ReplyWriter
from proto import search_pb2 as spb
from proto import search_pb2_grpc as spb_grpc
from proto.settings import SettingsError

logger = logging.getLogger(__name__)
SERVICE_NAME = "pfmh.search.v1.Search"


class SearchMetrics:
    """The search server's Prometheus metrics, on a registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram("pfmh_search_request_seconds", "Search request latency (decode, encode, search)",
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
                                 registry=registry)
        self.queries = Counter("pfmh_search_queries", "Queries answered, by outcome", ["outcome"],
                               registry=registry)
        self.archive_records = Gauge("pfmh_search_archive_records", "Records in the served archive",
                                     registry=registry)
        self.model_round = Gauge("pfmh_search_model_round", "Federation round of the served model",
                                 registry=registry)
        self.model_info = Gauge("pfmh_search_model_info", "1 for the served model version", ["version"],
                                registry=registry)
        self.reloads = Counter("pfmh_search_reloads", "View swaps after a new model or archive", registry=registry)
        self.ok, self.refused = self.queries.labels("ok"), self.queries.labels("refused")  # no per-call lookup

    def served(self, view: ArchiveView) -> None:
        self.archive_records.set(len(view.snapshot))
        self.model_round.set(int(view.model.version.split("-")[0][1:]))
        self.model_info.clear()
        self.model_info.labels(view.model.version).set(1)


def _queries(request: spb.SearchRequest, view: ArchiveView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d_img, d_txt = view.model.image_dim, view.model.text_dim
    q = len(request.queries)
    image, text = np.zeros((q, d_img), np.float32), np.zeros((q, d_txt), np.float32)
    present = np.zeros((q, 2), bool)
    for i, query in enumerate(request.queries):
        for col, (values, out, dim, what) in enumerate(((query.image, image, d_img, "image"),
                                                        (query.text, text, d_txt, "text"))):
            if len(values) == 0:
                continue
            if len(values) != dim:
                raise SearchRefused(f"query {i}: {what} has {len(values)} values, the model expects {dim}")
            out[i] = np.asarray(values, np.float32)
            present[i, col] = True
    if not np.isfinite(image).all() or not np.isfinite(text).all():
        raise SearchRefused("query features must be finite numbers")
    return image, text, present


class SearchServicer(spb_grpc.SearchServicer):
    """Thin: proto to arrays, one view per request, answer to reply bytes (``search_wire``)."""

    def __init__(self, engine: SearchEngine, metrics: SearchMetrics) -> None:
        self.engine, self.metrics = engine, metrics
        self._writer: tuple[ArchiveView | None, ReplyWriter | None] = (None, None)

    def _writer_for(self, view: ArchiveView) -> ReplyWriter:
        served, writer = self._writer
        if served is not view or writer is None:
            writer = ReplyWriter(view.snapshot, view.model.version)
            self._writer = (view, writer)                     # one assignment: threads see either pair
        return writer

    def Search(self, request: spb.SearchRequest, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        """The serialised ``SearchReply`` (registered with an identity serializer, see :func:`add_to_server`)."""
        started = time.perf_counter()
        view = self.engine.view  # one view for the whole request: one model, one generation
        try:
            result = view.search_rows(*_queries(request, view), int(request.k))
        except SearchRefused as exc:
            self.metrics.refused.inc(max(1, len(request.queries)))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        writer = self._writer_for(view)
        reply = writer.reply([writer.result(rows, dists) for rows, dists in
                              zip(result.indices, result.distances, strict=True)])
        self.metrics.ok.inc(len(request.queries))
        self.metrics.latency.observe(time.perf_counter() - started)
        return reply

    def Stats(self, request: spb.StatsRequest, context: grpc.ServicerContext) -> spb.StatsReply:  # noqa: N802
        view = self.engine.view
        return spb.StatsReply(archive_size=len(view.snapshot), model_version=view.model.version,
                              generation=view.snapshot.generation, bits=view.model.bits,
                              image_dim=view.model.image_dim, text_dim=view.model.text_dim,
                              index_ready=view.index.ready)


def add_to_server(servicer: SearchServicer, server: grpc.Server) -> None:
    """``search_pb2_grpc.add_SearchServicer_to_server``, except that ``Search`` returns reply bytes."""
    handlers = {
        "Search": grpc.unary_unary_rpc_method_handler(servicer.Search,
                                                      request_deserializer=spb.SearchRequest.FromString,
                                                      response_serializer=None),
        "Stats": grpc.unary_unary_rpc_method_handler(servicer.Stats, request_deserializer=spb.StatsRequest.FromString,
                                                     response_serializer=spb.StatsReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _credentials(cfg: SiteConfig, base: Path) -> grpc.ServerCredentials:
    s = cfg.search
    for field, what in (("client_ca", "the CA whose certificates clients must present"),
                        ("cert", "the server's certificate (serverAuth)"), ("key", "the server's key")):
        if not getattr(s, field):
            raise SettingsError(f"search.{field} is not set in site.toml: name {what}")
    files = {"search.client_ca": s.client_ca, "search.cert": s.cert, "search.key": s.key}
    for name, value in files.items():
        if not (base / value).is_file():
            raise SettingsError(f"{name} = {value!r}: no such file")
    key, cert, ca = ((base / files[k]).read_bytes() for k in ("search.key", "search.cert", "search.client_ca"))
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def _reload_loop(engine: SearchEngine, every_s: float, wake: threading.Event, stop: threading.Event,
                 metrics: SearchMetrics) -> None:
    while not stop.is_set():
        wake.wait(every_s)
        wake.clear()
        if stop.is_set():
            return
        try:
            if engine.refresh():
                metrics.reloads.inc()
        except Exception as exc:  # noqa: BLE001 - a bad snapshot must not stop serving the current view
            logger.error("reload failed, still serving %s: %s", engine.view.model.version, exc)


@contextlib.contextmanager
def run_search_server(cfg: SiteConfig, *, base: Path, registry: CollectorRegistry | None = None,
                      listen: str | None = None, wake: threading.Event | None = None
                      ) -> Iterator[tuple[grpc.Server, int, SearchEngine]]:
    """Start the search server; yields ``(server, bound port, engine)`` and drains on exit.

    Args:
        wake: set it to reload now (the CLI sets it on SIGHUP).
    """
    metrics = SearchMetrics(registry or CollectorRegistry())
    state = base / cfg.state_dir
    credentials = _credentials(cfg, base)
    engine = SearchEngine(state, archive_of(state), on_swap=metrics.served)
    threading.Thread(target=engine.view.index.prepare, name="pfmh-search-index", daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.search.max_workers,
                                                    thread_name_prefix="pfmh-search"),
                         maximum_concurrent_rpcs=cfg.search.max_workers * 4)
    add_to_server(SearchServicer(engine, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = listen or cfg.search.listen
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop, wake = threading.Event(), wake or threading.Event()
    reloader = threading.Thread(target=_reload_loop, args=(engine, cfg.search.reload_s, wake, stop, metrics),
                                name="pfmh-search-reload", daemon=True)
    reloader.start()
    logger.info("search of %s on port %d: %d records, model %s", cfg.site, port, len(engine.view.snapshot),
                engine.view.model.version)
    try:
        yield server, port, engine
    finally:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        stop.set()
        wake.set()
        server.stop(cfg.search.grace_s).wait()
        reloader.join(timeout=5)
        logger.info("search server stopped")


def serve_until_signal(cfg: SiteConfig, base: Path) -> int:
    """The CLI: serve until SIGTERM/SIGINT (drain), reload on SIGHUP."""
    from prometheus_client import start_http_server

    stop, wake = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: wake.set())
    registry = CollectorRegistry()
    if cfg.search.metrics_listen:
        host, _, metrics_port = cfg.search.metrics_listen.rpartition(":")
        start_http_server(int(metrics_port), addr=host or "127.0.0.1", registry=registry)
    with run_search_server(cfg, base=base, registry=registry, wake=wake) as (_, port, _engine):
        # Everything alive now (torch, the model, the mapped archive's objects) leaves the collector's
        # generations, so a full collection no longer walks it in the middle of a request.
        gc.collect()
        gc.freeze()
        print(f"{cfg.site}: search serving on port {port}", flush=True)
        while not stop.wait(1.0):
            pass
        print(f"{cfg.site}: draining", flush=True)
    return 0
