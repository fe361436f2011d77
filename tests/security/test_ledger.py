"""Tests for security.ledger: append/verify, every kind of tampering, torn tails, locking, PKI binding."""
from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.errors import InvalidMessage, LedgerTampered, SecurityError
from security.ledger import SIGNATURE_DOMAIN, Ledger, LedgerFault, canonical_json, require_head, verify_ledger
from security.pki import Role, create_ca, load_signing_key
from security.pki_issue import issue_certificate
from security.pki_verify import site_id_from_certificate, site_signing_public_key
from security.signing import SigningKey

RELEASE = {"round": 1, "mechanism": "gaussian", "sigma": 1.1, "sensitivity": 1.0, "sample_rate": 1.0,
           "epsilon": 0.53, "delta": 1e-5}


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def lines(tmp_path: Path, key: Ed25519PrivateKey) -> list[str]:
    with Ledger.open(tmp_path / "l.jsonl", signing_key=key, site_id="hospital-a") as ledger:
        for rnd in range(5):
            ledger.append({**RELEASE, "round": rnd})
        return ledger.export_lines()


def _fault(lines: list[str], key: Ed25519PrivateKey, **kwargs: object) -> tuple[str, int | None]:
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(lines, public_key=key.public_key(), **kwargs)  # type: ignore[arg-type]
    return info.value.reason, info.value.seq


