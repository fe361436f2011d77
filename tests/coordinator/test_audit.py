"""Tests for coordinator.audit and coordinator.audit_cli: real PKI, real signed ledgers, real accountant."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.audit import AuditFailed, audit_state_dir, check_releases
from coordinator.audit_cli import main
from coordinator.audit_report import report_markdown
from security.errors import LedgerTampered
from security.ledger import verify_ledger
from security.pki import load_signing_key
from tests.coordinator.ledger_builder import (
    NOT_COVERED,
    AuditPki,
    make_pki,
    release_records,
    report,
    resign,
    write_ledger,
)

PLAN_A = [(1, "proto"), (2, "proto"), (2, "sgd"), (3, "nodp"), (4, "proto")]
PLAN_B = [(1, "proto"), (2, "proto"), (3, "proto")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> AuditPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict[str, Any]]]:
    return {"hospital-a": release_records(PLAN_A), "hospital-b": release_records(PLAN_B, epsilon_max=9.0)}


@pytest.fixture()
def state(tmp_path: Path, pki: AuditPki, records: dict[str, list[dict[str, Any]]]) -> Path:
    """A coordinator state dir holding both sites' ledgers as reported (via LedgerStore.receive)."""
    state_dir = tmp_path / "state"
    for site, recs in records.items():
        lines = write_ledger(tmp_path / f"{site}.jsonl", pki.sites[site], site, recs)
        report(state_dir, site, lines, pki.sites[site])
    return state_dir


