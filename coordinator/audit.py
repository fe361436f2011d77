"""Privacy-budget audit of the sites' signed ledgers: verify, recompute epsilon, report (no gRPC).

Input is what ``coordinator.ledgers.LedgerStore`` keeps under ``<state_dir>/ledgers/``: ``<site>.jsonl``
(the site's whole ledger as last reported), ``<site>.crt`` (the certificate it reported with) and
``heads.json`` (the last ``(seq, hash)`` seen per site). Checks per site, in order; the first failure
marks the site FAILED with a reason code (:class:`AuditFailed`):

1. ``missing_file``: both files are there for every site named in ``heads.json``.
2. ``certificate_rejected``: the certificate names the site and, when a CA is given, verifies
   against it as a site certificate at the time of the last entry (expired certificates stay auditable).
3. ``ledger_tampered:<fault>``: hash chain and Ed25519 signatures under the key bound to the certificate,
   and the head of ``heads.json`` is still there (``security.ledger.verify_ledger``).
4. ``malformed_record``: every record is a ``dp_release`` or an ``upload_without_dp`` with the fields and
   types of the participant's schema; ``round_order``: rounds never go back.
5. ``epsilon_mismatch``: the recorded epsilon of each ``dp_release`` equals ``epsilon_for`` of all
   ``(noise_multiplier, sample_rate, steps)`` released up to and including it, at its delta and accountant,
   to ``REL_TOL``; ``budget_exceeded``: it is at most its ``epsilon_max``.

Security:
    The audit trusts only the CA certificate passed in: without it a stored certificate is taken as is,
    so whoever can write the state directory could swap certificate and ledger together. Signatures prove
    who wrote an entry; the recomputation proves its epsilon follows from its recorded noise. Neither can
    prove the site really added that noise: that rests on the site's own code.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from security.accountant import epsilon_for
from security.errors import CertificateRejected, LedgerTampered, PkiError, UnsafeConfiguration
from security.ledger import LedgerEntry, verify_ledger
from security.pki import Role
from security.pki_verify import (
    load_certificate,
    site_id_from_certificate,
    site_signing_public_key,
    verify_peer_certificate,
)

REL_TOL = 1e-9
DP_RELEASE, NO_DP = "dp_release", "upload_without_dp"
MECHANISMS = ("gaussian_prototype_statistics", "dp_sgd_shared_model")
_CHOICES = {"mechanism": MECHANISMS, "mode": ("local", "distributed"), "accountant": ("rdp", "prv")}
_RELEASE_FIELDS: dict[str, type] = {
    "round": int, "mechanism": str, "mode": str, "noise_multiplier": float, "sensitivity": float,
    "sample_rate": float, "steps": int, "delta": float, "epsilon": float, "epsilon_max": float,
    "accountant": str, "covered": str, "not_covered": str}
_NO_DP_FIELDS: dict[str, type] = {"round": int, "what": str}


class AuditError(Exception):
    """The audit cannot start (no ledger directory, unreadable CA certificate); a user error."""


class AuditFailed(Exception):
    """A site's ledger failed the audit; the message names site, reason, seq and round, and the fix."""

    def __init__(self, site: str, reason: str, detail: str, *, seq: int | None = None,
                 round_number: int | None = None) -> None:
        where = "".join([f" at seq {seq}" if seq is not None else "",
                         f" (round {round_number})" if round_number is not None else ""])
        super().__init__(f"site {site!r}: {reason}{where}: {detail}")
        self.site, self.reason, self.seq, self.round_number = site, reason, seq, round_number


@dataclass(frozen=True, slots=True)
class Release:
    """One verified ledger entry: a DP release (``kind == "dp_release"``) or an upload without DP."""

    seq: int
    round: int
    time: str
    kind: str
    record: dict[str, Any]
    epsilon_recomputed: float | None = None

    def get(self, key: str) -> Any:
        return self.record.get(key)

    @property
    def budget_left(self) -> float | None:
        """``epsilon_max - epsilon`` after this release, never below 0 (None for an upload without DP)."""
        if self.kind != DP_RELEASE:
            return None
        return max(0.0, float(self.record["epsilon_max"]) - float(self.record["epsilon"]))


