"""Test helpers: a throwaway PKI, DP release records with accountant epsilons, signed ledgers, stored reports.

Shared by tests/coordinator/test_audit.py and tests/participant/test_budget_cli.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.ledgers import LedgerStore
from security.accountant import epsilon_for
from security.ledger import SIGNATURE_DOMAIN, Ledger, canonical_json
from security.pki import Role, create_ca, load_signing_key
from security.pki_issue import IssuedIdentity, issue_certificate

SITES = ("hospital-a", "hospital-b")
PROTO = (1.1, 1.0, 1)        # sigma, q, steps of one prototype release
SGD = (1.3, 0.05, 40)        # one round of DP-SGD
COVERED = {"proto": "per-class prototype sums and counts (record-level DP)",
           "sgd": "shared-model update of this round (record-level DP-SGD)"}
NOT_COVERED = "participation of the site and the number of its records per round"


@dataclass(frozen=True)
class AuditPki:
    ca_cert: Path
    sites: dict[str, IssuedIdentity]
    foreign: IssuedIdentity  # 'hospital-a' issued by another CA of the same federation id


def make_pki(root: Path) -> AuditPki:
    ca = create_ca(federation_id="demo", out_dir=root / "pki")
    sites = {s: issue_certificate(ca=ca, role=Role.SITE, name=s) for s in SITES}
    other = create_ca(federation_id="demo", out_dir=root / "other")
    return AuditPki(ca.root / "ca" / "ca.crt", sites, issue_certificate(ca=other, role=Role.SITE, name=SITES[0]))


def release_records(plan: Sequence[tuple[int, str]], *, delta: float = 1e-5, accountant: str = "rdp",
                    epsilon_max: float = 20.0, sigma: float | None = None) -> list[dict[str, Any]]:
    """Records for ``plan`` = [(round, "proto" | "sgd" | "nodp"), ...], epsilons from the accountant."""
    history: list[tuple[float, float, int]] = []
    out: list[dict[str, Any]] = []
    for rnd, what in plan:
        if what == "nodp":
            out.append({"kind": "upload_without_dp", "round": rnd, "what": "prototype statistics (DP off)"})
            continue
        s, q, steps = PROTO if what == "proto" else SGD
        s = sigma if sigma is not None else s
        history.append((s, q, steps))
        out.append({"kind": "dp_release", "round": rnd,
                    "mechanism": "gaussian_prototype_statistics" if what == "proto" else "dp_sgd_shared_model",
                    "mode": "local", "noise_multiplier": s, "sensitivity": 2 ** 0.5 if what == "proto" else 1.0,
                    "sample_rate": q, "steps": steps, "delta": delta,
                    "epsilon": epsilon_for(history, delta, accountant), "epsilon_max": epsilon_max,
                    "accountant": accountant, "covered": COVERED[what], "not_covered": NOT_COVERED})
    return out


def write_ledger(path: Path, identity: IssuedIdentity, site: str, records: Sequence[dict[str, Any]]) -> list[str]:
    """A real signed ledger at ``path`` (signed with ``identity``'s signing key); returns its lines."""
    key = load_signing_key(identity.signing_key_path)
    with Ledger.open(path, signing_key=key, site_id=site) as ledger:
        for record in records:
            ledger.append(record)
        return ledger.export_lines()


def report(state_dir: Path, site: str, lines: list[str], identity: IssuedIdentity) -> None:
    """Store a ledger as the coordinator does on ReportLedger (verified by ``LedgerStore.receive``)."""
    LedgerStore(state_dir).receive(site, lines, identity.cert_path.read_bytes())


def resign(line: str, key: Ed25519PrivateKey, **record_changes: Any) -> str:
    """``line`` with its record changed, re-hashed and re-signed by ``key`` (keeps seq and prev_hash)."""
    entry = json.loads(line)
    entry["record"] = {**entry["record"], **record_changes}
    body = {k: entry[k] for k in ("seq", "prev_hash", "time", "site", "record")}
    entry["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()
    entry["signature"] = base64.b64encode(key.sign(SIGNATURE_DOMAIN + bytes.fromhex(entry["hash"]))).decode()
    return canonical_json(entry).decode()
