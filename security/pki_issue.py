"""Issuing identity certificates (ECDSA P-256 for mTLS + a bound Ed25519 signing key), revocation, CRLs.

The CA keeps ``ca/index.json`` (see ``security.pki`` for the layout)::

    {"federation_id": "demo", "crl_number": 3,
     "certificates": [{"serial": "5f1c...", "name": "hospital-a", "role": "site", "not_before": "...",
                       "not_after": "...", "revoked_at": null, "revocation_reason": null}]}

The CRL is always rebuilt from the index, so ``crl.pem`` lists every revoked certificate.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable.atomic_file import atomic_write
from security import pki
from security.errors import PkiError
from security.pki import CertificateAuthority, Role

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_EKU = {Role.SITE: [ExtendedKeyUsageOID.CLIENT_AUTH],
        Role.COORDINATOR: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]}


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One row of the CA index. Times are UTC; ``revoked_at`` is None while the certificate is not revoked."""

    serial: int
    name: str
    role: Role
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: str | None


@dataclass(frozen=True, slots=True)
class IssuedIdentity:
    """Where an identity's files were written, and its certificate. Private keys stay on disk only."""

    directory: Path
    cert: x509.Certificate
    cert_path: Path
    key_path: Path
    signing_key_path: Path
    ca_cert_path: Path


def _san(federation_id: str, role: Role, name: str, hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(pki.spiffe_id(federation_id, role, name))]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _DNS_RE.fullmatch(host):
                raise PkiError(f"host {host!r} is neither an IP address nor a lower-case DNS name; "
                               "use e.g. 127.0.0.1 or localhost") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_certificate(*, ca: CertificateAuthority, role: Role, name: str,
                      hosts: Sequence[str] = ("127.0.0.1", "localhost"), valid_days: int = 365,
                      out_dir: Path | str | None = None, not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None, replace: bool = False, renew: bool = False,
                      now: dt.datetime | None = None) -> IssuedIdentity:
    """Issue a TLS certificate and an Ed25519 signing key for ``name`` into ``<out_dir>/<name>/``.

    Args:
        ca: the loaded CA.
        role: ``Role.SITE`` (EKU clientAuth) or ``Role.COORDINATOR`` (EKU serverAuth + clientAuth).
        name: identity name, ``[a-z0-9-]{1,63}``; the site id (CN and URI SAN).
        hosts: IP addresses / DNS names put in the SAN for TLS hostname checks (loopback by default).
        valid_days: lifetime in days (>= 1) from ``now`` (backdated 5 minutes for clock skew).
        out_dir: PKI root to write into; defaults to ``ca.root``.
        not_before: explicit start of validity (UTC); overrides the default window (e.g. for expiry tests).
        not_after: explicit end of validity (UTC); overrides ``valid_days``.
        replace: overwrite an existing ``<name>/`` identity (the old certificate stays valid until revoked).
        renew: a new certificate and TLS key for an existing identity that keep its Ed25519 signing key,
            so everything it signed (its privacy ledger) still verifies against the new certificate.
            The old certificate stays valid until revoked or expired.
        now: current time (UTC); defaults to the clock.

    Returns:
        The paths written and the certificate.

    Raises:
        PkiError: invalid name, host, role or validity window; the identity exists and neither ``replace``
            nor ``renew`` is given; ``renew`` without an existing identity, or with ``replace``.

    Security:
        ``tls.key`` and ``signing.key`` are written unencrypted (gRPC needs a plain PEM key) with mode 0600.
    """
    pki.validate_name(name)
    if role not in set(Role):
        raise PkiError(f"role {role!r} is not one of {[r.value for r in Role]}")
    role = Role(role)
    start = now or dt.datetime.now(dt.UTC)
    if valid_days < 1 and not_after is None:
        raise PkiError(f"valid_days={valid_days} must be >= 1; pass not_before/not_after for other windows")
    nb = not_before or start - pki.CLOCK_SKEW
    na = not_after or start + dt.timedelta(days=valid_days)
    if na <= nb:
        raise PkiError(f"not_after {na.isoformat()} must be later than not_before {nb.isoformat()}")
    directory = Path(out_dir if out_dir is not None else ca.root) / name
    if replace and renew:
        raise PkiError("replace and renew exclude each other: renew keeps the signing key, replace makes a new one")
    exists = (directory / pki.TLS_CERT).exists()
    if exists and not (replace or renew):
        raise PkiError(f"identity {name!r} already issued at {directory}; renew it (--renew, same signing "
                       "key) or revoke it and pass replace=True (--replace)")
    if renew and not (exists and (directory / pki.SIGNING_KEY).exists()):
        raise PkiError(f"identity {name!r} has no certificate and signing key in {directory} to renew")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = _existing_signing_key(directory / pki.SIGNING_KEY) if renew else Ed25519PrivateKey.generate()
    signing_spki = signing_key.public_key().public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    cert = build_certificate(ca=ca, role=role, name=name, hosts=hosts, tls_public_key=tls_key.public_key(),
                             signing_spki=signing_spki, not_before=nb, not_after=na)
    pem = serialization.Encoding.PEM
    for filename, data, mode in ((pki.TLS_KEY, pki.private_key_pem(tls_key, passphrase=None), 0o600),
                                 (pki.SIGNING_KEY, pki.private_key_pem(signing_key, passphrase=None), 0o600),
                                 (pki.TLS_CERT, cert.public_bytes(pem), 0o644),
                                 (pki.CA_CERT, ca.cert.public_bytes(pem), 0o644)):
        atomic_write(directory / filename, data, mode=mode)
    return IssuedIdentity(directory=directory, cert=cert, cert_path=directory / pki.TLS_CERT,
                          key_path=directory / pki.TLS_KEY, signing_key_path=directory / pki.SIGNING_KEY,
                          ca_cert_path=directory / pki.CA_CERT)


