"""``pfmh-participant budget``: verify this site's own ledger, recompute epsilon, show spent and remaining.

Examples::

    pfmh-participant budget --config site.toml
    pfmh-participant budget --ledger state/hospital-a/ledger.jsonl --identity pki/hospital-a
    pfmh-participant budget --config site.toml --coordinator-head 7:3f1c...e9

``--config`` takes the ledger (``<state_dir>/ledger.jsonl``) and the TLS files (``tls.cert``,
``tls.signing_key``, ``tls.ca_cert``) from the site's config; ``--identity`` is the site's PKI directory
from ``pfmh-ca issue`` (``tls.crt``, ``signing.key``, ``ca.crt``). Checks: the certificate is a site
certificate of that CA (at the time of the last entry) and binds the public half of the signing key; every
entry's hash chain and Ed25519 signature verify under it; each DP release's recorded epsilon equals the
accountant's epsilon of all releases recorded up to it (``security.ledger_audit.check_releases``).

Truncation: a ledger whose last entries were cut off (or restored from an old backup) is a valid, shorter
chain, and its smaller epsilon cannot be told from the file alone; the command says so. Given the head the
coordinator verified for this site (``--coordinator-head COUNT:HASH``: entry count and the last entry's
hash, as ``pfmh-coordinator audit verify`` prints it per site and ``<state_dir>/ledgers/heads.json`` holds
it), it fails when the ledger has fewer entries or another entry at that position. The site daemon does
the same check at every Join, with the head the coordinator hands it.

Exit codes: 0 verified; 1 tampering, truncation or a mismatch (the message names seq and round); 2 user
error (missing file, wrong key, malformed head). Stand-alone: ``python -m participant.budget_cli budget ...``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from participant.config import SiteConfig
from proto.settings import SettingsError, load_toml
from security.errors import CertificateRejected, LedgerTampered, PkiError
from security.ledger import verify_ledger
from security.ledger_audit import DP_RELEASE, AuditFailed, Release, check_releases, last_release, round_summary
from security.pki import CA_CERT, SIGNING_KEY, TLS_CERT, Role, load_signing_key
from security.pki_verify import (
    load_certificate,
    site_id_from_certificate,
    site_signing_public_key,
    verify_peer_certificate,
)

LEDGER_FILE = "ledger.jsonl"  # participant.site keeps the ledger at <state_dir>/ledger.jsonl


class BudgetCheckError(Exception):
    """The inputs of ``budget`` are missing or do not belong together (a user error, exit code 2)."""


def add_budget_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``budget`` to ``subparsers``; dispatch its namespace with :func:`run_budget`."""
    p = subparsers.add_parser("budget", help="verify this site's ledger and show epsilon spent / remaining",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="site.toml (ledger and TLS files from it)")
    p.add_argument("--ledger", type=Path, help="the site's ledger file (JSON lines), with --identity")
    p.add_argument("--identity", type=Path,
                   help="the site's PKI directory (tls.crt, signing.key, ca.crt from 'pfmh-ca issue')")
    p.add_argument("--coordinator-head", type=_head, metavar="COUNT:HASH",
                   help="the head the coordinator verified for this site (entry count and last hash, from "
                        "'pfmh-coordinator audit verify'); without it truncation cannot be checked")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return p


def _head(text: str) -> tuple[int, str]:
    count, sep, digest = text.partition(":")
    if not sep or not count.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(f"{text!r} is not COUNT:HASH (an entry count, ':', 64 lowercase hex "
                                         "digits, as 'pfmh-coordinator audit verify' prints it)")
    return int(count), digest