def _resign(entry: dict[str, object], key: Ed25519PrivateKey) -> str:
    body = {k: entry[k] for k in ("seq", "prev_hash", "time", "site", "record")}
    entry["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()
    signature = key.sign(SIGNATURE_DOMAIN + bytes.fromhex(str(entry["hash"])))
    entry["signature"] = base64.b64encode(signature).decode()
    return canonical_json(entry).decode()


def test_append_verify_and_reopen(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # Prepare
    path = tmp_path / "ledger.jsonl"
    with Ledger.open(path, signing_key=key, site_id="hospital-a") as ledger:
        first = ledger.append(RELEASE)
        second = ledger.append({"round": 2, "tags": ("a", "b")})
    # Execute
    with Ledger.open(path, signing_key=key, site_id="hospital-a") as ledger:
        third = ledger.append({"round": 3})
        head = ledger.head
        entries = ledger.entries()
    verified = verify_ledger(path, public_key=key.public_key(), site_id="hospital-a", expected_head=head)
    # Assert
    assert [e.seq for e in verified] == [0, 1, 2] and verified == entries
    assert first.prev_hash == "0" * 64 and second.prev_hash == first.hash and third.prev_hash == second.hash
    assert verified[0].record == RELEASE and verified[1].record == {"round": 2, "tags": ["a", "b"]}
    assert head == (2, third.hash)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines() == [e.to_line() for e in entries]


def test_canonical_line_format(lines: list[str]) -> None:
    # Execute
    entry = json.loads(lines[0])
    # Assert
    assert sorted(entry) == ["hash", "prev_hash", "record", "seq", "signature", "site", "time"]
    assert lines[0] == json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert entry["time"].endswith("+00:00")


def test_edited_field_detected(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Prepare
    entry = json.loads(lines[2])
    entry["record"]["epsilon"] = 0.01
    edited = [*lines[:2], canonical_json(entry).decode(), *lines[3:]]
    rehashed = [*lines[:2], _resign(entry, Ed25519PrivateKey.generate()), *lines[3:]]
    # Execute / Assert
    assert _fault(edited, key) == (LedgerFault.HASH_MISMATCH, 2)
    assert _fault(rehashed, key) == (LedgerFault.BAD_SIGNATURE, 2)


def test_removed_entry_detected(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Execute / Assert
    assert _fault([*lines[:2], *lines[3:]], key) == (LedgerFault.SEQ_GAP, 2)
    assert _fault(lines[1:], key) == (LedgerFault.SEQ_GAP, 0)


def test_inserted_entry_detected_even_if_validly_signed_by_other_key(lines: list[str],
                                                                     key: Ed25519PrivateKey) -> None:
    # Prepare: a well-formed entry chained after seq 1, signed by an attacker's key.
    forged = json.loads(lines[2])
    forged["record"] = {"round": 99}
    duplicated = [*lines[:2], lines[1], *lines[2:]]
    inserted = [*lines[:2], _resign(forged, Ed25519PrivateKey.generate()), *lines[2:]]
    # Execute / Assert
    assert _fault(inserted, key) == (LedgerFault.BAD_SIGNATURE, 2)
    assert _fault(duplicated, key) == (LedgerFault.SEQ_GAP, 2)


def test_reordered_entries_detected(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Execute / Assert
    assert _fault([lines[0], lines[2], lines[1], *lines[3:]], key) == (LedgerFault.SEQ_GAP, 1)


def test_chain_break_detected(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Prepare: correct seq and signature, wrong prev_hash (only the key holder could make this).
    entry = json.loads(lines[3])
    entry["prev_hash"] = "f" * 64
    # Execute / Assert
    assert _fault([*lines[:3], _resign(entry, key), *lines[4:]], key) == (LedgerFault.CHAIN_BROKEN, 3)


def test_truncated_tail_needs_expected_head(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Prepare
    head = (4, json.loads(lines[4])["hash"])
    # Execute
    shorter = verify_ledger(lines[:3], public_key=key.public_key())
    # Assert: undetectable from the file alone, detected against a remembered head.
    assert len(shorter) == 3
    assert _fault(lines[:3], key, expected_head=head) == (LedgerFault.TRUNCATED, 3)
    assert _fault(lines, key, expected_head=(4, "0" * 64)) == (LedgerFault.HEAD_MISMATCH, 4)
    older_head = (2, json.loads(lines[2])["hash"])
    assert len(verify_ledger(lines, public_key=key.public_key(), expected_head=older_head)) == 5


def test_wrong_key_and_wrong_site_detected(lines: list[str], key: Ed25519PrivateKey, tmp_path: Path) -> None:
    # Execute / Assert
    assert _fault(lines, Ed25519PrivateKey.generate()) == (LedgerFault.BAD_SIGNATURE, 0)
    assert _fault(lines, key, site_id="hospital-b") == (LedgerFault.WRONG_SITE, 0)
    path = tmp_path / "l.jsonl"
    with pytest.raises(LedgerTampered, match="wrong_site"):
        Ledger.open(path, signing_key=key, site_id="hospital-b")
    with pytest.raises(LedgerTampered, match="bad_signature"):
        Ledger.open(path, signing_key=Ed25519PrivateKey.generate(), site_id="hospital-a")


def test_malformed_and_noncanonical_lines_detected(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Prepare
    spaced = json.dumps(json.loads(lines[1]), sort_keys=True)
    extra = json.loads(lines[1]) | {"note": "x"}
    # Execute / Assert
    assert _fault([lines[0], "{not json", *lines[2:]], key) == (LedgerFault.MALFORMED, 1)
    assert _fault([lines[0], spaced, *lines[2:]], key) == (LedgerFault.MALFORMED, 1)
    assert _fault([lines[0], canonical_json(extra).decode(), *lines[2:]], key) == (LedgerFault.MALFORMED, 1)


def test_torn_tail_detected_and_repairable(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # Prepare: a crash in the middle of writing entry 2.
    path = tmp_path / "l.jsonl"
    with Ledger.open(path, signing_key=key, site_id="s") as ledger:
        ledger.append({"round": 0})
        ledger.append({"round": 1})
    with path.open("ab") as fh:
        fh.write(b'{"hash":"ab')
    # Execute / Assert
    with pytest.raises(LedgerTampered) as info:
        Ledger.open(path, signing_key=key, site_id="s")
    assert (info.value.reason, info.value.seq) == (LedgerFault.TORN_TAIL, 2)
    with pytest.raises(LedgerTampered, match="torn_tail"):
        verify_ledger(path, public_key=key.public_key())
    with Ledger.open(path, signing_key=key, site_id="s", repair_torn_tail=True) as ledger:
        assert ledger.append({"round": 2}).seq == 2
    assert [e.record["round"] for e in verify_ledger(path, public_key=key.public_key())] == [0, 1, 2]


def test_bad_records_refused_and_lock_held(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # Prepare
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, signing_key=key, site_id="s")
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="JSON"):
        ledger.append({"epsilon": float("nan")})
    with pytest.raises(InvalidMessage, match="JSON"):
        ledger.append({"x": object()})
    with pytest.raises(InvalidMessage, match="mapping"):
        ledger.append([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(SecurityError, match="another process"):
        Ledger.open(path, signing_key=key, site_id="s")
    ledger.close()
    with pytest.raises(SecurityError, match="closed"):
        ledger.append({"round": 1})
    assert verify_ledger(path, public_key=key.public_key()) == []


def test_coordinator_verifies_export_with_certificate_key(tmp_path: Path) -> None:
    # Prepare: the site signs with the key written by the PKI; the coordinator only has the certificate.
    ca = create_ca(federation_id="demo", out_dir=tmp_path / "pki")
    site = issue_certificate(ca=ca, role=Role.SITE, name="hospital-a")
    with Ledger.open(tmp_path / "l.jsonl", signing_key=load_signing_key(site.signing_key_path),
                     site_id="hospital-a") as ledger:
        ledger.append(RELEASE)
        exported, head = ledger.export_lines(), ledger.head
    # Execute
    entries = verify_ledger(exported, public_key=site_signing_public_key(site.cert),
                            site_id=site_id_from_certificate(site.cert), expected_head=head)
    # Assert
    assert [e.record for e in entries] == [RELEASE]


def test_accepts_security_signing_key_types(tmp_path: Path) -> None:
    # Prepare
    signing = SigningKey.generate()
    # Execute
    with Ledger.open(tmp_path / "l.jsonl", signing_key=signing, site_id="s") as ledger:
        ledger.append({"round": 0})
    entries = verify_ledger(tmp_path / "l.jsonl", public_key=signing.verify_key(), site_id="s")
    # Assert
    assert [e.seq for e in entries] == [0]
    with pytest.raises(LedgerTampered, match="bad_signature"):
        verify_ledger(tmp_path / "l.jsonl", public_key=SigningKey.generate().verify_key())


def test_increment_verifies_only_when_linked_to_the_head(lines: list[str], key: Ed25519PrivateKey) -> None:
    # Prepare: the verifier holds entries 0..2; the increment is entries 3..4
    head = (2, json.loads(lines[2])["hash"])
    # Execute
    entries = verify_ledger(lines[3:], public_key=key.public_key(), site_id="hospital-a", after=head)
    # Assert: the new entries, and an empty increment is fine
    assert [e.seq for e in entries] == [3, 4]
    assert verify_ledger([], public_key=key.public_key(), after=(4, json.loads(lines[4])["hash"])) == []
    # Assert: not linked to the head (another hash, or an entry skipped), or a forged entry
    assert _fault(lines[3:], key, after=(2, "f" * 64)) == (LedgerFault.CHAIN_BROKEN, 3)
    assert _fault(lines[4:], key, after=head) == (LedgerFault.SEQ_GAP, 3)
    forged = _resign({**json.loads(lines[3]), "record": {**RELEASE, "epsilon": 0.0}}, Ed25519PrivateKey.generate())
    assert _fault([forged, lines[4]], key, after=head) == (LedgerFault.BAD_SIGNATURE, 3)
    with pytest.raises(ValueError, match="increment"):
        verify_ledger(lines[3:], public_key=key.public_key(), after=head, expected_head=head)


def test_require_head_detects_a_cut_or_restored_ledger(lines: list[str], key: Ed25519PrivateKey,
                                                       tmp_path: Path) -> None:
    # Prepare: the head a verifier saw (5 entries), and an older copy of another ledger with 5 entries
    entries = verify_ledger(lines, public_key=key.public_key())
    with Ledger.open(tmp_path / "other.jsonl", signing_key=key, site_id="hospital-a") as other:
        for rnd in range(5):
            other.append({**RELEASE, "round": rnd, "epsilon": 0.1})
        restored = other.entries()
    # Execute / Assert: the whole ledger holds the head; a prefix or a different ledger does not
    require_head(entries, count=5, head_hash=entries[4].hash)
    require_head(entries[:3], count=0, head_hash="")
    with pytest.raises(LedgerTampered) as cut:
        require_head(entries[:4], count=5, head_hash=entries[4].hash)
    with pytest.raises(LedgerTampered) as swapped:
        require_head(restored, count=5, head_hash=entries[4].hash)
    assert (cut.value.reason, cut.value.seq) == (LedgerFault.TRUNCATED, 4)
    assert "4 entries, but 5" in str(cut.value)
    assert (swapped.value.reason, swapped.value.seq) == (LedgerFault.HEAD_MISMATCH, 4)
