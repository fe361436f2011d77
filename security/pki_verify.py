"""Reading and verifying peer identity certificates against the federation CA and CRL.

gRPC's TLS layer checks the chain during the handshake; the auth interceptor then calls
``verify_peer_certificate`` on the handshake's peer certificate for the typed identity and a reason code
(``RejectReason``) per failure. Checks, in order: 1. parse (``malformed``); 2. issuer and CA signature
(``unknown_ca``); 3. validity window (``not_yet_valid`` / ``expired``); 4. CRL (``revoked``);
5. structure: a leaf with a SPIFFE URI SAN agreeing with its CN and a signing-key extension
(``malformed``), of the CA's federation (``id_mismatch``); 6. role allowed and its EKU present
(``wrong_role``); 7. ``expected_id`` (``id_mismatch``).
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.errors import CertificateRejected, PkiError, RejectReason
from security.pki import CA_DIRNAME, CRL_FILE, SIGNING_KEY_OID, Role

_URI_RE = re.compile(r"spiffe://([a-z0-9.-]{1,63})/(site|coordinator)/([a-z0-9-]{1,63})")
_EKU = {Role.SITE: ExtendedKeyUsageOID.CLIENT_AUTH, Role.COORDINATOR: ExtendedKeyUsageOID.SERVER_AUTH}
_MALFORMED = RejectReason.MALFORMED


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """A verified peer: its site id (identity name), role, certificate serial and expiry (UTC)."""

    site_id: str
    role: Role
    serial: int
    not_after: dt.datetime


def load_certificate(source: Path | str | bytes | x509.Certificate) -> x509.Certificate:
    """A certificate from an object, PEM bytes or a PEM file path; CertificateRejected(malformed) if bad."""
    if isinstance(source, x509.Certificate):
        return source
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateRejected(_MALFORMED, f"not a PEM certificate: {exc}") from exc


def identity_from_certificate(cert: x509.Certificate) -> tuple[str, Role, str]:
    """``(federation_id, role, name)`` from the single SPIFFE URI SAN, checked against the subject CN.

    Raises:
        CertificateRejected: ``malformed`` when the SAN is missing or ambiguous or disagrees with the CN.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected(_MALFORMED, "certificate has no subjectAltName") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    found = [m for uri in uris if (m := _URI_RE.fullmatch(uri))]
    if len(found) != 1:
        raise CertificateRejected(_MALFORMED, f"expected one spiffe://<federation>/<role>/<name> URI SAN, "
                                  f"found {len(found)}")
    federation_id, role, name = found[0].groups()
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [name]:
        raise CertificateRejected(_MALFORMED, f"subject CN {cns} does not match the URI SAN name {name!r}")
    return federation_id, Role(role), name


def site_id_from_certificate(cert: x509.Certificate) -> str:
    """The identity name (a site id, or the coordinator's name) ``cert`` was issued to."""
    return identity_from_certificate(cert)[2]


def site_signing_public_key(cert: x509.Certificate) -> Ed25519PublicKey:
    """The Ed25519 signing public key bound into ``cert`` (extension ``SIGNING_KEY_OID``).

    Raises:
        CertificateRejected: ``malformed`` when the extension is absent or holds no Ed25519 key.

    Security:
        Trust the key only after ``verify_peer_certificate`` accepted ``cert``.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected(_MALFORMED, f"no signing-key extension {SIGNING_KEY_OID.dotted_string}; "
                                  "re-issue with 'pfmh-ca issue'") from exc
    try:
        if not isinstance(ext, x509.UnrecognizedExtension):
            raise ValueError(f"unexpected extension type {type(ext).__name__}")
        key = serialization.load_der_public_key(ext.value)
    except ValueError as exc:
        raise CertificateRejected(_MALFORMED, f"signing-key extension holds no public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateRejected(_MALFORMED, f"signing-key extension: {type(key).__name__}, not Ed25519")
    return key


def load_crl(source: Path | str | bytes, *, ca_cert: x509.Certificate,
             now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Load a PEM CRL (file, PKI root holding ``ca/crl.pem``, or bytes); check it is current and CA-signed.

    Raises:
        PkiError: unreadable CRL, not issued and signed by ``ca_cert``, or past its next update.
    """
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source) / CA_DIRNAME / CRL_FILE if Path(source).is_dir() else Path(source)
        if not path.is_file():
            raise PkiError(f"no CRL at {path}; publish one with 'pfmh-ca crl'")
        data = path.read_bytes()
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PkiError(f"not a PEM CRL: {exc}") from exc
    check_crl(crl, ca_cert=ca_cert, now=now)
    return crl