def _audit(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["audit", *(extra or ("verify",)), "--state-dir", str(state), "--ca", str(pki.ca_cert)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _stored(state: Path, site: str = "hospital-a") -> Path:
    return state / "ledgers" / f"{site}.jsonl"


def test_verify_passes_on_honest_ledgers(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code, out, err = _audit(state, pki, capsys)
    # Assert
    assert code == 0, err
    assert "OK     site 'hospital-a': 5 entries" in out and "4 DP releases recomputed" in out
    assert "1 uploads WITHOUT DP" in out and "OK     site 'hospital-b': 3 entries" in out
    assert "NOT checked" not in err


def test_report_json_markdown_png(state: Path, pki: AuditPki, records: dict[str, list[dict[str, Any]]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out_dir = state.parent / "report"
    # Execute
    code, out, _ = _audit(state, pki, capsys, "report", "--out", str(out_dir))
    doc = json.loads((out_dir / "audit.json").read_text())
    md = (out_dir / "audit.md").read_text()
    png = matplotlib.image.imread(out_dir / "epsilon.png")
    # Assert: JSON, per site and per round
    assert code == 0 and "audit.json" in out
    assert doc["ok"] is True and doc["ca_checked"] is True
    a, b = doc["sites"]
    last_a = records["hospital-a"][-1]
    assert (a["site"], a["status"], a["entries"]) == ("hospital-a", "verified", 5)
    assert a["epsilon_spent"] == last_a["epsilon"] and a["epsilon_max"] == 20.0
    assert a["budget_left"] == pytest.approx(20.0 - last_a["epsilon"])
    assert [r["round"] for r in a["rounds"]] == [1, 2, 3, 4]
    assert a["rounds"][1]["mechanisms"] == ["gaussian_prototype_statistics", "dp_sgd_shared_model"]
    assert a["rounds"][2]["all_dp"] is False and a["rounds"][2]["epsilon"] == a["rounds"][1]["epsilon"]
    assert a["uploads_without_dp"] == [{"round": 3, "what": "prototype statistics (DP off)"}]
    sgd = a["releases"][2]
    assert (sgd["noise_multiplier"], sgd["sample_rate"], sgd["steps"], sgd["sensitivity"]) == (1.3, 0.05, 40, 1.0)
    assert sgd["epsilon_recomputed"] == pytest.approx(sgd["epsilon"], rel=1e-9)
    assert len(a["covered"]) == 2 and a["not_covered"] == [NOT_COVERED]
    assert b["epsilon_max"] == 9.0 and b["delta"] == 1e-5 and b["accountant"] == "rdp"
    # Assert: Markdown and PNG
    assert "**all of 2 sites verified**" in md and "## Site hospital-a" in md and "### What DP does not cover" in md
    assert "round 3: uploaded **without DP**" in md and "| 2 | gaussian_prototype_statistics, dp_sgd_shared" in md
    assert png.shape[:2] == (450, 800) and png[..., :3].min() < 0.5  # something was drawn


def test_verify_without_ca_warns(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["audit", "verify", "--state-dir", str(state)])
    # Assert
    assert code == 0 and "NOT checked against the federation CA" in capsys.readouterr().err


def test_lying_site_epsilon_mismatch(tmp_path: Path, pki: AuditPki, records: dict[str, list[dict[str, Any]]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a site signs (and reports) a ledger that understates epsilon at seq 2 (round 2)
    recs = [dict(r) for r in records["hospital-a"]]
    recs[2]["epsilon"] = recs[2]["epsilon"] * 0.5
    lines = write_ledger(tmp_path / "a.jsonl", pki.sites["hospital-a"], "hospital-a", recs)
    report(tmp_path / "state", "hospital-a", lines, pki.sites["hospital-a"])
    # Execute
    code, _, err = _audit(tmp_path / "state", pki, capsys)
    # Assert
    assert code == 1
    assert "FAILED site 'hospital-a': epsilon_mismatch at seq 2 (round 2): recorded epsilon" in err
    assert repr(recs[2]["epsilon"]) in err and "AUDIT FAILED for 1 of 1 sites" in err


def test_edited_epsilon_at_rest(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: someone edits an epsilon in the stored ledger
    lines = _stored(state).read_text().splitlines()
    edited = lines[1].replace(f'"epsilon":{json.loads(lines[1])["record"]["epsilon"]!r}', '"epsilon":0.1')
    assert edited != lines[1]
    _stored(state).write_text("\n".join([lines[0], edited, *lines[2:]]) + "\n")
    # Execute
    code, out, err = _audit(state, pki, capsys)
    # Assert: the other site still verifies
    assert code == 1 and "'hospital-a': ledger_tampered:hash_mismatch at seq 1" in err
    assert "OK     site 'hospital-b'" in out


def test_edited_and_resigned_with_wrong_key(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: entry 1 re-hashed and signed with a key that is not the site's
    lines = _stored(state).read_text().splitlines()
    lines[-1] = resign(lines[-1], Ed25519PrivateKey.generate(), epsilon=0.1)
    _stored(state).write_text("\n".join(lines) + "\n")
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1 and "ledger_tampered:bad_signature at seq 4" in err


@pytest.mark.parametrize(("drop", "fault"), [(2, "seq_gap at seq 2"), (-1, "truncated at seq 4")])
def test_removed_entry(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str], drop: int,
                       fault: str) -> None:
    # Prepare
    lines = _stored(state).read_text().splitlines()
    del lines[drop]
    _stored(state).write_text("\n".join(lines) + "\n")
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1 and f"ledger_tampered:{fault}" in err


def test_certificate_from_another_ca(tmp_path: Path, pki: AuditPki, records: dict[str, list[dict[str, Any]]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: 'hospital-a' of a foreign CA; its ledger is self-consistent
    lines = write_ledger(tmp_path / "a.jsonl", pki.foreign, "hospital-a", records["hospital-a"])
    report(tmp_path / "state", "hospital-a", lines, pki.foreign)
    # Execute
    code, _, err = _audit(tmp_path / "state", pki, capsys)
    # Assert
    assert code == 1 and "certificate_rejected" in err and "unknown_ca" in err


def test_swapped_certificate_of_another_site(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: hospital-b's certificate stored as hospital-a's
    (state / "ledgers" / "hospital-a.crt").write_bytes(pki.sites["hospital-b"].cert_path.read_bytes())
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1 and "certificate_rejected: hospital-a.crt is issued to 'hospital-b'" in err


def test_missing_files(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the ledger of a site named in heads.json is gone
    _stored(state, "hospital-b").unlink()
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1 and "'hospital-b': missing_file" in err and "hospital-b.jsonl" in err


def test_no_ledger_directory_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["audit", "report", "--state-dir", str(tmp_path)])
    # Assert
    assert code == 2 and "no ledger directory" in capsys.readouterr().err


def _entries(directory: Path, pki: AuditPki, recs: list[dict[str, Any]]) -> list[Any]:
    lines = write_ledger(directory / f"ledger-{len(list(directory.iterdir()))}.jsonl", pki.sites["hospital-a"],
                         "hospital-a", recs)
    key = load_signing_key(pki.sites["hospital-a"].signing_key_path).public_key()
    return verify_ledger(lines, public_key=key)


@pytest.mark.parametrize(("change", "reason"), [
    ({"kind": "telemetry"}, "malformed_record at seq 1"),
    ({"steps": 1.5}, "malformed_record at seq 1 (round 2): field 'steps'"),
    ({"mechanism": "laplace"}, "malformed_record at seq 1 (round 2): field 'mechanism'"),
    ({"round": 0}, "round_order at seq 1 (round 0)"),
])
def test_record_checks(tmp_path: Path, pki: AuditPki, records: dict[str, list[dict[str, Any]]],
                       change: dict[str, Any], reason: str) -> None:
    # Prepare
    recs = [dict(r) for r in records["hospital-a"]]
    recs[1].update(change)
    entries = _entries(tmp_path, pki, recs)
    # Execute / Assert
    with pytest.raises(AuditFailed, match=re.escape(reason)):
        check_releases(entries, site="hospital-a")


def test_budget_exceeded_and_prv(tmp_path: Path, pki: AuditPki) -> None:
    # Prepare: correct epsilons but past epsilon_max; and a PRV-accounted ledger
    over = release_records([(1, "proto"), (2, "proto")], epsilon_max=1.0)
    prv = release_records([(1, "proto"), (2, "sgd")], accountant="prv")
    # Execute
    with pytest.raises(AuditFailed, match=r"budget_exceeded at seq 0 \(round 1\): epsilon 4\.\d+ > epsilon_max 1"):
        check_releases(_entries(tmp_path, pki, over), site="hospital-a")
    rows = check_releases(_entries(tmp_path, pki, prv), site="hospital-a")
    # Assert
    assert [r.get("accountant") for r in rows] == ["prv", "prv"]
    assert rows[-1].epsilon_recomputed == pytest.approx(prv[-1]["epsilon"], rel=1e-9)


def test_failed_site_is_marked_in_report(state: Path) -> None:
    # Prepare
    (state / "ledgers" / "hospital-b.crt").unlink()
    # Execute
    report_doc = audit_state_dir(state)
    md = report_markdown(report_doc)
    # Assert
    assert not report_doc.ok and report_doc.sites[0].ok
    assert "**1 of 2 sites verified**; FAILED: hospital-b." in md and "**FAILED** (missing_file)" in md


def test_hooked_into_pfmh_coordinator(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    from coordinator.cli import main as coordinator_main

    # Execute
    code = coordinator_main(["audit", "verify", "--state-dir", str(state), "--ca", str(pki.ca_cert)])
    # Assert
    assert code == 0 and "OK     site 'hospital-b'" in capsys.readouterr().out


# ------------------------------------------------------------------ cross-check with the coordinator's round log
A, B = "hospital-a", "hospital-b"


def _round(number: int, outcome: str, cohort: tuple[str, ...], *, inputs: tuple[str, ...] = (),
           dp: bool = True) -> dict[str, Any]:
    h: dict[str, Any] = {"round": number, "outcome": outcome, "cohort": list(cohort), "dp": dp}
    h.update({"inputs": list(inputs)} if outcome == "completed" else {"inputs_received": list(inputs)})
    return h


# PLAN_A releases in rounds 1, 2 (x2) and 4 (round 3 without DP); PLAN_B in rounds 1-3. Round 4 aborted
# after hospital-a's masked input arrived: its release there was charged but never revealed.
HONEST_LOG = [_round(1, "completed", (A, B), inputs=(A, B)), _round(2, "completed", (A, B), inputs=(A, B)),
              _round(3, "completed", (A, B), inputs=(A, B), dp=False), _round(4, "aborted", (A, B), inputs=(A,))]


def _write_round_log(state: Path, history: list[dict[str, Any]]) -> None:
    (state / "rounds.json").write_text(json.dumps({"last_round_started": max(h["round"] for h in history),
                                                   "completed_rounds": 3, "history": history}))


def test_cross_check_passes_and_shows_charged_not_released(state: Path, pki: AuditPki,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    _write_round_log(state, HONEST_LOG)
    out_dir = state.parent / "report"
    # Execute
    code, out, err = _audit(state, pki, capsys, "report", "--out", str(out_dir))
    doc = json.loads((out_dir / "audit.json").read_text())
    md = (out_dir / "audit.md").read_text()
    # Assert
    assert code == 0, err
    assert "site 'hospital-a': matches the round log (its input in 3 revealed sums); charged, not released in " \
           "rounds 4" in out
    assert "site 'hospital-b': matches the round log (its input in 3 revealed sums); coordinator head 3:" in out
    assert "NOT cross-checked" not in err
    a = doc["sites"][0]
    assert doc["round_log_checked"] is True and a["charged_not_released"] == [4]
    assert [r["verdict"] for r in a["round_log"]] == ["released", "released", "no DP release (DP off)",
                                                      "charged, not released"]
    assert "### Cross-check with the round log" in md
    assert "| 4 | aborted | no | on | yes | charged, not released |" in md


def test_cut_ledger_fails_against_the_round_log(tmp_path: Path, pki: AuditPki,
                                                records: dict[str, list[dict[str, Any]]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the case: hospital-a's ledger lost its tail before it reported (a valid, shorter chain,
    # so heads.json agrees), but the round log says its input entered round 4's revealed sum with DP on
    state = tmp_path / "state"
    lines = write_ledger(tmp_path / "a.jsonl", pki.sites[A], A, records[A])
    report(state, A, lines[:4], pki.sites[A])
    _write_round_log(state, [*HONEST_LOG[:3], _round(4, "completed", (A, B), inputs=(A, B))])
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1
    assert "FAILED site 'hospital-a': release_missing (round 4): the coordinator's round log shows this site's " \
           "masked input in the revealed sum of round 4 (DP on), but its ledger has no dp_release" in err
    assert "its last entry is for round 3" in err


@pytest.mark.parametrize(("history", "fault"), [
    ([_round(1, "completed", (A, B), inputs=(A, B)), _round(2, "completed", (B,), inputs=(B,)), *HONEST_LOG[2:]],
     "release_unwitnessed at seq 1 (round 2): the ledger records a dp_release for a round in which this site was "
     "not in the cohort (the round's cohort was hospital-b)"),
    (HONEST_LOG[:3], "release_unwitnessed at seq 4 (round 4): the ledger records a dp_release for a round in which "
     "this site was not in the cohort (the coordinator's round log has no such round)"),
])
def test_release_claimed_outside_the_cohort_fails(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str],
                                                  history: list[dict[str, Any]], fault: str) -> None:
    # Prepare
    _write_round_log(state, history)
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 1 and f"FAILED site 'hospital-a': {fault}" in err


def test_without_round_log_the_audit_says_so(state: Path, pki: AuditPki, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code, _, err = _audit(state, pki, capsys)
    # Assert
    assert code == 0 and "ledgers were NOT cross-checked with the rounds their inputs entered" in err
    assert not audit_state_dir(state).round_log


def test_round_log_written_before_inputs_were_recorded_uses_survivors(state: Path, pki: AuditPki) -> None:
    # Prepare: an older rounds.json: completed rounds name their survivors only, no dp flag
    old = [{"round": h["round"], "outcome": h["outcome"], "cohort": h["cohort"],
            **({"survivors": h["inputs"]} if "inputs" in h else {})} for h in HONEST_LOG]
    _write_round_log(state, old)
    # Execute
    audit = audit_state_dir(state, ca_cert_path=pki.ca_cert)
    # Assert: cross-checked (cohorts and inputs known), round 4 charged not released
    assert audit.ok and audit.round_log and audit.sites[0].charged_not_released == (4,)


# ------------------------------------------------------------------ incremental reports and rejected reports
def test_increments_are_verified_against_the_stored_head(tmp_path: Path, pki: AuditPki,
                                                         records: dict[str, list[dict[str, Any]]]) -> None:
    # Prepare
    from coordinator.ledgers import LedgerOutOfSync, LedgerStore

    state, cert = tmp_path / "state", pki.sites[A].cert_path.read_bytes()
    lines = write_ledger(tmp_path / "a.jsonl", pki.sites[A], A, records[A])
    other = write_ledger(tmp_path / "other.jsonl", pki.sites[A], A, [*records[A], records[A][-1]])
    store = LedgerStore(state)
    # Execute / Assert: the first report, then only the new entries, then a retried (repeated) increment
    assert store.head(A) == (0, "")
    assert store.receive(A, lines[:2], cert) == 2
    assert store.receive(A, lines[2:], cert, first_seq=2) == 5
    assert store.receive(A, lines[3:], cert, first_seq=3) == 5
    assert _stored(state).read_text().splitlines() == lines
    assert store.head(A) == (5, json.loads(lines[4])["hash"])
    # Assert: a report after a gap is out of sync (the site then sends everything), not tampering
    with pytest.raises(LedgerOutOfSync, match="starts at seq 6, but the coordinator holds 5 entries"):
        store.receive(A, other[5:], cert, first_seq=6)
    assert not (state / "ledgers" / "rejected").exists()
    # Assert: an entry of another chain does not link to the stored head; a verified entry cannot be rewritten
    with pytest.raises(LedgerTampered, match="chain_broken"):
        store.receive(A, other[5:], cert, first_seq=5)
    rewritten = resign(lines[4], load_signing_key(pki.sites[A].signing_key_path), epsilon=0.1)
    with pytest.raises(LedgerTampered, match="head_mismatch"):
        store.receive(A, [rewritten], cert, first_seq=4)
    assert _stored(state).read_text().splitlines() == lines
    assert len(list((state / "ledgers" / "rejected" / A).glob("*.json"))) == 2


def test_rejected_report_is_kept_and_fails_the_audit(state: Path, pki: AuditPki,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: hospital-a resends its ledger with the tail cut; the coordinator refuses it
    from coordinator.ledgers import LedgerStore

    lines = _stored(state).read_text().splitlines()
    with pytest.raises(LedgerTampered, match="truncated"):
        LedgerStore(state).receive(A, lines[:3], pki.sites[A].cert_path.read_bytes())
    kept = json.loads((state / "ledgers" / "rejected" / A / "000000.json").read_text())
    out_dir = state.parent / "report"
    # Execute
    code, out, err = _audit(state, pki, capsys, "report", "--out", str(out_dir))
    md = (out_dir / "audit.md").read_text()
    # Assert: kept with its reason and lines; the audit fails that site and lists the report
    assert (kept["reason"], kept["seq"], kept["line_count"], kept["lines"]) == ("truncated", 3, 3, lines[:3])
    assert code == 1 and "FAILED site 'hospital-a': rejected_report: the coordinator rejected 1 ledger report" in err
    assert "OK     site 'hospital-b'" in out
    assert "**rejected ledger report** at" in md and "(truncated): ledger tampered (truncated) at seq 3" in md
    assert _stored(state).read_text().splitlines() == lines
