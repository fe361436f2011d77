"""Tests for participant.budget_cli: a site verifies its own ledger and sees epsilon spent / remaining."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from federation.config_files import site_document, write_toml
from participant.budget_cli import main
from security.pki import SIGNING_KEY
from tests.coordinator.ledger_builder import AuditPki, make_pki, release_records, write_ledger

PLAN = [(1, "proto"), (2, "proto"), (2, "sgd"), (3, "nodp")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> AuditPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return release_records(PLAN, epsilon_max=12.0)


@pytest.fixture()
def ledger(tmp_path: Path, pki: AuditPki, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, pki.sites["hospital-a"], "hospital-a", records)
    return path


def _budget(ledger: Path, identity: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["budget", "--ledger", str(ledger), "--identity", str(identity), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_budget_text(ledger: Path, pki: AuditPki, records: list[dict[str, Any]],
                     capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code, out, err = _budget(ledger, pki.sites["hospital-a"].directory, capsys)
    # Assert
    spent = records[2]["epsilon"]
    assert code == 0, err
    assert "site hospital-a: ledger" in out and "epsilon recomputed for 3 DP releases" in out
    assert f"epsilon spent {spent:.6g} of epsilon_max 12 at delta 1e-05 (rdp); remaining {12 - spent:.6g}" in out
    assert "round 3: uploaded WITHOUT DP" in out


def test_budget_json(ledger: Path, pki: AuditPki, records: list[dict[str, Any]],
                     capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code, out, _ = _budget(ledger, pki.sites["hospital-a"].directory, capsys, "--json")
    doc = json.loads(out)
    # Assert
    assert code == 0 and doc["verified"] is True and doc["entries"] == 4
    assert doc["epsilon_spent"] == records[2]["epsilon"]
    assert doc["remaining"] == pytest.approx(12.0 - records[2]["epsilon"])
    assert [r["all_dp"] for r in doc["rounds"]] == [True, True, False]


def test_tampered_epsilon_fails(ledger: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    lines = ledger.read_text().splitlines()
    eps = json.loads(lines[0])["record"]["epsilon"]
    ledger.write_text("\n".join([lines[0].replace(f'"epsilon":{eps!r}', '"epsilon":0.01'), *lines[1:]]) + "\n")
    # Execute
    code, _, err = _budget(ledger, pki.sites["hospital-a"].directory, capsys)
    # Assert
    assert code == 1 and "BUDGET CHECK FAILED: site 'hospital-a': ledger_tampered:hash_mismatch at seq 0" in err


def test_understated_epsilon_fails(tmp_path: Path, pki: AuditPki, records: list[dict[str, Any]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the site's own software signed a wrong epsilon
    recs = [dict(r) for r in records]
    recs[1]["epsilon"] = 0.5
    write_ledger(tmp_path / "bad.jsonl", pki.sites["hospital-a"], "hospital-a", recs)
    # Execute
    code, _, err = _budget(tmp_path / "bad.jsonl", pki.sites["hospital-a"].directory, capsys)
    # Assert
    assert code == 1 and "epsilon_mismatch at seq 1 (round 2): recorded epsilon 0.5" in err


def test_other_sites_identity_fails(ledger: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: hospital-b's key cannot verify hospital-a's ledger
    code, _, err = _budget(ledger, pki.sites["hospital-b"].directory, capsys)
    # Assert
    assert code == 1 and "ledger_tampered:wrong_site at seq 0" in err


def test_foreign_ca_certificate_fails(tmp_path: Path, pki: AuditPki, records: list[dict[str, Any]],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a ledger signed by the foreign 'hospital-a', checked against our CA's ca.crt
    ident = tmp_path / "ident"
    shutil.copytree(pki.foreign.directory, ident)
    shutil.copy(pki.ca_cert, ident / "ca.crt")
    write_ledger(tmp_path / "f.jsonl", pki.foreign, "hospital-a", records)
    # Execute
    code, _, err = _budget(tmp_path / "f.jsonl", ident, capsys)
    # Assert
    assert code == 1 and "certificate_rejected" in err and "unknown_ca" in err


def test_mismatched_key_and_missing_files_are_user_errors(ledger: Path, pki: AuditPki, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: hospital-a's certificate with hospital-b's signing key
    ident = tmp_path / "mixed"
    shutil.copytree(pki.sites["hospital-a"].directory, ident)
    shutil.copy(pki.sites["hospital-b"].signing_key_path, ident / SIGNING_KEY)
    # Execute
    mixed = _budget(ledger, ident, capsys)
    missing = _budget(tmp_path / "nope.jsonl", pki.sites["hospital-a"].directory, capsys)
    # Assert
    assert mixed[0] == 2 and "is not the signing key bound to" in mixed[2]
    assert missing[0] == 2 and "nope.jsonl" in missing[2]


def test_budget_from_site_config(ledger: Path, pki: AuditPki, tmp_path: Path, records: list[dict[str, Any]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a site.toml whose state_dir holds the ledger (data file absent: budget does not need it)
    ident = pki.sites["hospital-a"]
    (tmp_path / "state").mkdir()
    ledger.rename(tmp_path / "state" / "ledger.jsonl")
    config = tmp_path / "site.toml"
    write_toml(config, site_document(
        site="hospital-a", federation_id="demo", coordinator="127.0.0.1:50051", data="absent.h5", state_dir="state",
        tls={"ca_cert": str(ident.ca_cert_path), "cert": str(ident.cert_path), "key": str(ident.key_path),
             "signing_key": str(ident.signing_key_path)}))
    # Execute
    code = main(["budget", "--config", str(config), "--json"])
    out = capsys.readouterr()
    both = main(["budget", "--config", str(config), "--ledger", str(tmp_path / "x")])
    # Assert
    assert code == 0, out.err
    assert json.loads(out.out)["epsilon_spent"] == records[2]["epsilon"]
    assert both == 2 and "give either --config" in capsys.readouterr().err


def test_hooked_into_pfmh_participant(ledger: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    from participant.cli import main as participant_main

    # Execute
    code = participant_main(["budget", "--ledger", str(ledger), "--identity", str(pki.sites["hospital-a"].directory)])
    # Assert
    assert code == 0 and "site hospital-a: ledger" in capsys.readouterr().out


def test_truncation_is_checked_only_with_the_coordinators_head(ledger: Path, pki: AuditPki,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the head the coordinator verified (4 entries), then the ledger loses its last entry
    identity = pki.sites["hospital-a"].directory
    lines = ledger.read_text().splitlines()
    head = f"4:{json.loads(lines[-1])['hash']}"
    # Execute / Assert: with the head, the whole ledger passes
    code, out, _ = _budget(ledger, identity, capsys, "--coordinator-head", head)
    assert code == 0 and "truncation: checked against the coordinator's head (4 entries): not truncated" in out
    ledger.write_text("".join(f"{ln}\n" for ln in lines[:3]))
    # Execute / Assert: alone, the cut ledger verifies, and the command says it cannot tell
    code, out, _ = _budget(ledger, identity, capsys)
    assert code == 0 and "truncation: NOT checked: a ledger cut at its tail verifies on its own" in out
    code, out, _ = _budget(ledger, identity, capsys, "--json")
    assert code == 0 and json.loads(out)["truncation_checked"] is False
    # Execute / Assert: with the head, it fails naming the cut
    code, _, err = _budget(ledger, identity, capsys, "--coordinator-head", head)
    assert code == 1 and "BUDGET CHECK FAILED: site 'hospital-a': ledger_tampered:truncated at seq 3" in err


def test_malformed_coordinator_head_is_a_user_error(ledger: Path, pki: AuditPki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exit_info:
        _budget(ledger, pki.sites["hospital-a"].directory, capsys, "--coordinator-head", "4:abc")
    # Assert
    assert exit_info.value.code == 2 and "is not COUNT:HASH" in capsys.readouterr().err
