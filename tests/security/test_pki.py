"""Tests for security.pki / pki_issue / pki_verify: CA, certificates, CRL, peer verification, gRPC mTLS."""
from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from security.errors import CertificateRejected, PkiError, RejectReason
from security.pki import CertificateAuthority, Role, create_ca, load_ca, load_signing_key, validate_name
from security.pki_issue import IssuedIdentity, issue_certificate, issued_certificates, publish_crl, revoke
from security.pki_verify import (
    load_certificate,
    load_crl,
    site_id_from_certificate,
    site_signing_public_key,
    verify_peer_certificate,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ANY_ROLE = frozenset(Role)


@dataclass
class Pki:
    ca: CertificateAuthority
    site: IssuedIdentity
    coordinator: IssuedIdentity
    foreign: IssuedIdentity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca(federation_id="demo", out_dir=root / "fed", now=NOW)
    site = issue_certificate(ca=ca, role=Role.SITE, name="hospital-a", now=NOW)
    coordinator = issue_certificate(ca=ca, role=Role.COORDINATOR, name="coordinator", now=NOW)
    other = create_ca(federation_id="demo", out_dir=root / "other", now=NOW)
    foreign = issue_certificate(ca=other, role=Role.SITE, name="hospital-a", now=NOW)
    return Pki(ca=ca, site=site, coordinator=coordinator, foreign=foreign)


def _reject(cert: x509.Certificate | bytes, pki: Pki, **kwargs: object) -> RejectReason:
    kwargs.setdefault("allowed_roles", ANY_ROLE)
    kwargs.setdefault("now", NOW)
    with pytest.raises(CertificateRejected) as info:
        verify_peer_certificate(cert, ca_cert=pki.ca.cert, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_ca_files_extensions_and_modes(pki: Pki) -> None:
    # Prepare
    ca_dir = pki.ca.root / "ca"
    # Execute
    loaded = load_ca(pki.ca.root)
    constraints = pki.ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = pki.ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    # Assert
    assert loaded.federation_id == "demo" and loaded.cert == pki.ca.cert
    assert constraints.ca and usage.key_cert_sign and usage.crl_sign
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert (ca_dir / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert {p.name for p in ca_dir.iterdir()} == {"ca.crt", "ca.key", "crl.pem", "index.json"}
    assert "key=" not in repr(pki.ca)


def test_encrypted_ca_key_needs_passphrase(tmp_path: Path) -> None:
    # Prepare
    create_ca(federation_id="fed.example", out_dir=tmp_path, passphrase=b"correct horse")
    # Execute / Assert
    assert (tmp_path / "ca" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(PkiError, match="passphrase"):
        load_ca(tmp_path)
    with pytest.raises(PkiError, match="passphrase"):
        load_ca(tmp_path, passphrase=b"wrong")
    assert load_ca(tmp_path, passphrase=b"correct horse").federation_id == "fed.example"


def test_create_ca_refuses_existing_and_bad_ids(pki: Pki, tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(PkiError, match="already exists"):
        create_ca(federation_id="demo", out_dir=pki.ca.root)
    with pytest.raises(PkiError, match="federation id"):
        create_ca(federation_id="Demo Fed", out_dir=tmp_path)
    with pytest.raises(PkiError, match="no CA"):
        load_ca(tmp_path / "missing")


def test_site_certificate_verifies_and_carries_identity(pki: Pki) -> None:
    # Prepare
    cert = pki.site.cert
    # Execute
    peer = verify_peer_certificate(cert.public_bytes(serialization.Encoding.PEM), ca_cert=pki.ca.cert,
                                   crl=load_crl(pki.ca.root, ca_cert=pki.ca.cert, now=NOW),
                                   allowed_roles={Role.SITE}, expected_id="hospital-a", now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # Assert
    assert peer.site_id == "hospital-a" and peer.role is Role.SITE and peer.serial == cert.serial_number
    assert peer.not_after == NOW + dt.timedelta(days=365)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://demo/site/hospital-a"]
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert site_id_from_certificate(cert) == "hospital-a"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_coordinator_certificate_has_loopback_san_and_server_eku(pki: Pki) -> None:
    # Prepare
    cert = load_certificate(pki.coordinator.cert_path)
    # Execute
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    peer = verify_peer_certificate(str(pki.coordinator.cert_path), ca_cert=pki.ca.cert,
                                   allowed_roles={Role.COORDINATOR}, now=NOW)
    # Assert
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert peer.role is Role.COORDINATOR and peer.site_id == "coordinator"


def test_identity_files_and_modes(pki: Pki) -> None:
    # Prepare
    directory = pki.site.directory
    # Execute
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    # Assert
    assert modes == {"tls.crt": 0o644, "tls.key": 0o600, "signing.key": 0o600, "ca.crt": 0o644}
    assert load_certificate(directory / "ca.crt") == pki.ca.cert


def test_signing_key_extension_matches_written_key(pki: Pki) -> None:
    # Prepare
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    # Execute
    written = load_signing_key(pki.site.signing_key_path).public_key().public_bytes(*raw)
    bound = site_signing_public_key(pki.site.cert).public_bytes(*raw)
    other = site_signing_public_key(pki.coordinator.cert).public_bytes(*raw)
    # Assert
    assert written == bound and len(bound) == 32
    assert other != bound


def test_foreign_ca_rejected(pki: Pki) -> None:
    # Execute / Assert
    assert _reject(pki.foreign.cert, pki) is RejectReason.UNKNOWN_CA


def test_expired_and_not_yet_valid_rejected(pki: Pki, tmp_path: Path) -> None:
    # Prepare
    old = issue_certificate(ca=pki.ca, role=Role.SITE, name="old-site", out_dir=tmp_path,
                            not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    # Execute / Assert
    assert _reject(old.cert, pki) is RejectReason.EXPIRED
    assert _reject(pki.site.cert, pki, now=NOW + dt.timedelta(days=366)) is RejectReason.EXPIRED
    assert _reject(pki.site.cert, pki, now=NOW - dt.timedelta(hours=1)) is RejectReason.NOT_YET_VALID


def test_revoked_rejected_and_crl_updated(pki: Pki, tmp_path: Path) -> None:
    # Prepare
    victim = issue_certificate(ca=pki.ca, role=Role.SITE, name="victim", out_dir=tmp_path, now=NOW)
    # Execute
    revoke(ca=pki.ca, cert=victim.cert, reason=x509.ReasonFlags.key_compromise, now=NOW)
    crl = load_crl(pki.ca.root / "ca" / "crl.pem", ca_cert=pki.ca.cert, now=NOW)
    entry = crl.get_revoked_certificate_by_serial_number(victim.cert.serial_number)
    # Assert
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert _reject(victim.cert, pki, crl=crl) is RejectReason.REVOKED
    verify_peer_certificate(pki.site.cert, ca_cert=pki.ca.cert, crl=crl, allowed_roles=ANY_ROLE, now=NOW)
    rows = {r.serial: r for r in issued_certificates(pki.ca.root)}
    assert rows[victim.cert.serial_number].revocation_reason == "keyCompromise"
    with pytest.raises(PkiError, match="already revoked"):
        revoke(ca=pki.ca, serial=victim.cert.serial_number)
    with pytest.raises(PkiError, match="not issued"):
        revoke(ca=pki.ca, serial=12345)
    with pytest.raises(PkiError, match="exactly one"):
        revoke(ca=pki.ca)


def test_wrong_id_and_wrong_role_rejected(pki: Pki) -> None:
    # Execute / Assert
    assert _reject(pki.site.cert, pki, expected_id="hospital-b") is RejectReason.ID_MISMATCH
    assert _reject(pki.site.cert, pki, allowed_roles={Role.COORDINATOR}) is RejectReason.WRONG_ROLE
    assert _reject(pki.coordinator.cert, pki, allowed_roles={Role.SITE}) is RejectReason.WRONG_ROLE


def test_malformed_certificates_rejected(pki: Pki) -> None:
    # Prepare: a CA-signed leaf without the SPIFFE SAN, and garbage bytes.
    key = ec.generate_private_key(ec.SECP256R1())
    bare = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(pki.ca.cert.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(pki.ca.key, hashes.SHA256()))
    # Execute / Assert
    assert _reject(bare, pki) is RejectReason.MALFORMED
    garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert _reject(garbage, pki) is RejectReason.MALFORMED
    assert _reject(pki.ca.cert, pki) is RejectReason.MALFORMED
    with pytest.raises(CertificateRejected):
        site_signing_public_key(bare)


def test_crl_must_be_fresh_and_from_this_ca(pki: Pki, tmp_path: Path) -> None:
    # Prepare
    other = create_ca(federation_id="demo", out_dir=tmp_path, now=NOW)
    # Execute / Assert
    with pytest.raises(PkiError, match="not signed"):
        load_crl(tmp_path, ca_cert=pki.ca.cert, now=NOW)
    with pytest.raises(PkiError, match="stale"):
        load_crl(pki.ca.root, ca_cert=pki.ca.cert, now=NOW + dt.timedelta(days=400))
    stale = load_crl(tmp_path, ca_cert=other.cert, now=NOW)
    member = issue_certificate(ca=other, role=Role.SITE, name="member", now=NOW)
    with pytest.raises(PkiError, match="stale"):
        verify_peer_certificate(member.cert, ca_cert=other.cert, crl=stale, allowed_roles=ANY_ROLE,
                                now=NOW + dt.timedelta(days=40))
    with pytest.raises(PkiError, match="not signed"):
        mine = load_crl(pki.ca.root, ca_cert=pki.ca.cert, now=NOW)
        verify_peer_certificate(member.cert, ca_cert=other.cert, crl=mine, allowed_roles=ANY_ROLE, now=NOW)
    fresh = publish_crl(ca=other, valid_days=60, now=NOW)
    assert fresh.next_update_utc == NOW + dt.timedelta(days=60)


@pytest.mark.parametrize("name", ["Hospital", "a_b", "", "x" * 64, "ca", "../etc", "a b", "é"])
def test_bad_site_names_rejected(pki: Pki, name: str) -> None:
    # Execute / Assert
    with pytest.raises(PkiError, match=r"\[a-z0-9-\]"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name=name)


def test_good_names_and_reissue_rules(pki: Pki, tmp_path: Path) -> None:
    # Prepare
    issue_certificate(ca=pki.ca, role=Role.SITE, name="x" * 63, out_dir=tmp_path)
    # Execute / Assert
    assert validate_name("a") == "a"
    with pytest.raises(PkiError, match="already issued"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name="x" * 63, out_dir=tmp_path)
    again = issue_certificate(ca=pki.ca, role=Role.SITE, name="x" * 63, out_dir=tmp_path, replace=True)
    assert load_certificate(again.cert_path) == again.cert
    with pytest.raises(PkiError, match="host"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name="h", out_dir=tmp_path, hosts=["bad host!"])
    with pytest.raises(PkiError, match="valid_days"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name="h", out_dir=tmp_path, valid_days=0)


def test_renewal_keeps_the_signing_key_so_the_ledger_still_verifies(pki: Pki, tmp_path: Path) -> None:
    # Prepare: a site with a two-entry ledger signed under its first certificate
    from security.ledger import Ledger, LedgerTampered, verify_ledger

    first = issue_certificate(ca=pki.ca, role=Role.SITE, name="site-r", out_dir=tmp_path, now=NOW, valid_days=30)
    with Ledger.open(tmp_path / "ledger.jsonl", signing_key=load_signing_key(first.signing_key_path),
                     site_id="site-r") as ledger:
        ledger.append({"kind": "dp_release", "round": 1})
        ledger.append({"kind": "dp_release", "round": 2})
    # Execute: renew near expiry, then (for contrast) replace
    later = NOW + dt.timedelta(days=25)
    renewed = issue_certificate(ca=pki.ca, role=Role.SITE, name="site-r", out_dir=tmp_path, now=later, renew=True)
    # Assert: new certificate, TLS key and validity, same signing key; the old ledger verifies under it
    assert renewed.cert.serial_number != first.cert.serial_number
    assert renewed.cert.not_valid_after_utc > first.cert.not_valid_after_utc
    assert renewed.cert.public_key().public_numbers() != first.cert.public_key().public_numbers()
    assert site_signing_public_key(renewed.cert) == site_signing_public_key(first.cert)
    assert len(verify_ledger(tmp_path / "ledger.jsonl", public_key=site_signing_public_key(renewed.cert),
                             site_id="site-r")) == 2
    replaced = issue_certificate(ca=pki.ca, role=Role.SITE, name="site-r", out_dir=tmp_path, now=later, replace=True)
    with pytest.raises(LedgerTampered):
        verify_ledger(tmp_path / "ledger.jsonl", public_key=site_signing_public_key(replaced.cert), site_id="site-r")
    # and renewal needs an identity to renew, and excludes replace
    with pytest.raises(PkiError, match="to renew"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name="site-new", out_dir=tmp_path, now=NOW, renew=True)
    with pytest.raises(PkiError, match="exclude each other"):
        issue_certificate(ca=pki.ca, role=Role.SITE, name="site-r", out_dir=tmp_path, replace=True, renew=True)


# ---- real gRPC mutual-TLS handshake on loopback ---------------------------------------------------------

def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Echo the verified client identity, read from the TLS auth context as the auth interceptor will."""
    pem = context.auth_context()["x509_pem_cert"][0]
    ca_cert = x509.load_pem_x509_certificate(request)
    return verify_peer_certificate(pem, ca_cert=ca_cert, allowed_roles={Role.SITE}).site_id.encode()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path, Path]]:
    root = tmp_path_factory.mktemp("grpc-pki")
    ca = create_ca(federation_id="demo", out_dir=root / "fed")
    coordinator = issue_certificate(ca=ca, role=Role.COORDINATOR, name="coordinator")
    site = issue_certificate(ca=ca, role=Role.SITE, name="hospital-a")
    foreign = issue_certificate(ca=create_ca(federation_id="demo", out_dir=root / "x"), role=Role.SITE,
                                name="hospital-a")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(_who_am_i)})])
    pair = (coordinator.key_path.read_bytes(), coordinator.cert_path.read_bytes())
    creds = grpc.ssl_server_credentials([pair], root_certificates=coordinator.ca_cert_path.read_bytes(),
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port, site.directory, foreign.directory, coordinator.ca_cert_path
    finally:
        server.stop(grace=None).wait()


def _channel(port: int, identity: Path, ca_cert: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes(),
                                         private_key=(identity / "tls.key").read_bytes(),
                                         certificate_chain=(identity / "tls.crt").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def test_grpc_mtls_accepts_federation_client(mtls_server: tuple[int, Path, Path, Path]) -> None:
    # Prepare
    port, site_dir, _, ca_cert = mtls_server
    # Execute
    with _channel(port, site_dir, ca_cert) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        who = channel.unary_unary("/test.Whoami/Who")(ca_cert.read_bytes(), timeout=10)
    # Assert
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert who == b"hospital-a"


def test_grpc_mtls_rejects_foreign_client(mtls_server: tuple[int, Path, Path, Path]) -> None:
    # Prepare
    port, _, foreign_dir, ca_cert = mtls_server
    # Execute
    with _channel(port, foreign_dir, ca_cert) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    # Assert
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_grpc_mtls_rejects_client_without_certificate(mtls_server: tuple[int, Path, Path, Path]) -> None:
    # Prepare
    port, _, _, ca_cert = mtls_server
    creds = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes())
    # Execute
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    # Assert
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
