"""Privacy-budget audit of the sites' signed ledgers: verify and recompute epsilon (no gRPC; the documents
are ``coordinator.audit_report``'s).

Input is what ``coordinator.ledgers.LedgerStore`` keeps under ``<state_dir>/ledgers/``: ``<site>.jsonl``
(the site's ledger as verified so far, assembled from its reports), ``<site>.crt`` (the certificate it
reported with), ``heads.json`` (the last ``(seq, hash)`` verified per site) and ``rejected/<site>/``
(reports it refused); and the round log ``<state_dir>/rounds.json`` (``coordinator.persistence``). Checks
per site, in order; the first failure marks the site FAILED with a reason code (:class:`AuditFailed`):

1. ``missing_file``: both files are there for every site named in ``heads.json``.
2. ``certificate_rejected``: the certificate names the site and, when a CA is given, verifies
   against it as a site certificate at the time of the last entry (expired certificates stay auditable).
3. ``ledger_tampered:<fault>``: hash chain and Ed25519 signatures under the key bound to the certificate,
   and the head of ``heads.json`` is still there (``security.ledger.verify_ledger``).
4. ``malformed_record``: every record is one of the types of ``security.ledger_records`` (``dp_release``,
   ``upload_without_dp``, ``dp_sum``) with its fields and types; ``round_order``: rounds never go back.
5. ``epsilon_mismatch``: the recorded epsilon of each ``dp_release`` equals ``epsilon_for`` of all
   ``(noise_multiplier, sample_rate, steps)`` released up to and including it, at its delta and accountant,
   to ``REL_TOL``; ``budget_exceeded``: it is at most its ``epsilon_max`` (checks 4-5:
   ``security.ledger_audit.check_releases``).
6. Against the round log ``<state_dir>/rounds.json`` (skipped, with a warning, when it is absent;
   ``security.ledger_audit.cross_check``): ``release_missing``: the site's masked input entered the
   revealed sum of a completed round with DP on, but its ledger has no ``dp_release`` for that round;
   ``release_unwitnessed``: a ``dp_release`` for a round whose cohort did not hold the site. A release for a
   round where the site was in the cohort but its input entered no revealed sum is fine: "charged, not
   released".
7. ``rejected_report``: the coordinator rejected a ledger report of the site (kept in
   ``ledgers/rejected/<site>/``, see ``coordinator.ledgers``).

Security:
    The audit trusts only the CA certificate passed in: without it a stored certificate is taken as is,
    so whoever can write the state directory could swap certificate and ledger together. Signatures prove
    who wrote an entry; the recomputation proves its epsilon follows from its recorded noise. Neither can
    prove the site really added that noise: that rests on the site's own code.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from coordinator.ledgers import load_rejected
from security.errors import CertificateRejected, LedgerTampered, PkiError
from security.ledger import LedgerEntry, verify_ledger
from security.ledger_audit import (  # noqa: F401 - REL_TOL re-exported
    COMPLETED,
    REL_TOL,
    AuditFailed,
    Release,
    RoundWitness,
    check_releases,
    cross_check,
    last_release,
)
from security.pki import Role
from security.pki_verify import (
    load_certificate,
    site_id_from_certificate,
    site_signing_public_key,
    verify_peer_certificate,
)


class AuditError(Exception):
    """The audit cannot start (no ledger directory, unreadable CA certificate); a user error."""


@dataclass(frozen=True, slots=True)
class SiteAudit:
    """The audit of one site: ``error`` is None when every check passed (then ``releases`` is complete).

    ``cross_checked`` says whether the releases were held against the round log (``rounds.json``);
    ``charged_not_released`` lists the rounds with a DP release whose input entered no revealed sum;
    ``rejected`` holds the ledger reports the coordinator rejected (``coordinator.ledgers.load_rejected``);
    ``head`` is the coordinator's verified ``(entries, hash)`` for ``pfmh-participant budget --coordinator-head``.
    """

    site: str
    entries: int
    releases: tuple[Release, ...]
    error: AuditFailed | None = None
    certificate_serial: str | None = None
    ca_verified: bool = False
    cross_checked: bool = False
    charged_not_released: tuple[int, ...] = ()
    rejected: tuple[dict[str, Any], ...] = ()
    head: tuple[int, str] | None = None
    rounds: tuple[RoundWitness, ...] = ()  # the round log's rounds that involve this site

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def last_release(self) -> Release | None:
        """The latest ``dp_release`` (it carries the whole history's epsilon), or None."""
        return last_release(self.releases)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Audits of every site found under ``<state_dir>/ledgers``, sorted by site."""

    state_dir: str
    generated: str
    ca_checked: bool
    sites: tuple[SiteAudit, ...]
    round_log: bool = False  # rounds.json was found: ledgers were cross-checked with it
    exclusions: tuple[dict[str, Any], ...] = ()  # from the round log: sites excluded for misbehaving

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sites)


def _entry_time(entries: Sequence[LedgerEntry]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(entries[-1].time) if entries else None
    except ValueError:
        return None


def round_witnesses(history: Sequence[Mapping[str, Any]]) -> dict[int, RoundWitness]:
    """The round log of ``rounds.json`` (``coordinator.persistence``) as witnesses, by round number.

    Entries written before the log recorded ``inputs`` use ``survivors`` (the same sites: those whose
    masked inputs were summed); ``dp`` and ``inputs_received`` are then unknown (None).
    """
    out: dict[int, RoundWitness] = {}
    for h in history:
        outcome = str(h["outcome"])
        inputs = h.get("inputs", h.get("survivors", ())) if outcome == COMPLETED else ()
        received = h.get("inputs_received")
        dp = h.get("dp")
        out[int(h["round"])] = RoundWitness(int(h["round"]), outcome, frozenset(map(str, h.get("cohort", ()))),
                                            frozenset(map(str, inputs)),
                                            None if received is None else frozenset(map(str, received)),
                                            None if dp is None else bool(dp))
    return out


def audit_site(ledger_dir: Path, site: str, *, ca_cert: x509.Certificate | None = None,
               expected_head: tuple[int, str] | None = None,
               witnesses: Mapping[int, RoundWitness] | None = None,
               rejected: Sequence[dict[str, Any]] = ()) -> SiteAudit:
    """Audit one site's stored ledger (checks 1-7 of the module docstring); failures land in ``error``."""
    path, cert_path = ledger_dir / f"{site}.jsonl", ledger_dir / f"{site}.crt"
    entries: list[LedgerEntry] = []
    releases: tuple[Release, ...] = ()
    charged: tuple[int, ...] = ()
    serial = None
    head = None if expected_head is None else (expected_head[0] + 1, expected_head[1])
    mine = tuple(w for w in sorted((witnesses or {}).values(), key=lambda w: w.round)
                 if site in w.cohort or site in w.inputs)
    try:
        missing = [p.name for p in (path, cert_path) if not p.is_file()]
        if missing:
            raise AuditFailed(site, "missing_file", f"{missing} absent from {ledger_dir}; restore them from a "
                              "backup or have the site report its ledger again")
        try:
            cert = load_certificate(cert_path)
            serial = format(cert.serial_number, "x")
            if (name := site_id_from_certificate(cert)) != site:
                raise AuditFailed(site, "certificate_rejected", f"{cert_path.name} is issued to {name!r}")
            entries = verify_ledger(path, public_key=site_signing_public_key(cert), site_id=site,
                                    expected_head=expected_head)
            if ca_cert is not None:
                verify_peer_certificate(cert, ca_cert=ca_cert, allowed_roles=(Role.SITE,), expected_id=site,
                                        now=_entry_time(entries))
        except (CertificateRejected, PkiError) as exc:
            raise AuditFailed(site, "certificate_rejected", str(exc)) from exc
        except LedgerTampered as exc:
            raise AuditFailed(site, f"ledger_tampered:{exc.reason}", f"{exc}; the stored ledger is not what "
                              "the site signed", seq=exc.seq) from exc
        releases = check_releases(entries, site=site)
        if witnesses is not None:
            charged = cross_check(releases, witnesses, site=site)
        if rejected:
            first = rejected[0]
            raise AuditFailed(site, "rejected_report", f"the coordinator rejected {len(rejected)} ledger "
                              f"report(s) of this site; the first at {first.get('received')}: {first.get('message')} "
                              f"(kept in {Path(first['file']).parent}; move them away once reviewed)")
    except AuditFailed as exc:
        return SiteAudit(site, len(entries), releases, exc, serial, False, witnesses is not None, charged,
                         tuple(rejected), head, mine)
    return SiteAudit(site, len(entries), releases, None, serial, ca_cert is not None, witnesses is not None,
                     charged, tuple(rejected), head, mine)


def audit_state_dir(state_dir: Path | str, *, ca_cert_path: Path | str | None = None,
                    now: dt.datetime | None = None) -> AuditReport:
    """Audit every site whose ledger (or head, or a rejected report) is stored under ``<state_dir>/ledgers``,
    cross-checked with the round log ``<state_dir>/rounds.json`` where it exists.

    Raises:
        AuditError: no ledger directory, or the CA certificate, heads, round log or a rejected report
            cannot be read.
    """
    ledger_dir = Path(state_dir) / "ledgers"
    if not ledger_dir.is_dir():
        raise AuditError(f"no ledger directory {ledger_dir}; pass the coordinator's state_dir "
                         "(sites report ledgers after each round)")
    round_log = Path(state_dir) / "rounds.json"
    try:
        ca_cert = load_certificate(Path(ca_cert_path)) if ca_cert_path is not None else None
        heads_file = ledger_dir / "heads.json"
        raw = json.loads(heads_file.read_text()) if heads_file.is_file() else {}
        heads = {str(site): (int(seq), str(digest)) for site, (seq, digest) in raw.items()}
        witnesses = (round_witnesses(json.loads(round_log.read_text())["history"]) if round_log.is_file()
                     else None)
        rejected = load_rejected(ledger_dir)
    except (OSError, AttributeError, KeyError, TypeError, ValueError, CertificateRejected) as exc:
        raise AuditError(f"cannot read the audit inputs ({exc}); check --ca, {ledger_dir}/heads.json, "
                         f"{ledger_dir}/rejected/ and {round_log}") from exc
    names = sorted({p.stem for p in ledger_dir.glob("*.jsonl")} | set(heads) | set(rejected))
    sites = tuple(audit_site(ledger_dir, name, ca_cert=ca_cert, expected_head=heads.get(name), witnesses=witnesses,
                             rejected=rejected.get(name, ())) for name in names)
    generated = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    return AuditReport(str(state_dir), generated, ca_cert is not None, sites, witnesses is not None,
                       _exclusions(Path(state_dir)))


def _exclusions(state_dir: Path) -> tuple[dict[str, Any], ...]:
    """Every exclusion in the coordinator's round log (``rounds.json``), in round order."""
    try:
        history = json.loads((state_dir / "rounds.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple({"round": h.get("round"), "site": site, "until_round": info.get("until_round"),
                  "reason": info.get("reason")}
                 for h in history if isinstance(h, dict) for site, info in sorted(h.get("excluded", {}).items()))
