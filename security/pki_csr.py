"""Site-held keys: a site makes its own TLS and Ed25519 signing keys and a CSR; the CA signs; the site installs.

Three steps, each on its own machine::

    site:  create_request   -> <dir>/tls.key, <dir>/signing.key (0600, never leave <dir>), <dir>/request.csr
    CA:    sign_request     -> a certificate (the CA sees only public keys and the CSR)
    site:  install_certificate -> <dir>/tls.crt, <dir>/ca.crt, after checking they match the site's own keys

The CSR is a PKCS#10 request signed with the new TLS key (proof of possession of that key). It carries the
subject (CN = name, O = federation), the SPIFFE URI SAN ``spiffe://<federation>/<role>/<name>`` plus the
host SANs, the Ed25519 signing public key in the ``SIGNING_KEY_OID`` extension, and in ``SIGNING_POP_OID``
an Ed25519 signature over ``"pfmh-csr-v1/signing-key-pop\\0" || DER(TLS public key)``: proof that the site
holds the signing key too. Renewal (``renew=True``) makes a new TLS key and CSR and keeps ``signing.key``,
so everything the site signed (its privacy ledger) verifies under the new certificate as well.

Security:
    The CA never generates, receives or stores a site's private key. ``sign_request`` checks the request's
    signature, both key types, the proof of possession, the name and federation, and that the role is one
    the caller allows (``Role.SITE`` by default); everything else is refused with a ``PkiError``.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Collection, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from durable.atomic_file import atomic_write
from security import pki
from security.errors import CertificateRejected, PkiError
from security.pki import CertificateAuthority, Role
from security.pki_issue import _existing_signing_key, _san, build_certificate
from security.pki_verify import (
    PeerIdentity,
    identity_from_certificate,
    site_signing_public_key,
    verify_peer_certificate,
)

SIGNING_POP_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.2")
REQUEST_FILE = "request.csr"
_POP_LABEL = b"pfmh-csr-v1/signing-key-pop\x00"
_DER, _SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def create_request(*, federation_id: str, name: str, directory: Path | str, role: Role = Role.SITE,
                   hosts: Sequence[str] = ("127.0.0.1", "localhost"), renew: bool = False) -> Path:
    """Site side: new TLS key (and signing key unless ``renew``) in ``directory``, and the CSR; returns its path.

    Raises:
        PkiError: a bad name or host; keys already there (without ``renew``); ``renew`` without a signing key.
    """
    pki.validate_federation_id(federation_id)
    pki.validate_name(name)
    folder = Path(directory)
    signing_path = folder / pki.SIGNING_KEY
    if renew:
        if not signing_path.is_file():
            raise PkiError(f"nothing to renew: no {signing_path}; enrol first without --renew")
        signing_key = _existing_signing_key(signing_path)
    else:
        if signing_path.exists() or (folder / pki.TLS_KEY).exists():
            raise PkiError(f"{folder} already holds keys; renew them (--renew keeps the signing key) or use an "
                           f"empty folder")
        signing_key = Ed25519PrivateKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    pop = signing_key.sign(_POP_LABEL + tls_key.public_key().public_bytes(_DER, _SPKI))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation_id),
                                    x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(_san(federation_id, Role(role), name, hosts), critical=False)
           .add_extension(x509.UnrecognizedExtension(pki.SIGNING_KEY_OID,
                                                     signing_key.public_key().public_bytes(_DER, _SPKI)),
                          critical=False)
           .add_extension(x509.UnrecognizedExtension(SIGNING_POP_OID, pop), critical=False)
           .sign(tls_key, hashes.SHA256()))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(folder / pki.TLS_KEY, pki.private_key_pem(tls_key, passphrase=None), mode=0o600)
    if not renew:
        atomic_write(signing_path, pki.private_key_pem(signing_key, passphrase=None), mode=0o600)
    atomic_write(folder / REQUEST_FILE, csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return folder / REQUEST_FILE


def _extension(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier, what: str) -> bytes:
    try:
        ext = csr.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise PkiError(f"the request has no {what} extension {oid.dotted_string}; make it with "
                       f"'pfmh-participant enroll'") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise PkiError(f"the request's {what} extension is malformed")
    return ext.value


def sign_request(*, ca: CertificateAuthority, csr_pem: bytes, expected_name: str | None = None,
                 allowed_roles: Collection[Role] = (Role.SITE,), valid_days: int = 365,
                 now: dt.datetime | None = None) -> x509.Certificate:
    """CA side: check a CSR and issue its certificate (recorded in the CA index; revocable by serial).

    Raises:
        PkiError: not a PEM CSR; bad CSR signature; a TLS key that is not ECDSA P-256; a signing key that is
            not Ed25519 or whose proof of possession fails; a subject or SAN that is not exactly one
            ``spiffe://<this federation>/<role>/<name>`` agreeing with CN and O; a role not allowed; a name
            other than ``expected_name``; hosts that are not IPs or DNS names.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("the request's signature does not verify: it was not made with the key it carries")
    tls_public = csr.public_key()
    if not isinstance(tls_public, ec.EllipticCurvePublicKey) or not isinstance(tls_public.curve, ec.SECP256R1):
        raise PkiError(f"the request's TLS key is a {type(tls_public).__name__}, expected ECDSA P-256")
    spki = _extension(csr, pki.SIGNING_KEY_OID, "signing-key")
    try:
        signing_public = serialization.load_der_public_key(spki)
    except ValueError as exc:
        raise PkiError(f"the request's signing-key extension holds no public key: {exc}") from None
    if not isinstance(signing_public, Ed25519PublicKey):
        raise PkiError(f"the request's signing key is a {type(signing_public).__name__}, expected Ed25519")
    try:
        signing_public.verify(_extension(csr, SIGNING_POP_OID, "proof-of-possession"),
                              _POP_LABEL + tls_public.public_bytes(_DER, _SPKI))
    except InvalidSignature:
        raise PkiError("the request's proof of possession of the signing key does not verify") from None
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # the same SAN/CN rules as for certificates (it reads only .extensions and .subject)
        federation_id, role, name = identity_from_certificate(csr)  # type: ignore[arg-type]
    except (x509.ExtensionNotFound, CertificateRejected) as exc:
        raise PkiError(f"the request does not name one identity: {exc}") from None
    orgs = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if federation_id != ca.federation_id or orgs != [ca.federation_id]:
        raise PkiError(f"the request is for federation {federation_id!r} (O={orgs}), this CA is "
                       f"{ca.federation_id!r}")
    if role not in allowed_roles:
        raise PkiError(f"the request asks for role {role.value!r}; allowed here: "
                       f"{sorted(r.value for r in allowed_roles)} (pass --role to sign another role)")
    if expected_name is not None and name != expected_name:
        raise PkiError(f"the request is for {name!r}, but you expected {expected_name!r}; refuse it")
    hosts = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _san(ca.federation_id, role, name, [host])  # raises on a bad DNS name
    start = now or dt.datetime.now(dt.UTC)
    if valid_days < 1:
        raise PkiError(f"valid_days={valid_days} must be >= 1")
    return build_certificate(ca=ca, role=role, name=name, hosts=hosts, tls_public_key=tls_public,
                             signing_spki=spki, not_before=start - pki.CLOCK_SKEW,
                             not_after=start + dt.timedelta(days=valid_days))