def build_certificate(*, ca: CertificateAuthority, role: Role, name: str, hosts: Sequence[str],
                      tls_public_key: ec.EllipticCurvePublicKey, signing_spki: bytes, not_before: dt.datetime,
                      not_after: dt.datetime) -> x509.Certificate:
    """Sign an identity certificate for public keys made elsewhere, and record it in the CA index first.

    Args:
        tls_public_key: the identity's ECDSA P-256 TLS key.
        signing_spki: DER SubjectPublicKeyInfo of its Ed25519 signing key (bound in ``SIGNING_KEY_OID``).
    """
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.federation_id),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(tls_public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(pki.key_usage(key_cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(_EKU[role]), critical=False)
            .add_extension(_san(ca.federation_id, role, name, hosts), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(tls_public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .add_extension(x509.UnrecognizedExtension(pki.SIGNING_KEY_OID, signing_spki), critical=False)
            .sign(ca.key, hashes.SHA256()))
    index = read_index(ca.root)
    index["certificates"].append({"serial": format(cert.serial_number, "x"), "name": name, "role": role.value,
                                  "not_before": not_before.isoformat(), "not_after": not_after.isoformat(),
                                  "revoked_at": None, "revocation_reason": None})
    _write_index(ca.root, index)  # first: whatever reaches the disk can be revoked
    return cert


def _existing_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{path}: not an Ed25519 key")
    return key


def read_index(root: Path | str) -> dict[str, Any]:
    """The raw CA index (an empty one when the CA has issued nothing yet)."""
    path = Path(root) / pki.CA_DIRNAME / pki.INDEX_FILE
    if not path.exists():
        return {"crl_number": 0, "certificates": []}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _write_index(root: Path, index: dict[str, Any]) -> None:
    data = json.dumps(index, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    atomic_write(root / pki.CA_DIRNAME / pki.INDEX_FILE, data, mode=0o644)


def issued_certificates(root: Path | str) -> list[IssuedCertificate]:
    """Every certificate the CA at ``root`` has issued, in issue order."""
    rows = []
    for row in read_index(root)["certificates"]:
        revoked = row["revoked_at"]
        rows.append(IssuedCertificate(serial=int(row["serial"], 16), name=row["name"], role=Role(row["role"]),
                                      not_before=dt.datetime.fromisoformat(row["not_before"]),
                                      not_after=dt.datetime.fromisoformat(row["not_after"]),
                                      revoked_at=dt.datetime.fromisoformat(revoked) if revoked else None,
                                      revocation_reason=row["revocation_reason"]))
    return rows


def revoke(*, ca: CertificateAuthority, serial: int | None = None, cert: x509.Certificate | None = None,
           reason: x509.ReasonFlags = x509.ReasonFlags.unspecified, crl_valid_days: int = 30,
           now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Revoke one issued certificate (by ``serial`` or ``cert``, exactly one) and publish a new CRL.

    Raises:
        PkiError: neither or both of serial/cert, a serial this CA did not issue, or one already revoked.
    """
    if (serial is None) == (cert is None):
        raise PkiError("pass exactly one of serial= or cert= to revoke()")
    target = cert.serial_number if cert is not None else int(serial or 0)
    when = now or dt.datetime.now(dt.UTC)
    index = read_index(ca.root)
    rows = [r for r in index["certificates"] if int(r["serial"], 16) == target]
    if not rows:
        raise PkiError(f"serial {target:x} was not issued by the CA at {ca.root}; see 'pfmh-ca list'")
    if rows[0]["revoked_at"] is not None:
        raise PkiError(f"serial {target:x} ({rows[0]['name']}) is already revoked "
                       f"since {rows[0]['revoked_at']}")
    rows[0]["revoked_at"] = when.isoformat()
    rows[0]["revocation_reason"] = x509.ReasonFlags(reason).value
    _write_index(ca.root, index)
    return publish_crl(ca=ca, valid_days=crl_valid_days, now=when)


def publish_crl(*, ca: CertificateAuthority, valid_days: int = 30,
                now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Sign a CRL of every revoked certificate (next update in ``valid_days``); write ``ca/crl.pem``."""
    if valid_days < 1:
        raise PkiError(f"CRL valid_days={valid_days} must be >= 1")
    when = now or dt.datetime.now(dt.UTC)
    index = read_index(ca.root)
    index["crl_number"] = int(index.get("crl_number", 0)) + 1
    index["federation_id"] = ca.federation_id
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(when - pki.CLOCK_SKEW).next_update(when + dt.timedelta(days=valid_days))
               .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    for row in index["certificates"]:
        if row["revoked_at"] is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(row["serial"], 16))
                .revocation_date(dt.datetime.fromisoformat(row["revoked_at"]))
                .add_extension(x509.CRLReason(x509.ReasonFlags(row["revocation_reason"])), critical=False)
                .build())
    crl = builder.sign(ca.key, hashes.SHA256())
    _write_index(ca.root, index)  # first: a crash in between skips a CRL number, never reuses one
    crl_pem = crl.public_bytes(serialization.Encoding.PEM)
    atomic_write(ca.root / pki.CA_DIRNAME / pki.CRL_FILE, crl_pem, mode=0o644)
    return crl