@dataclass(frozen=True, slots=True)
class SiteAudit:
    """The audit of one site: ``error`` is None when every check passed (then ``releases`` is complete)."""

    site: str
    entries: int
    releases: tuple[Release, ...]
    error: AuditFailed | None = None
    certificate_serial: str | None = None
    ca_verified: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def last_release(self) -> Release | None:
        """The latest ``dp_release`` (it carries the whole history's epsilon), or None."""
        return next((r for r in reversed(self.releases) if r.kind == DP_RELEASE), None)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Audits of every site found under ``<state_dir>/ledgers``, sorted by site."""

    state_dir: str
    generated: str
    ca_checked: bool
    sites: tuple[SiteAudit, ...]
    exclusions: tuple[dict[str, Any], ...] = ()  # from the round log: sites excluded for misbehaving

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sites)


def _field_error(record: dict[str, Any], fields: dict[str, type]) -> str | None:
    for key, tp in fields.items():
        value = record.get(key)
        numeric = tp is float and isinstance(value, int | float)
        if value is None or isinstance(value, bool) or not (numeric or isinstance(value, tp)):
            return f"field {key!r} = {value!r} is missing or not {tp.__name__}"
        if key in _CHOICES and value not in _CHOICES[key]:
            return f"field {key!r} = {value!r} is not one of {_CHOICES[key]}"
    return None


def check_releases(entries: Sequence[LedgerEntry], *, site: str) -> tuple[Release, ...]:
    """Check every record's schema and recompute each DP release's epsilon from the recorded history.

    Args:
        entries: the site's verified ledger entries, oldest first.
        site: the site id, for messages.

    Raises:
        AuditFailed: ``malformed_record``, ``round_order``, ``epsilon_mismatch`` or ``budget_exceeded``.
    """
    history: list[tuple[float, float, int]] = []
    out: list[Release] = []
    last_round = -1
    for e in entries:
        rec = e.record
        fields = {DP_RELEASE: _RELEASE_FIELDS, NO_DP: _NO_DP_FIELDS}.get(rec.get("kind"))  # type: ignore[arg-type]
        bad = (f"kind {rec.get('kind')!r} is neither {DP_RELEASE!r} nor {NO_DP!r}" if fields is None
               else _field_error(rec, fields))
        if bad:
            raw = rec.get("round")
            raise AuditFailed(site, "malformed_record", f"{bad}; the ledger is not from a compatible "
                              "pfmh-participant", seq=e.seq, round_number=raw if isinstance(raw, int) else None)
        rnd: int = rec["round"]
        if rnd < last_round:
            raise AuditFailed(site, "round_order", f"round {rnd} recorded after round {last_round}",
                              seq=e.seq, round_number=rnd)
        last_round = rnd
        if rec["kind"] == NO_DP:
            out.append(Release(e.seq, rnd, e.time, NO_DP, rec))
            continue
        history.append((rec["noise_multiplier"], rec["sample_rate"], rec["steps"]))
        try:
            recomputed = epsilon_for(history, rec["delta"], rec["accountant"])
        except UnsafeConfiguration as exc:
            raise AuditFailed(site, "malformed_record", str(exc), seq=e.seq, round_number=rnd) from exc
        recorded = float(rec["epsilon"])
        if not math.isclose(recorded, recomputed, rel_tol=REL_TOL, abs_tol=0.0):
            raise AuditFailed(site, "epsilon_mismatch", f"recorded epsilon {recorded!r} but the {len(history)} "
                              f"recorded releases give {recomputed!r} ({rec['accountant']}, delta "
                              f"{rec['delta']:g}); the ledger understates or misstates the spent budget",
                              seq=e.seq, round_number=rnd)
        if recorded > rec["epsilon_max"] * (1 + REL_TOL):
            raise AuditFailed(site, "budget_exceeded", f"epsilon {recorded:.6g} > epsilon_max "
                              f"{rec['epsilon_max']:.6g}; the site released past its budget",
                              seq=e.seq, round_number=rnd)
        out.append(Release(e.seq, rnd, e.time, DP_RELEASE, rec, recomputed))
    return tuple(out)


def _entry_time(entries: Sequence[LedgerEntry]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(entries[-1].time) if entries else None
    except ValueError:
        return None


def audit_site(ledger_dir: Path, site: str, *, ca_cert: x509.Certificate | None = None,
               expected_head: tuple[int, str] | None = None) -> SiteAudit:
    """Audit one site's stored ledger (checks 1-5 of the module docstring); failures land in ``error``."""
    path, cert_path = ledger_dir / f"{site}.jsonl", ledger_dir / f"{site}.crt"
    entries: list[LedgerEntry] = []
    serial = None
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
    except AuditFailed as exc:
        return SiteAudit(site, len(entries), (), exc, serial, False)
    return SiteAudit(site, len(entries), releases, None, serial, ca_cert is not None)