def _public_bytes(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _input_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Ledger, certificate, signing key and CA certificate, from ``--config`` or ``--ledger`` + ``--identity``."""
    if args.config is not None and args.ledger is None and args.identity is None:
        try:
            cfg = load_toml(SiteConfig, args.config)  # not load_config: the data file is not needed here
        except SettingsError as exc:
            raise BudgetCheckError(str(exc)) from exc
        base = args.config.resolve().parent
        return {"ledger": base / cfg.state_dir / LEDGER_FILE, TLS_CERT: base / cfg.tls.cert,
                SIGNING_KEY: base / cfg.tls.signing_key, CA_CERT: base / cfg.tls.ca_cert}
    if args.config is None and args.ledger is not None and args.identity is not None:
        return {"ledger": args.ledger, **{n: args.identity / n for n in (TLS_CERT, SIGNING_KEY, CA_CERT)}}
    raise BudgetCheckError("give either --config site.toml, or both --ledger FILE and --identity DIR")


def budget_main(args: argparse.Namespace) -> int:
    """Verify the ledger with the site's own key and certificate and print its budget; returns 0.

    Raises:
        BudgetCheckError: a file is missing, or ``signing.key`` is not the key bound to ``tls.crt``.
        AuditFailed: the ledger or certificate failed a check (reason, seq and round in the message).
    """
    paths = _input_paths(args)
    missing = [str(p) for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise BudgetCheckError(f"missing {missing}; give the site's ledger file and its 'pfmh-ca issue' directory")
    try:
        cert, ca_cert = load_certificate(paths[TLS_CERT]), load_certificate(paths[CA_CERT])
        site = site_id_from_certificate(cert)
        own = load_signing_key(paths[SIGNING_KEY]).public_key()
        bound = site_signing_public_key(cert)
    except CertificateRejected as exc:
        raise AuditFailed(str(paths[TLS_CERT]), "certificate_rejected", str(exc)) from exc
    except PkiError as exc:
        raise BudgetCheckError(str(exc)) from exc
    if _public_bytes(own) != _public_bytes(bound):
        raise BudgetCheckError(f"{paths[SIGNING_KEY]} is not the signing key bound to {paths[TLS_CERT]}; "
                               "use the signing.key issued together with this certificate")
    head = getattr(args, "coordinator_head", None)
    try:
        expected = None if head is None or head[0] == 0 else (head[0] - 1, head[1])
        entries = verify_ledger(paths["ledger"], public_key=own, site_id=site, expected_head=expected)
        when = dt.datetime.fromisoformat(entries[-1].time) if entries else None  # expired certs stay auditable
        verify_peer_certificate(cert, ca_cert=ca_cert, allowed_roles=(Role.SITE,), expected_id=site, now=when)
    except LedgerTampered as exc:
        raise AuditFailed(site, f"ledger_tampered:{exc.reason}", str(exc), seq=exc.seq) from exc
    except (CertificateRejected, PkiError, ValueError) as exc:
        raise AuditFailed(site, "certificate_rejected", str(exc)) from exc
    releases = check_releases(entries, site=site)
    _print(site, len(entries), releases, paths["ledger"], head=head, as_json=args.json)
    return 0


def _print(site: str, count: int, releases: Sequence[Release], ledger: Path, *, head: tuple[int, str] | None,
           as_json: bool) -> None:
    last = last_release(releases)
    spent = float(last.get("epsilon")) if last else 0.0
    no_dp = [r for r in releases if r.kind != DP_RELEASE]
    truncation = (f"checked against the coordinator's head ({head[0]} entries): not truncated" if head else
                  "NOT checked: a ledger cut at its tail verifies on its own; pass --coordinator-head COUNT:HASH "
                  "(from 'pfmh-coordinator audit verify') to check it")
    if as_json:
        doc = {"site": site, "ledger": str(ledger), "entries": count, "verified": True,
               "truncation_checked": head is not None,
               "epsilon_spent": spent, "epsilon_max": last.get("epsilon_max") if last else None,
               "remaining": last.budget_left if last else None, "delta": last.get("delta") if last else None,
               "accountant": last.get("accountant") if last else None, "rounds": round_summary(releases)}
        print(json.dumps(doc, indent=1, sort_keys=True))
        return
    dp = len(releases) - len(no_dp)
    print(f"site {site}: ledger {ledger} verified ({count} entries; signatures and hash chain "
          f"valid; epsilon recomputed for {dp} DP releases)")
    print(f"truncation: {truncation}")
    if last is None:
        print("epsilon spent 0: no DP release recorded yet")
    else:
        print(f"epsilon spent {spent:.6g} of epsilon_max {last.get('epsilon_max'):.6g} at delta "
              f"{last.get('delta'):g} ({last.get('accountant')}); remaining {last.budget_left:.6g}")
        print(f"last DP release: round {last.round} ({last.get('mechanism')}, sigma {last.get('noise_multiplier'):g})")
    for r in no_dp:
        print(f"round {r.round}: uploaded WITHOUT DP: {r.get('what')}")


def run_budget(args: argparse.Namespace) -> int:
    """:func:`budget_main` with errors turned into messages and exit codes (1 failed check, 2 user error)."""
    try:
        return budget_main(args)
    except AuditFailed as exc:
        print(f"BUDGET CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    except (BudgetCheckError, OSError) as exc:
        print(f"pfmh-participant budget: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m participant.budget_cli budget (--config FILE | --ledger FILE --identity DIR)``; exit code."""
    parser = argparse.ArgumentParser(prog="pfmh-participant", description="pfmh site: budget command")
    add_budget_command(parser.add_subparsers(dest="command", required=True))
    return run_budget(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
