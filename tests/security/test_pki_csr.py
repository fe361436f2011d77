"""Site-held keys (issue #16): enroll at the site, sign at the CA, install; refusals; renewal keeps the ledger."""
from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from participant.cli import main as participant_main
from security import pki
from security.ca_cli import main as ca_main
from security.errors import PkiError
from security.ledger import Ledger, verify_ledger
from security.pki import Role, create_ca, load_ca, spiffe_id
from security.pki_csr import SIGNING_POP_OID, create_request, install_certificate, sign_request
from security.pki_verify import load_certificate, site_signing_public_key
from security.signing import SigningKey


def _private_key_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def test_cli_enroll_sign_install_keeps_the_keys_at_the_site(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Prepare: the CA and the site on different folders (different machines)
    ca_dir, site_dir = tmp_path / "ca-host", tmp_path / "hospital-a-host" / "keys"
    assert ca_main(["init", "--dir", str(ca_dir), "--federation", "demo"]) == 0
    # Execute: site -> CA -> site
    assert participant_main(["enroll", "--site", "hospital-a", "--federation", "demo", "--dir", str(site_dir)]) == 0
    csr = site_dir / "request.csr"
    assert ca_main(["sign", "--dir", str(ca_dir), "--csr", str(csr), "--expect", "hospital-a",
                    "--out", str(tmp_path / "signed.crt")]) == 0
    assert participant_main(["install", "--dir", str(site_dir), "--cert", str(tmp_path / "signed.crt"),
                             "--ca", str(ca_dir / "ca" / "ca.crt")]) == 0
    # Assert: the only private key on the CA side is the CA's own; the site's are 0600 in its folder
    assert _private_key_files(ca_dir) == [ca_dir / "ca" / "ca.key"]
    assert sorted(p.name for p in _private_key_files(site_dir)) == ["signing.key", "tls.key"]
    assert all((site_dir / n).stat().st_mode & 0o777 == 0o600 for n in ("signing.key", "tls.key"))
    cert = load_certificate(site_dir / "tls.crt")
    assert site_signing_public_key(cert) == SigningKey.load(site_dir / "signing.key", passphrase=None) \
        .verify_key()._key
    assert "hospital-a" in capsys.readouterr().out
    # Execute / Assert: a second enroll into the same folder is a one-line user error, not a traceback
    assert participant_main(["enroll", "--site", "hospital-a", "--federation", "demo", "--dir", str(site_dir)]) == 2
    assert "already holds keys" in capsys.readouterr().err


def _csr(*, name: str = "site-x", federation: str = "demo", role: Role = Role.SITE, tls_key=None,  # noqa: ANN001
         pop_key: Ed25519PrivateKey | None = None) -> bytes:
    tls_key = tls_key or ec.generate_private_key(ec.SECP256R1())
    signing = Ed25519PrivateKey.generate()
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    pop = (pop_key or signing).sign(b"pfmh-csr-v1/signing-key-pop\x00" + tls_key.public_key().public_bytes(der, spki))
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                spiffe_id(federation, role, name))]), critical=False)
            .add_extension(x509.UnrecognizedExtension(pki.SIGNING_KEY_OID, signing.public_key().public_bytes(
                der, spki)), critical=False)
            .add_extension(x509.UnrecognizedExtension(SIGNING_POP_OID, pop), critical=False)
            .sign(tls_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("csr", "kwargs", "match"), [
    (dict(federation="other"), {}, "federation 'other'"),
    (dict(role=Role.COORDINATOR), {}, "role 'coordinator'"),
    ({}, dict(expected_name="site-y"), "you expected 'site-y'"),
    (dict(pop_key=Ed25519PrivateKey.generate()), {}, "proof of possession"),
    (dict(tls_key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), {}, "expected ECDSA P-256"),
    (dict(name="Bad_Name"), {}, "does not name one identity"),
])
def test_ca_refuses_requests_outside_its_rules(tmp_path: Path, csr: dict, kwargs: dict, match: str) -> None:
    # Prepare
    ca = create_ca(federation_id="demo", out_dir=tmp_path)
    # Execute / Assert
    with pytest.raises(PkiError, match=match):
        sign_request(ca=ca, csr_pem=_csr(**csr), **kwargs)
    assert ca_main(["list", "--dir", str(tmp_path)]) == 0  # nothing was issued (the list stays empty)


def test_renewal_keeps_the_signing_key_so_the_ledger_still_verifies(tmp_path: Path) -> None:
    # Prepare: an enrolled site with a ledger signed under its first certificate
    ca = create_ca(federation_id="demo", out_dir=tmp_path / "ca-host")
    site = tmp_path / "site"
    ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM)

    def round_trip(renew: bool) -> x509.Certificate:
        csr = create_request(federation_id="demo", name="site-x", directory=site, renew=renew)
        cert = sign_request(ca=load_ca(ca.root), csr_pem=csr.read_bytes(), expected_name="site-x")
        install_certificate(directory=site, cert_pem=cert.public_bytes(serialization.Encoding.PEM), ca_cert_pem=ca_pem)
        return cert

    first = round_trip(False)
    old_tls = (site / "tls.key").read_bytes()
    with Ledger.open(site / "ledger.jsonl", signing_key=SigningKey.load(site / "signing.key", passphrase=None),
                     site_id="site-x") as ledger:
        ledger.append({"kind": "test", "round": 1})
    # Execute
    second = round_trip(True)
    # Assert: a new serial and TLS key, the same signing key, and the old ledger verifies under the new cert
    assert second.serial_number != first.serial_number and (site / "tls.key").read_bytes() != old_tls
    assert site_signing_public_key(second) == site_signing_public_key(first)
    assert len(verify_ledger(site / "ledger.jsonl", public_key=site_signing_public_key(load_certificate(
        site / "tls.crt")), site_id="site-x")) == 1
    # Assert: a certificate for someone else's key is not installed
    other = tmp_path / "other"
    csr = create_request(federation_id="demo", name="site-x", directory=other)
    stranger = sign_request(ca=ca, csr_pem=csr.read_bytes())
    with pytest.raises(PkiError, match="not for the TLS key"):
        install_certificate(directory=site, cert_pem=stranger.public_bytes(serialization.Encoding.PEM),
                            ca_cert_pem=ca_pem)
    with pytest.raises(PkiError, match="nothing to renew"):
        create_request(federation_id="demo", name="site-y", directory=tmp_path / "empty", renew=True)