def audit_state_dir(state_dir: Path | str, *, ca_cert_path: Path | str | None = None,
                    now: dt.datetime | None = None) -> AuditReport:
    """Audit every site whose ledger (or head) is stored under ``<state_dir>/ledgers``.

    Raises:
        AuditError: no ledger directory, or the CA certificate cannot be read.
    """
    ledger_dir = Path(state_dir) / "ledgers"
    if not ledger_dir.is_dir():
        raise AuditError(f"no ledger directory {ledger_dir}; pass the coordinator's state_dir "
                         "(sites report ledgers after each round)")
    try:
        ca_cert = load_certificate(Path(ca_cert_path)) if ca_cert_path is not None else None
        heads_file = ledger_dir / "heads.json"
        raw = json.loads(heads_file.read_text()) if heads_file.is_file() else {}
        heads = {str(site): (int(seq), str(digest)) for site, (seq, digest) in raw.items()}
    except (OSError, AttributeError, TypeError, ValueError, CertificateRejected) as exc:
        raise AuditError(f"cannot read the audit inputs ({exc}); check --ca and {ledger_dir}/heads.json") from exc
    names = sorted({p.stem for p in ledger_dir.glob("*.jsonl")} | set(heads))
    sites = tuple(audit_site(ledger_dir, name, ca_cert=ca_cert, expected_head=heads.get(name)) for name in names)
    generated = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    return AuditReport(str(state_dir), generated, ca_cert is not None, sites, _exclusions(Path(state_dir)))


def _exclusions(state_dir: Path) -> tuple[dict[str, Any], ...]:
    """Every exclusion in the coordinator's round log (``rounds.json``), in round order."""
    try:
        history = json.loads((state_dir / "rounds.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple({"round": h.get("round"), "site": site, "until_round": info.get("until_round"),
                  "reason": info.get("reason")}
                 for h in history if isinstance(h, dict) for site, info in sorted(h.get("excluded", {}).items()))


# ---------------------------------------------------------------------------------------------- rendering
def round_summary(audit: SiteAudit) -> list[dict[str, Any]]:
    """Per round of ``audit``: its releases, epsilon and budget left after it, and whether DP covered it."""
    rounds: dict[int, dict[str, Any]] = {}
    epsilon, left = 0.0, None
    for r in audit.releases:
        row = rounds.setdefault(r.round, {"round": r.round, "mechanisms": [], "uploads_without_dp": []})
        if r.kind == DP_RELEASE:
            row["mechanisms"].append(r.get("mechanism"))
            epsilon, left = float(r.get("epsilon")), r.budget_left
        else:
            row["uploads_without_dp"].append(r.get("what"))
        row.update(epsilon=epsilon, budget_left=left, all_dp=not row["uploads_without_dp"])
    return [rounds[k] for k in sorted(rounds)]


def _site_json(a: SiteAudit) -> dict[str, Any]:
    last = a.last_release
    releases = [{"seq": r.seq, "round": r.round, "time": r.time, **r.record,
                 "epsilon_recomputed": r.epsilon_recomputed, "budget_left": r.budget_left} for r in a.releases]
    dp = [r for r in a.releases if r.kind == DP_RELEASE]
    err = a.error
    return {"site": a.site, "status": "verified" if a.ok else "FAILED", "entries": a.entries,
            "error": None if err is None else {"reason": err.reason, "seq": err.seq, "round": err.round_number,
                                               "message": str(err)},
            "certificate_serial": a.certificate_serial, "certificate_verified_against_ca": a.ca_verified,
            "epsilon_spent": float(last.get("epsilon")) if last else 0.0,
            "epsilon_max": last.get("epsilon_max") if last else None,
            "budget_left": last.budget_left if last else None,
            "delta": last.get("delta") if last else None, "accountant": last.get("accountant") if last else None,
            "covered": sorted({r.get("covered") for r in dp}),
            "not_covered": sorted({r.get("not_covered") for r in dp}),
            "uploads_without_dp": [{"round": r.round, "what": r.get("what")} for r in a.releases if r.kind == NO_DP],
            "rounds": round_summary(a), "releases": releases}


def report_json(report: AuditReport) -> dict[str, Any]:
    """The report as a JSON-able document (``audit.json``)."""
    return {"state_dir": report.state_dir, "generated": report.generated, "ca_checked": report.ca_checked,
            "ok": report.ok, "sites": [_site_json(a) for a in report.sites],
            "exclusions": list(report.exclusions)}


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]


