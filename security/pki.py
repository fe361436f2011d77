"""Federation PKI: the CA, its on-disk layout, and the identity naming rules.

Directory layout (one PKI root, e.g. ``pki/``; every file is written atomically)::

    <root>/ca/ca.crt           self-signed CA certificate (PEM, 0644)
    <root>/ca/ca.key           CA private key (PKCS#8 PEM, 0600; encrypted when a passphrase is given)
    <root>/ca/crl.pem          current CRL signed by the CA (PEM, 0644)
    <root>/ca/index.json       issued certificates: serial, name, role, validity, revocation (0644)
    <root>/<name>/tls.crt      identity certificate (ECDSA P-256, for gRPC mutual TLS)
    <root>/<name>/tls.key      its private key (PKCS#8 PEM, unencrypted as gRPC needs it, 0600)
    <root>/<name>/signing.key  the identity's Ed25519 signing key (PKCS#8 PEM, 0600)
    <root>/<name>/ca.crt       copy of the CA certificate (the trust root handed to gRPC)

Identity encoding: the identity name is the subject CN and the URI SAN
``spiffe://<federation>/<role>/<name>`` (the URI is authoritative; the CN must agree). The Ed25519
signing public key is bound to the certificate in a non-critical extension with the private OID
``1.3.6.1.4.1.55555.1.1`` (``SIGNING_KEY_OID``) whose value is the key's DER SubjectPublicKeyInfo.
55555 is a placeholder enterprise arc: use a registered PEN in production.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from durable.atomic_file import atomic_write
from security.errors import PkiError

SIGNING_KEY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
CA_DIRNAME = "ca"
CA_CERT, CA_KEY, CRL_FILE, INDEX_FILE = "ca.crt", "ca.key", "crl.pem", "index.json"
TLS_CERT, TLS_KEY, SIGNING_KEY = "tls.crt", "tls.key", "signing.key"
CLOCK_SKEW = dt.timedelta(minutes=5)
_NAME_RE = re.compile(r"[a-z0-9-]{1,63}")
_FEDERATION_RE = re.compile(r"[a-z0-9.-]{1,63}")


class Role(enum.StrEnum):
    """What an identity may do: a site is a TLS client; the coordinator a TLS server (and client)."""

    COORDINATOR = "coordinator"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded federation CA; ``root`` is the PKI root directory (the one holding ``ca/``).

    Security:
        Holds the CA private key in memory (kept out of ``repr``). The CA key must not live on the
        coordinator host (DESIGN.md section 1).
    """

    federation_id: str
    root: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name (``[a-z0-9-]{1,63}``, not ``ca``); else PkiError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == CA_DIRNAME:
        raise PkiError(f"invalid identity name {name!r}: must match [a-z0-9-]{{1,63}} and not be 'ca'; "
                       "use e.g. 'hospital-a'")
    return name


def validate_federation_id(federation_id: str) -> str:
    """Return ``federation_id`` if it matches ``[a-z0-9.-]{1,63}`` (a SPIFFE trust domain); else PkiError."""
    if not isinstance(federation_id, str) or not _FEDERATION_RE.fullmatch(federation_id):
        raise PkiError(f"invalid federation id {federation_id!r}: must match [a-z0-9.-]{{1,63}}; "
                       "use e.g. 'demo'")
    return federation_id


def spiffe_id(federation_id: str, role: Role, name: str) -> str:
    """The URI SAN naming an identity: ``spiffe://<federation>/<role>/<name>``."""
    return f"spiffe://{federation_id}/{role.value}/{name}"


def private_key_pem(key: PrivateKeyTypes, *, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of ``key``: encrypted with ``passphrase`` when given, explicitly unencrypted otherwise."""
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm)


def key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    """KeyUsage of a CA (keyCertSign + cRLSign) or of a TLS leaf (digitalSignature only)."""
    return x509.KeyUsage(digital_signature=not key_cert_sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=key_cert_sign, encipher_only=False,
                         decipher_only=False)


def create_ca(*, federation_id: str, out_dir: Path | str, valid_days: int = 3650,
              passphrase: bytes | None = None, now: dt.datetime | None = None) -> CertificateAuthority:
    """Create a self-signed federation CA (ECDSA P-256) and an empty CRL under ``<out_dir>/ca/``.

    Args:
        federation_id: SPIFFE trust domain of the federation (``[a-z0-9.-]{1,63}``); the subject O.
        out_dir: PKI root; must not already hold ``ca/ca.crt``.
        valid_days: CA lifetime in days (>= 1).
        passphrase: encrypts ``ca.key`` when given; ``None`` writes it unencrypted (0600 either way).
        now: creation time (UTC); defaults to the clock.

    Raises:
        PkiError: bad federation id or lifetime, or a CA already exists there.

    Security:
        Keep the PKI root off the coordinator host; deploy only the ``<name>/`` directories.
    """
    from security.pki_issue import publish_crl  # local: pki_issue imports this module

    validate_federation_id(federation_id)
    if valid_days < 1:
        raise PkiError(f"valid_days={valid_days} must be >= 1 for a CA; pass a lifetime in days")
    root = Path(out_dir)
    ca_dir = root / CA_DIRNAME
    if (ca_dir / CA_CERT).exists():
        raise PkiError(f"a CA already exists at {ca_dir}; use another --dir or delete it to start over")
    start = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation_id),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"pfmh federation CA {federation_id}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW).not_valid_after(start + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(key_cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    atomic_write(ca_dir / CA_KEY, private_key_pem(key, passphrase=passphrase), mode=0o600)
    atomic_write(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    ca = CertificateAuthority(federation_id=federation_id, root=root, cert=cert, key=key)
    publish_crl(ca=ca, now=start)
    return ca


def load_ca(root: Path | str, *, passphrase: bytes | None = None) -> CertificateAuthority:
    """Load the CA under ``<root>/ca/``; PkiError if it is missing, malformed or the passphrase is wrong."""
    ca_dir = Path(root) / CA_DIRNAME
    if not (ca_dir / CA_CERT).is_file() or not (ca_dir / CA_KEY).is_file():
        raise PkiError(f"no CA at {ca_dir} (expected {CA_CERT} and {CA_KEY}); "
                       f"run 'pfmh-ca init --dir {root} --federation NAME' first")
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=passphrase)
    except (TypeError, ValueError) as exc:
        raise PkiError(f"cannot load the CA in {ca_dir}: {exc}; check the files and the passphrase") from exc
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or len(orgs) != 1:
        raise PkiError(f"{ca_dir} does not hold a pfmh CA (ECDSA key, one O= federation id in the subject)")
    return CertificateAuthority(federation_id=str(orgs[0].value), root=Path(root), cert=cert, key=key)


def load_signing_key(path: Path | str, *, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an identity's Ed25519 ``signing.key`` (PKCS#8 PEM); PkiError if unreadable or not Ed25519."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
    except (OSError, TypeError, ValueError) as exc:
        raise PkiError(f"cannot load signing key {path}: {exc}; check the path and passphrase") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__}, expected an Ed25519 signing key")
    return key
