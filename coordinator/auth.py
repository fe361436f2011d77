"""Peer-certificate authentication: one interceptor whose only job is "who is calling?".

gRPC's TLS layer already refused handshakes without a client certificate, with a certificate
from another CA, or with an expired one (the caller sees UNAVAILABLE). This interceptor then
verifies the handshake's peer certificate again with ``security.pki_verify`` (chain, validity,
CRL, role, federation) and checks the site is enrolled. On success the verified site id is
available to the handler through ``current_site()``; it is never read from a message field.
Failures abort with UNAUTHENTICATED (bad or revoked certificate) or PERMISSION_DENIED (valid
certificate of a site that is not enrolled), and are counted by reason.
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NoReturn

import grpc
from cryptography import x509

from security.errors import CertificateRejected, PkiError, RejectReason
from security.pki import Role
from security.pki_verify import PeerIdentity, load_crl, verify_peer_certificate

logger = logging.getLogger(__name__)
_SITE: contextvars.ContextVar[str] = contextvars.ContextVar("pfmh_site")
NOT_ENROLLED = "not_enrolled"
NO_CERTIFICATE = "no_certificate"


def current_site() -> str:
    """The verified site id of the RPC being handled (set by ``AuthInterceptor``)."""
    return _SITE.get()


class AuthInterceptor(grpc.ServerInterceptor):
    """Verifies every caller's certificate and enrolment before the handler runs.

    Args:
        ca_cert: the federation CA certificate.
        crl_path: the CA's CRL file, re-read when it changes on disk (None: no revocation check).
        enrolled: site ids allowed to call.
        on_failure: collector called with a reason label for every refused call (metrics).
        exempt: full method names that skip authentication (the health service).
    """

    def __init__(self, *, ca_cert: x509.Certificate, crl_path: Path | None, enrolled: Collection[str],
                 on_failure: Callable[[str], None] = lambda reason: None,
                 exempt: Collection[str] = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")) -> None:
        self._ca = ca_cert
        self._crl_path = crl_path
        self._crl: Any = None
        self._crl_mtime = -1.0
        self._enrolled = frozenset(enrolled)
        self._on_failure = on_failure
        self._exempt = frozenset(exempt)

    def _current_crl(self) -> Any:
        if self._crl_path is None:
            return None
        mtime = self._crl_path.stat().st_mtime
        if mtime != self._crl_mtime:  # revocations take effect without a restart
            self._crl = load_crl(self._crl_path, ca_cert=self._ca)
            self._crl_mtime = mtime
        return self._crl

    def authenticate(self, context: grpc.ServicerContext) -> PeerIdentity:
        """Verify the peer; aborts the RPC (raises) on failure."""
        pem = (context.auth_context() or {}).get("x509_pem_cert")
        if not pem:
            self._refuse(context, NO_CERTIFICATE, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        try:
            identity = verify_peer_certificate(pem[0], ca_cert=self._ca, crl=self._current_crl(),
                                               allowed_roles=(Role.SITE,))
        except CertificateRejected as exc:
            self._refuse(context, exc.reason.value, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PkiError as exc:  # e.g. a stale CRL: refuse everyone rather than accept revoked sites
            self._refuse(context, "crl_unusable", grpc.StatusCode.UNAVAILABLE, str(exc))
        if identity.site_id not in self._enrolled:
            self._refuse(context, NOT_ENROLLED, grpc.StatusCode.PERMISSION_DENIED,
                         f"site {identity.site_id!r} holds a valid certificate but is not enrolled in this federation")
        return identity

    def _refuse(self, context: grpc.ServicerContext, reason: str, code: grpc.StatusCode, detail: str) -> NoReturn:
        self._on_failure(reason)
        logger.warning("refused call from %s: %s", context.peer(), detail)
        context.abort(code, detail)
        raise RuntimeError("grpc context.abort returned")  # it raises; this keeps the type checker honest

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            identity = self.authenticate(context)
            token = _SITE.set(identity.site_id)
            try:
                return inner(request, context)
            finally:
                _SITE.reset(token)

        return grpc.unary_unary_rpc_method_handler(authenticated, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


__all__ = ["AuthInterceptor", "current_site", "RejectReason"]