def report_markdown(report: AuditReport) -> str:
    """The report as Markdown (``audit.md``): a summary, then per site its rounds, releases and DP coverage."""
    doc = report_json(report)
    failed = [s["site"] for s in doc["sites"] if s["status"] != "verified"]
    out = ["# Privacy-budget audit", "", f"Generated {doc['generated']} from `{doc['state_dir']}`.",
           "Certificates checked against the federation CA: " + ("yes." if doc["ca_checked"] else
           "**no** (pass `--ca`; a stored certificate was trusted as is)."),
           f"Result: **{'all' if not failed else len(doc['sites']) - len(failed)} of {len(doc['sites'])} "
           f"sites verified**" + (f"; FAILED: {', '.join(failed)}." if failed else "."), "", "## Summary", ""]
    out += _table(["site", "status", "entries", "epsilon spent", "epsilon max", "budget left", "delta",
                   "accountant", "uploads without DP"],
                  [[s["site"], s["status"], s["entries"], s["epsilon_spent"], s["epsilon_max"], s["budget_left"],
                    s["delta"], s["accountant"], len(s["uploads_without_dp"])] for s in doc["sites"]])
    if doc["exclusions"]:
        out += ["", "## Sites excluded for misbehaving", ""]
        out += _table(["round", "site", "excluded up to round", "reason"],
                      [[e["round"], e["site"], e["until_round"], e["reason"]] for e in doc["exclusions"]])
    for s in doc["sites"]:
        out += ["", f"## Site {s['site']}", ""]
        if s["error"]:
            out += [f"**FAILED** ({s['error']['reason']}): {s['error']['message']}", ""]
            continue
        out += ["### Per round", ""]
        out += _table(["round", "releases", "epsilon after", "budget left", "DP"],
                      [[r["round"], ", ".join(r["mechanisms"]) or "-", r["epsilon"], r["budget_left"],
                        "yes" if r["all_dp"] else "**NO**"] for r in s["rounds"]])
        out += ["", "### Releases", ""]
        out += _table(["seq", "round", "mechanism", "mode", "sigma", "sensitivity", "q", "steps", "epsilon",
                       "recomputed", "delta", "budget left"],
                      [[r["seq"], r["round"], r.get("mechanism", "**no DP**"), r.get("mode"),
                        r.get("noise_multiplier"), r.get("sensitivity"), r.get("sample_rate"), r.get("steps"),
                        r.get("epsilon"), r["epsilon_recomputed"], r.get("delta"), r["budget_left"]]
                       for r in s["releases"]])
        out += ["", "### What DP covers", ""] + [f"- {t}" for t in s["covered"] or ["nothing (no DP release)"]]
        out += ["", "### What DP does not cover", ""] + [f"- {t}" for t in s["not_covered"]]
        out += [f"- round {u['round']}: uploaded **without DP**: {u['what']}" for u in s["uploads_without_dp"]]
    return "\n".join(out) + "\n"


def plot_epsilon(report: AuditReport, path: Path | str) -> None:
    """PNG of epsilon after each round per verified site, with each site's epsilon_max dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only the report needs it
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for a in report.sites:
            rows = round_summary(a) if a.ok else []
            if not rows:
                continue
            xs, ys = [r["round"] for r in rows], [r["epsilon"] for r in rows]
            (line,) = ax.step([min(xs) - 1, *xs], [0.0, *ys], where="post", marker="o", label=a.site)  # from 0
            if (last := a.last_release) is not None:
                ax.axhline(float(last.get("epsilon_max")), color=line.get_color(), linestyle="--", linewidth=0.8)
        failed = [a.site for a in report.sites if not a.ok]
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0.0)
        ax.set(xlabel="round", ylabel="epsilon spent (dashed: epsilon_max)",
               title="Privacy budget per site" + (f" (FAILED, not shown: {', '.join(failed)})" if failed else ""))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_report(report: AuditReport, out_dir: Path | str) -> list[Path]:
    """Write ``audit.json``, ``audit.md`` and ``epsilon.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "audit.json", out / "audit.md", out / "epsilon.png"]
    paths[0].write_text(json.dumps(report_json(report), indent=1, sort_keys=True) + "\n")
    paths[1].write_text(report_markdown(report))
    plot_epsilon(report, paths[2])
    return paths