def check_crl(crl: x509.CertificateRevocationList, *, ca_cert: x509.Certificate,
              now: dt.datetime | None = None) -> None:
    """Raise PkiError unless ``crl`` is issued and signed by ``ca_cert`` and not past its next update.

    Security:
        Fails closed: a stale CRL stops every verification until a fresh one is published and reloaded.
    """
    when = now or dt.datetime.now(dt.UTC)
    ca_key = ca_cert.public_key()
    if (crl.issuer != ca_cert.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey)
            or not crl.is_signature_valid(ca_key)):
        raise PkiError(f"the CRL of {crl.issuer.rfc4514_string()} is not signed by the federation CA "
                       f"{ca_cert.subject.rfc4514_string()}; load this CA's CRL")
    if crl.next_update_utc is None or crl.next_update_utc < when:
        raise PkiError(f"stale CRL: next update {crl.next_update_utc} is before {when.isoformat()}; "
                       "publish a fresh one with 'pfmh-ca crl' and reload it")


def verify_peer_certificate(cert: x509.Certificate | bytes | str | Path, *, ca_cert: x509.Certificate,
                            allowed_roles: Collection[Role],
                            crl: x509.CertificateRevocationList | None = None, expected_id: str | None = None,
                            now: dt.datetime | None = None) -> PeerIdentity:
    """Verify ``cert`` as an identity of the federation of ``ca_cert`` and return who it is.

    Args:
        cert: the peer certificate: an object, PEM ``bytes``, or a PEM file path (``str`` or ``Path``).
        ca_cert: the federation CA certificate, the only trust anchor (chains have length one).
        allowed_roles: roles accepted here (e.g. ``{Role.SITE}`` on the coordinator's service).
        crl: the CA's current CRL; ``None`` skips revocation (only for tests and bootstrapping).
        expected_id: when given, the identity name the peer must have.
        now: verification time (UTC); defaults to the clock.

    Raises:
        CertificateRejected: with a ``RejectReason`` (see the module docstring for the order of checks).
        PkiError: the CRL is stale or not this CA's (a verifier misconfiguration; fails closed).
    """
    when = now or dt.datetime.now(dt.UTC)
    peer = load_certificate(cert)
    try:
        peer.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateRejected(RejectReason.UNKNOWN_CA, f"issuer {peer.issuer.rfc4514_string()} is not "
                                  f"the federation CA ({type(exc).__name__}); use a certificate from "
                                  "this federation's 'pfmh-ca'") from exc
    if when < peer.not_valid_before_utc:
        raise CertificateRejected(RejectReason.NOT_YET_VALID, f"valid from {peer.not_valid_before_utc}, "
                                  f"now {when}; check the clocks")
    if when > peer.not_valid_after_utc:
        raise CertificateRejected(RejectReason.EXPIRED, f"expired {peer.not_valid_after_utc}, now {when}; "
                                  "issue a new certificate")
    if crl is not None:
        check_crl(crl, ca_cert=ca_cert, now=when)
        if (revoked := crl.get_revoked_certificate_by_serial_number(peer.serial_number)) is not None:
            raise CertificateRejected(RejectReason.REVOKED, f"serial {peer.serial_number:x} revoked "
                                      f"{revoked.revocation_date_utc}; issue a new certificate")
    try:
        is_ca = peer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected(_MALFORMED, f"missing extension: {exc}") from exc
    if is_ca:
        raise CertificateRejected(_MALFORMED, "a CA certificate cannot be a peer identity")
    federation_id, role, name = identity_from_certificate(peer)
    site_signing_public_key(peer)
    ca_federation = [str(a.value) for a in ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if [federation_id] != ca_federation:
        raise CertificateRejected(RejectReason.ID_MISMATCH, f"certificate is for federation "
                                  f"{federation_id!r}, the CA for {ca_federation}")
    if role not in allowed_roles:
        raise CertificateRejected(RejectReason.WRONG_ROLE, f"role {role.value!r} is not accepted here; "
                                  f"allowed: {sorted(r.value for r in allowed_roles)}")
    if _EKU[role] not in eku:
        raise CertificateRejected(RejectReason.WRONG_ROLE, f"role {role.value!r} lacks extended key usage "
                                  f"{_EKU[role].dotted_string}; re-issue it with 'pfmh-ca issue'")
    if expected_id is not None and name != expected_id:
        raise CertificateRejected(RejectReason.ID_MISMATCH, f"certificate is for {name!r}, expected "
                                  f"{expected_id!r}; connect with that identity's certificate")
    return PeerIdentity(site_id=name, role=role, serial=peer.serial_number,
                        not_after=peer.not_valid_after_utc)
