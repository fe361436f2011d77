"""Interceptors with one job each: byte counting per site and kind, and error -> status mapping.

Order on the server: authentication (``coordinator.auth``) outermost, then metrics, then errors,
so the metrics and error handlers already know the verified site.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from coordinator.auth import current_site
from coordinator.metrics import CoordinatorMetrics
from proto.settings import SettingsError
from proto.tensors import TensorError
from security.errors import InvalidMessage, RoundAborted, SecurityError, StageOutOfOrder

logger = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (StageOutOfOrder, grpc.StatusCode.FAILED_PRECONDITION),
    (RoundAborted, grpc.StatusCode.ABORTED),
    (InvalidMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (SettingsError, grpc.StatusCode.INVALID_ARGUMENT),
    (SecurityError, grpc.StatusCode.INVALID_ARGUMENT),
)


class MalformedRequest:
    """Stands in for request bytes that do not parse, so the call ends INVALID_ARGUMENT, not INTERNAL."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns a ``MalformedRequest`` instead of raising (grpc would answer INTERNAL)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, but any parse failure is the caller's
            return MalformedRequest(f"{type(exc).__name__}: {exc}"[:200])

    return parse


def _wrap(handler: Any, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]], *,
          tolerant: bool = False) -> Any:
    if handler is None or handler.unary_unary is None:
        return handler
    deserializer = _tolerant(handler.request_deserializer) if tolerant else handler.request_deserializer
    return grpc.unary_unary_rpc_method_handler(wrapper(handler.unary_unary), request_deserializer=deserializer,
                                               response_serializer=handler.response_serializer)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts request and response bytes per verified site and RPC kind."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        kind = handler_call_details.method.rsplit("/", 1)[-1]
        if not handler_call_details.method.startswith("/pfmh.v1."):
            return continuation(handler_call_details)

        def wrapper(inner: Callable[..., Any]) -> Callable[..., Any]:
            def counted(request: Any, context: grpc.ServicerContext) -> Any:
                response = inner(request, context)
                self._metrics.record_rpc(current_site(), kind, request.ByteSize(),
                                         response.ByteSize() if response is not None else 0)
                return response
            return counted

        return _wrap(continuation(handler_call_details), wrapper)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to gRPC status codes; anything unexpected becomes INTERNAL (logged).

    Request bytes that do not parse as the method's message are answered INVALID_ARGUMENT (the handler
    never runs); it must be the innermost interceptor, as its deserializer is the one the server uses.
    """

    def __init__(self, on_reject: Callable[[str, BaseException | None], None] = lambda kind, error: None) -> None:
        self._on_reject = on_reject

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        kind = handler_call_details.method.rsplit("/", 1)[-1]

        def wrapper(inner: Callable[..., Any]) -> Callable[..., Any]:
            def mapped(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, MalformedRequest):
                    self._on_reject(kind, None)
                    logger.info("%s rejected: malformed request (%s)", kind, request.error)
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{kind}: request is not a valid "
                                  f"protobuf message ({request.error})")
                try:
                    return inner(request, context)
                except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                    if context.code() is not None and context.code() != grpc.StatusCode.OK:
                        raise  # already aborted by the handler
                    for cls, code in STATUS_OF:
                        if isinstance(exc, cls):
                            self._on_reject(kind, exc)
                            logger.info("%s rejected: %s", kind, exc)
                            context.abort(code, str(exc))
                    logger.exception("%s failed", kind)
                    context.abort(grpc.StatusCode.INTERNAL, f"{kind} failed: {type(exc).__name__}")
            return mapped

        return _wrap(continuation(handler_call_details), wrapper, tolerant=True)
