"""``check_identity``: a daemon's own certificate, keys and CRL checked against its CA before it starts.

Without it a key that does not belong to the certificate, a certificate of another CA or federation,
or another site's signing key were only found by the peer, as a TLS handshake failure or a
rejected ledger, after the daemon had started (a coordinator serving nobody, a site retrying forever).
Every refusal is one ``SettingsError`` line naming the config file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from proto.settings import SettingsError
from security.errors import CertificateRejected, PkiError
from security.pki import Role, load_signing_key
from security.pki_verify import (
    identity_from_certificate,
    load_certificate,
    load_crl,
    site_signing_public_key,
    verify_peer_certificate,
)

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class OwnIdentity:
    """The config-relative files of one daemon's identity (``signing_key``/``crl`` may be empty)."""

    ca_cert: str
    cert: str
    key: str
    crl: str = ""
    signing_key: str = ""


def check_identity(config: Path | str, files: OwnIdentity, *, role: Role, federation_id: str,
                   name: str | None = None) -> None:
    """Refuse (``SettingsError``) an identity whose files do not belong together.

    Checks: ``tls.ca_cert`` and ``tls.cert`` are PEM certificates; ``tls.crl`` is that CA's current CRL;
    ``tls.cert`` is issued by ``tls.ca_cert`` for ``role`` (and ``name``), valid now and not revoked;
    it is of ``federation_id``; ``tls.key`` is the certificate's key; ``tls.signing_key`` is the
    signing key bound into it.
    """
    base = Path(config).resolve().parent

    def fail(key: str, value: str, why: str) -> SettingsError:
        return SettingsError(f"{config}: tls.{key} = {value!r}: {why}")

    try:
        ca = load_certificate(base / files.ca_cert)
    except CertificateRejected as exc:
        raise fail("ca_cert", files.ca_cert, exc.detail) from None
    crl = None
    if files.crl:
        try:
            crl = load_crl(base / files.crl, ca_cert=ca)
        except PkiError as exc:
            raise fail("crl", files.crl, f"{exc} (tls.ca_cert = {files.ca_cert!r})") from None
    try:
        cert = load_certificate(base / files.cert)
        verify_peer_certificate(cert, ca_cert=ca, allowed_roles={role}, crl=crl, expected_id=name)
    except CertificateRejected as exc:
        raise fail("cert", files.cert, f"{exc} (checked against tls.ca_cert = {files.ca_cert!r})") from None
    cert_federation = identity_from_certificate(cert)[0]
    if cert_federation != federation_id:
        raise fail("cert", files.cert, f"is for federation {cert_federation!r}, the config says "
                                       f"federation_id = {federation_id!r}")
    try:
        key = serialization.load_pem_private_key((base / files.key).read_bytes(), password=None)
    except (OSError, TypeError, ValueError) as exc:
        raise fail("key", files.key, f"not an unencrypted PEM private key ({exc})") from None
    if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
        raise fail("key", files.key, f"is not the key of tls.cert = {files.cert!r}")
    if files.signing_key:
        try:
            signing = load_signing_key(base / files.signing_key)
        except PkiError as exc:
            raise fail("signing_key", files.signing_key, str(exc)) from None
        if signing.public_key().public_bytes(*_SPKI) != site_signing_public_key(cert).public_bytes(*_SPKI):
            raise fail("signing_key", files.signing_key, f"is not the signing key bound into tls.cert = "
                                                         f"{files.cert!r}")
