"""``pfmh-coordinator audit report | verify``: privacy-budget audit of the sites' reported ledgers.

Examples::

    pfmh-coordinator audit verify --state-dir state/coordinator --ca pki/ca/ca.crt
    pfmh-coordinator audit report --state-dir state/coordinator --ca pki/ca/ca.crt --out audit/

Exit codes: 0 every site verified; 1 a site failed
(signature, hash chain, epsilon recomputation, budget, a release missing for a round its input entered
or claimed for a round it was not in, a rejected ledger report: the message names site, seq and round);
2 user error (no ledger directory, unreadable CA certificate). ``report`` writes its files even when a
site fails, marking it FAILED, and still exits 1. See ``coordinator.audit`` for the checks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.audit import AuditError, AuditReport, SiteAudit, audit_state_dir, write_report

_DESCRIPTION = """Privacy-budget audit of the sites' signed ledgers, as the coordinator received them.

examples:
  pfmh-coordinator audit verify --state-dir state/coordinator --ca pki/ca/ca.crt
  pfmh-coordinator audit report --state-dir state/coordinator --ca pki/ca/ca.crt --out audit/

exit codes: 0 every site verified; 1 a site failed (signature, hash chain, epsilon recomputation,
budget, a release missing for a round its input entered or claimed for a round it was not in, a
rejected ledger report: the message names site, seq and round); 2 user error (no ledger directory,
unreadable CA certificate). `report` writes its files even when a site fails, marking it FAILED,
and still exits 1.
"""
_NO_CA = ("warning: certificates were NOT checked against the federation CA (pass --ca CA_CERT); "
          "a stored certificate was trusted as is")
_NO_ROUND_LOG = ("warning: no round log {state_dir}/rounds.json: ledgers were NOT cross-checked with the rounds "
                 "their inputs entered (a ledger cut at its tail would pass)")


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit report`` and ``audit verify`` to ``subparsers`` (from ``add_subparsers``).

    Dispatch the parsed namespace with :func:`run_audit` when ``args.command == "audit"`` (or whatever
    ``dest`` the caller gave its subparsers); ``args.audit_command`` is ``"report"`` or ``"verify"``.
    """
    audit = subparsers.add_parser("audit", help="privacy-budget audit of the sites' signed ledgers",
                                  description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = audit.add_subparsers(dest="audit_command", required=True)
    report = sub.add_parser("report", help="verify, then write audit.json, audit.md and epsilon.png")
    verify = sub.add_parser("verify", help="check signatures, hash chains and recomputed epsilon; exit 1 on any "
                            "mismatch")
    for p in (report, verify):
        p.add_argument("--state-dir", required=True, type=Path,
                       help="the coordinator's state_dir (holding ledgers/)")
        p.add_argument("--ca", type=Path, metavar="CA_CERT",
                       help="federation CA certificate; each site certificate must verify against it")
    report.add_argument("--out", type=Path, help="output directory (default: <state-dir>/audit)")
    return audit


def _site_line(a: SiteAudit) -> str:
    if a.error is not None:
        return f"FAILED {a.error}"
    last = a.last_release
    dp = sum(r.kind == "dp_release" for r in a.releases)
    no_dp = len(a.releases) - dp
    head = f"OK     site {a.site!r}: {a.entries} entries, signatures and chain valid, {dp} DP releases recomputed"
    if last is None:
        return head + (f"; {no_dp} uploads WITHOUT DP" if no_dp else "; no releases yet")
    tail = (f"; epsilon {last.get('epsilon'):.6g} of {last.get('epsilon_max'):.6g} spent, "
            f"{last.budget_left:.6g} left (delta {last.get('delta'):g}, {last.get('accountant')})")
    return head + tail + (f"; {no_dp} uploads WITHOUT DP" if no_dp else "")


def _cross_check_line(a: SiteAudit) -> str | None:
    """The round-log cross-check of a verified site, and the head its operator can check the site's ledger with."""
    if not a.ok or not a.cross_checked:
        return None
    in_sum = sum(a.site in w.inputs for w in a.rounds)
    charged = ", ".join(map(str, a.charged_not_released))
    line = (f"       site {a.site!r}: matches the round log (its input in {in_sum} revealed sums)"
            + (f"; charged, not released in rounds {charged}" if charged else ""))
    return line + (f"; coordinator head {a.head[0]}:{a.head[1]}" if a.head else "")


def _print_report(report: AuditReport) -> None:
    if not report.sites:
        print(f"no site ledgers under {report.state_dir}/ledgers yet")
    for a in report.sites:
        print(_site_line(a), file=sys.stdout if a.ok else sys.stderr)
        if (line := _cross_check_line(a)) is not None:
            print(line)
    if not report.ca_checked:
        print(_NO_CA, file=sys.stderr)
    if not report.round_log:
        print(_NO_ROUND_LOG.format(state_dir=report.state_dir), file=sys.stderr)


def run_audit(args: argparse.Namespace) -> int:
    """Run ``audit report`` or ``audit verify`` from parsed ``args``; returns the exit code (0, 1 or 2)."""
    try:
        report = audit_state_dir(args.state_dir, ca_cert_path=args.ca)
    except AuditError as exc:
        print(f"pfmh-coordinator audit: error: {exc}", file=sys.stderr)
        return 2
    _print_report(report)
    if args.audit_command == "report":
        out = args.out if args.out is not None else Path(args.state_dir) / "audit"
        try:
            paths = write_report(report, out)
        except OSError as exc:
            print(f"pfmh-coordinator audit: error: cannot write the report to {out}: {exc}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(str(p) for p in paths))
    if not report.ok:
        failed = [a.site for a in report.sites if not a.ok]
        print(f"AUDIT FAILED for {len(failed)} of {len(report.sites)} sites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone ``pfmh-coordinator`` parser holding only the audit commands."""
    parser = argparse.ArgumentParser(prog="pfmh-coordinator", description="pfmh coordinator: audit commands")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m coordinator.audit_cli audit {report,verify} ...``; returns the exit code."""
    return run_audit(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
