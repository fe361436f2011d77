"""A daemon's own TLS identity is checked at start: one line naming the file and key, before it serves or joins."""
from __future__ import annotations

from pathlib import Path

import pytest

from federation.identity import OwnIdentity, check_identity
from proto.settings import SettingsError
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("id")
    ca = create_ca(federation_id="fed", out_dir=root / "pki")
    for name in ("site-a", "site-b"):
        issue_certificate(ca=ca, role=Role.SITE, name=name)
    issue_certificate(ca=ca, role=Role.COORDINATOR, name="coordinator")
    other = create_ca(federation_id="fed", out_dir=root / "other")
    issue_certificate(ca=other, role=Role.SITE, name="site-a")
    (root / "site.toml").write_text("")  # only its folder matters: paths below are relative to it
    return root


def site(**override: str) -> OwnIdentity:
    files = dict(ca_cert="pki/ca/ca.crt", cert="pki/site-a/tls.crt", key="pki/site-a/tls.key",
                 crl="pki/ca/crl.pem", signing_key="pki/site-a/signing.key")
    return OwnIdentity(**(files | override))


def refused(pki: Path, files: OwnIdentity, **kw: object) -> str:
    args = dict(role=Role.SITE, federation_id="fed", name="site-a") | kw
    with pytest.raises(SettingsError) as err:
        check_identity(pki / "site.toml", files, **args)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{pki / 'site.toml'}: tls.")
    return message


def test_a_matching_identity_passes(pki: Path) -> None:
    check_identity(pki / "site.toml", site(), role=Role.SITE, federation_id="fed", name="site-a")
    check_identity(pki / "site.toml", OwnIdentity("pki/ca/ca.crt", "pki/coordinator/tls.crt",
                                                  "pki/coordinator/tls.key", "pki/ca/crl.pem"),
                   role=Role.COORDINATOR, federation_id="fed")


def test_a_key_of_another_identity_is_refused(pki: Path) -> None:
    assert "tls.key = 'pki/site-b/tls.key': is not the key of tls.cert" in refused(pki, site(key="pki/site-b/tls.key"))


def test_a_signing_key_of_another_identity_is_refused(pki: Path) -> None:
    message = refused(pki, site(signing_key="pki/site-b/signing.key"))
    assert "tls.signing_key = 'pki/site-b/signing.key': is not the signing key bound into" in message


def test_a_certificate_of_another_ca_is_refused(pki: Path) -> None:
    message = refused(pki, site(cert="other/site-a/tls.crt", key="other/site-a/tls.key",
                                signing_key="other/site-a/signing.key"))
    assert "tls.cert = 'other/site-a/tls.crt'" in message and "unknown_ca" in message


def test_a_crl_of_another_ca_is_refused(pki: Path) -> None:
    assert "tls.crl = 'other/ca/crl.pem'" in refused(pki, site(crl="other/ca/crl.pem"))


def test_another_sites_certificate_is_refused(pki: Path) -> None:
    message = refused(pki, site(cert="pki/site-b/tls.crt", key="pki/site-b/tls.key",
                                signing_key="pki/site-b/signing.key"))
    assert "id_mismatch" in message and "'site-b'" in message


def test_a_site_certificate_for_the_coordinator_is_refused(pki: Path) -> None:
    assert "wrong_role" in refused(pki, site(signing_key=""), role=Role.COORDINATOR, name=None)


def test_another_federation_id_is_refused(pki: Path) -> None:
    assert "is for federation 'fed', the config says federation_id = 'other'" in refused(
        pki, site(), federation_id="other")


def test_a_file_that_is_no_certificate_is_refused(pki: Path) -> None:
    assert "tls.cert = 'site.toml'" in refused(pki, site(cert="site.toml"))
    assert "tls.key = 'pki/site-a/tls.crt': not an unencrypted PEM private key" in refused(
        pki, site(key="pki/site-a/tls.crt"))


def test_both_daemons_refuse_a_mismatched_identity_before_serving_or_joining(
        pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a coordinator holding a site's key, a site holding another site's signing key
    from coordinator.cli import main as coordinator_main
    from federation.config_files import coordinator_document, party_tls, site_document, write_toml
    from participant.cli import main as participant_main

    federation = {"federation_id": "fed", "image_dim": 8, "text_dim": 6, "num_classes": 3, "rounds": 1,
                  "min_sites": 2, "train": {"bits": 8}, "privacy": {"mode": "off"}}
    doc = coordinator_document(sites=["site-a", "site-b"], federation=federation, server={"listen": "127.0.0.1:0"})
    doc["tls"]["key"] = "pki/site-a/tls.key"
    coordinator = write_toml(pki / "coordinator.toml", doc)
    (pki / "site-a.h5").write_bytes(b"")
    tls = party_tls("site-a", signing_key=True) | {"signing_key": "pki/site-b/signing.key"}
    site = write_toml(pki / "site-a.toml", site_document(site="site-a", federation_id="fed",
                                                         coordinator="127.0.0.1:1", data="site-a.h5", tls=tls))
    # Execute
    codes = (coordinator_main(["serve", "--config", str(coordinator)]),
             participant_main(["join", "--site", "site-a", "--config", str(site)]))
    # Assert: exit 2, one line each, nothing served (no state folder made)
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == (2, 2) and len(err) == 2, err
    assert "tls.key = 'pki/site-a/tls.key': is not the key of tls.cert" in err[0]
    assert "tls.signing_key = 'pki/site-b/signing.key': is not the signing key" in err[1]
    assert not (pki / "state").exists()
