"""Tests for the pfmh-ca command line (security.ca_cli.main)."""
from __future__ import annotations

from pathlib import Path

import pytest

from security.ca_cli import main
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_issue_list_verify_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    pki = str(tmp_path / "pki")
    # Execute
    init = _run(capsys, "init", "--dir", pki, "--federation", "demo")
    site = _run(capsys, "issue", "--dir", pki, "--site", "hospital-a")
    coord = _run(capsys, "issue", "--dir", pki, "--coordinator", "--host", "127.0.0.1", "--host", "localhost")
    ok = _run(capsys, "verify", "--dir", pki, f"{pki}/hospital-a/tls.crt", "--role", "site",
              "--expect", "hospital-a")
    wrong = _run(capsys, "verify", "--dir", pki, f"{pki}/coordinator/tls.crt", "--role", "site")
    revoked = _run(capsys, "revoke", "--dir", pki, "--site", "hospital-a", "--reason", "keyCompromise")
    after = _run(capsys, "verify", "--dir", pki, f"{pki}/hospital-a/tls.crt")
    listing = _run(capsys, "list", "--dir", pki)
    crl = _run(capsys, "crl", "--dir", pki, "--valid-days", "7")
    # Assert
    assert init[0] == 0 and "demo" in init[1]
    assert site[0] == 0 and "issued site 'hospital-a'" in site[1]
    assert coord[0] == 0 and (tmp_path / "pki" / "coordinator" / "tls.key").is_file()
    assert ok[0] == 0 and ok[1].startswith("OK site 'hospital-a'")
    assert wrong[0] == 1 and "REJECTED (wrong_role)" in wrong[2]
    assert revoked[0] == 0 and "keyCompromise" in revoked[1]
    assert after[0] == 1 and "REJECTED (revoked)" in after[2]
    rows = listing[1].splitlines()
    assert listing[0] == 0 and len(rows) == 3
    assert "hospital-a" in rows[1] and rows[1].endswith("revoked") and rows[2].endswith("valid")
    assert crl[0] == 0 and "1 revoked" in crl[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["issue", "--dir", "{d}/none", "--site", "a"], "no CA"),
    (["init", "--dir", "{d}/pki", "--federation", "demo"], "already exists"),
    (["issue", "--dir", "{d}/pki", "--site", "Bad_Name"], "invalid identity name"),
    (["issue", "--dir", "{d}/pki", "--site", "hospital-a"], "already issued"),
    (["revoke", "--dir", "{d}/pki", "--site", "nobody"], "no valid certificate"),
    (["revoke", "--dir", "{d}/pki", "--serial", "zz"], "not a hexadecimal serial"),
    (["verify", "--dir", "{d}/pki", "{d}/missing.crt"], "No such file"),
    (["list", "--dir", "{d}/none"], "no CA"),
    (["init", "--dir", "{d}/new", "--federation", "Has Space"], "invalid federation id"),
])
def test_user_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    # Prepare
    ca = create_ca(federation_id="demo", out_dir=tmp_path / "pki")
    issue_certificate(ca=ca, role=Role.SITE, name="hospital-a")
    # Execute
    code, out, err = _run(capsys, *(a.format(d=tmp_path) for a in argv))
    # Assert
    assert code == 2
    assert err.startswith("pfmh-ca: error:") and message in err
    assert "Traceback" not in err and out == ""


def test_passphrase_file_protects_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    secret = tmp_path / "pass.txt"
    secret.write_text("s3cret\n")
    pki = str(tmp_path / "pki")
    _run(capsys, "init", "--dir", pki, "--federation", "demo", "--passphrase-file", str(secret))
    # Execute
    without = _run(capsys, "issue", "--dir", pki, "--site", "a")
    with_pass = _run(capsys, "issue", "--dir", pki, "--site", "a", "--passphrase-file", str(secret))
    # Assert
    assert without[0] == 2 and "passphrase" in without[2]
    assert with_pass[0] == 0


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as info:
        main(["issue", "--site", "a"])
    # Assert
    assert info.value.code == 2
    assert "--dir" in capsys.readouterr().err


def test_renew_keeps_the_signing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    pki = str(tmp_path / "pki")
    _run(capsys, "init", "--dir", pki, "--federation", "demo")
    _run(capsys, "issue", "--dir", pki, "--site", "hospital-a")
    signing = (tmp_path / "pki" / "hospital-a" / "signing.key").read_bytes()
    cert = (tmp_path / "pki" / "hospital-a" / "tls.crt").read_bytes()
    # Execute
    renewed = _run(capsys, "issue", "--dir", pki, "--site", "hospital-a", "--renew")
    # Assert
    assert renewed[0] == 0 and "issued site 'hospital-a'" in renewed[1]
    assert (tmp_path / "pki" / "hospital-a" / "signing.key").read_bytes() == signing
    assert (tmp_path / "pki" / "hospital-a" / "tls.crt").read_bytes() != cert
    with pytest.raises(SystemExit) as info:  # argparse: --renew and --replace exclude each other
        main(["issue", "--dir", pki, "--site", "hospital-a", "--renew", "--replace"])
    assert info.value.code == 2