def install_certificate(*, directory: Path | str, cert_pem: bytes, ca_cert_pem: bytes,
                        allowed_roles: Collection[Role] = (Role.SITE,)) -> PeerIdentity:
    """Site side: check the certificate is this CA's, for this folder's TLS and signing keys; write it.

    Raises:
        PkiError: the certificate or CA does not load, the certificate does not verify against the CA, or
            its TLS key or signing key is not the one in ``directory``.
    """
    folder = Path(directory)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        identity = verify_peer_certificate(cert, ca_cert=ca_cert, allowed_roles=allowed_roles)
        tls_key = serialization.load_pem_private_key((folder / pki.TLS_KEY).read_bytes(), password=None)
    except (ValueError, TypeError, OSError, CertificateRejected) as exc:
        raise PkiError(f"cannot install this certificate in {folder}: {exc}") from None
    if tls_key.public_key().public_bytes(_DER, _SPKI) != cert.public_key().public_bytes(_DER, _SPKI):
        raise PkiError(f"the certificate is not for the TLS key in {folder / pki.TLS_KEY}; install the one the "
                       f"CA signed for this folder's latest request")
    signing = _existing_signing_key(folder / pki.SIGNING_KEY)
    if signing.public_key() != site_signing_public_key(cert):
        raise PkiError(f"the certificate binds another signing key than {folder / pki.SIGNING_KEY}")
    pem = serialization.Encoding.PEM
    atomic_write(folder / pki.TLS_CERT, cert.public_bytes(pem), mode=0o644)
    atomic_write(folder / pki.CA_CERT, ca_cert.public_bytes(pem), mode=0o644)
    return identity
