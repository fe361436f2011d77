"""The site's mTLS gRPC connection to the coordinator, with retries and long-poll loops.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
exponential backoff and full jitter until ``give_up_s`` passes without success; each retry is
logged at WARNING with the coordinator's address. A submission retried after its first attempt
may have reached the server; the server then answers "duplicate", which counts as success. Every
other status is raised as ``CoordinatorError``.

Every call, long poll and backoff sleep watches the ``stop`` event: once it is set, the call in
flight is cancelled and ``Stopped`` is raised within ``STOP_CHECK_S`` (SIGINT/SIGTERM set it).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from federation.site_round import RoundAbandoned
from participant.config import SiteConfig
from proto import federation_pb2 as pb
from proto import federation_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
__all__ = ["CoordinatorClient", "CoordinatorError", "CoordinatorUnreachable", "RoundAbandoned", "Stopped"]
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
STOP_CHECK_S = 0.25  # how often a call in flight looks at the stop event


class CoordinatorError(Exception):
    """The coordinator refused a call (the status code and its message are kept)."""

    def __init__(self, method: str, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{method}: {code.name}: {detail}")
        self.code = code
        self.detail = detail


class CoordinatorUnreachable(Exception):
    """No successful call for longer than the retry policy allows."""


class Stopped(Exception):
    """The stop event was set (SIGINT/SIGTERM): the call in flight was cancelled."""


class CoordinatorClient:
    """Stub wrapper: ``call`` with retries, ``poll`` until a phase is ready.

    Args:
        cfg: the site config (coordinator address, TLS files, retry policy).
        base: folder that relative paths in ``cfg`` are taken from.
        on_bytes: collector called with (kind, sent, received) bytes per call (metrics).
        stop: once set, calls and waits raise ``Stopped`` within ``STOP_CHECK_S`` (a fresh event if None).
    """

    def __init__(self, cfg: SiteConfig, base: Path,
                 on_bytes: Callable[[str, int, int], None] = lambda kind, sent, received: None,
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        credentials = grpc.ssl_channel_credentials(root_certificates=(base / cfg.tls.ca_cert).read_bytes(),
                                                   private_key=(base / cfg.tls.key).read_bytes(),
                                                   certificate_chain=(base / cfg.tls.cert).read_bytes())
        limit = 256 * 1024 * 1024
        options = [("grpc.ssl_target_name_override", cfg.server_name),
                   ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        self.channel = grpc.secure_channel(cfg.coordinator, credentials, options=options)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.on_bytes = on_bytes
        self.rng = random.Random()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, *, timeout_s: float | None = None, retry: bool = True) -> Any:
        """Unary call with retries on transient failures.

        Args:
            method: the RPC's name.
            request: its request message.
            timeout_s: deadline of each attempt (``rpc_timeout_s`` if None).
            retry: False for one best-effort attempt that ``stop`` does not cancel (e.g. ``Leave`` on the
                way out); it is bounded by ``timeout_s`` and a transient failure raises at once.

        Raises:
            Stopped: ``stop`` was set (only with ``retry``).
            CoordinatorError: a non-transient status.
            CoordinatorUnreachable: no success for ``give_up_s``.
        """
        rpc = getattr(self.stub, method)
        policy = self.cfg.retry
        started, delay, attempt = time.monotonic(), policy.initial_s, 0
        while True:
            attempt += 1
            try:
                reply = self._attempt(rpc, request, timeout_s or self.cfg.rpc_timeout_s, interruptible=retry)
                self.on_bytes(method, request.ByteSize(), reply.ByteSize())
                return reply
            except grpc.RpcError as exc:
                code, detail = exc.code(), exc.details() or ""
                if attempt > 1 and code == grpc.StatusCode.INVALID_ARGUMENT and "duplicate" in detail:
                    logger.info("%s was delivered by an earlier attempt", method)
                    return None
                if code not in TRANSIENT or not retry:
                    raise CoordinatorError(method, code, detail) from None
                if time.monotonic() - started > policy.give_up_s:
                    raise CoordinatorUnreachable(f"{method}: no answer from {self.cfg.coordinator} for "
                                                 f"{policy.give_up_s:.0f}s ({code.name}: {detail})") from None
                sleep = self.rng.uniform(0, delay)
                logger.warning("%s: coordinator %s: %s (%s), retrying in %.1fs", method, self.cfg.coordinator,
                               code.name, detail[:120], sleep)
                if self.stop.wait(sleep):
                    raise Stopped(f"{method}: stopped while retrying {self.cfg.coordinator}") from None
                delay = min(delay * 2, policy.max_s)

    def _attempt(self, rpc: Any, request: Any, timeout_s: float, *, interruptible: bool) -> Any:
        """One attempt; cancelled (``Stopped``) as soon as ``stop`` is set if ``interruptible``."""
        if interruptible and self.stop.is_set():
            raise Stopped("stopped before the call")
        future = rpc.future(request, timeout=timeout_s)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        while not done.wait(STOP_CHECK_S):
            if interruptible and self.stop.is_set():
                future.cancel()
                raise Stopped("stopped during the call")
        return future.result()

    def poll(self, method: str, request: Any, *, deadline_s: float) -> Any:
        """Repeat a long-poll until it is not PENDING; raise RoundAbandoned on ABORTED."""
        until = time.monotonic() + deadline_s
        while True:
            reply = self.call(method, request)
            if reply.status == pb.ABORTED:
                raise RoundAbandoned(getattr(reply, "abort_reason", "") or f"{method}: round aborted")
            if reply.status != pb.PENDING:
                return reply
            if time.monotonic() > until:
                raise RoundAbandoned(f"{method}: phase did not close within {deadline_s:.0f}s")
