"""The privacy-budget audit as documents: JSON (``audit.json``), Markdown (``audit.md``) and a PNG of epsilon.

Input is a ``coordinator.audit.AuditReport``; every release is read through its typed ledger record
(``security.ledger_records``). No checks happen here: they are ``coordinator.audit``'s.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.audit import AuditReport, SiteAudit
from security.ledger_audit import round_summary
from security.ledger_records import DpRelease, UploadWithoutDp


def _site_json(a: SiteAudit) -> dict[str, Any]:
    last = next((r.entry for r in reversed(a.releases) if isinstance(r.entry, DpRelease)), None)
    releases = [{"seq": r.seq, "round": r.round, "time": r.time, **r.record,
                 "epsilon_recomputed": r.epsilon_recomputed, "budget_left": r.budget_left} for r in a.releases]
    dp = [r.entry for r in a.releases if isinstance(r.entry, DpRelease)]
    no_dp = [r.entry for r in a.releases if isinstance(r.entry, UploadWithoutDp)]
    err = a.error
    return {"site": a.site, "status": "verified" if a.ok else "FAILED", "entries": a.entries,
            "error": None if err is None else {"reason": err.reason, "seq": err.seq, "round": err.round_number,
                                               "message": str(err)},
            "certificate_serial": a.certificate_serial, "certificate_verified_against_ca": a.ca_verified,
            "epsilon_spent": last.epsilon if last else 0.0,
            "epsilon_max": last.epsilon_max if last else None,
            "budget_left": last.budget_left if last else None,
            "delta": last.delta if last else None, "accountant": last.accountant if last else None,
            "covered": sorted({r.covered for r in dp}),
            "not_covered": sorted({r.not_covered for r in dp}),
            "uploads_without_dp": [{"round": r.round, "what": r.what} for r in no_dp],
            "rounds": round_summary(a.releases), "releases": releases,
            "coordinator_head": None if a.head is None else {"entries": a.head[0], "hash": a.head[1]},
            "cross_checked": a.cross_checked, "charged_not_released": list(a.charged_not_released),
            "round_log": cross_check_rows(a), "rejected_reports": [
                {k: r.get(k) for k in ("received", "reason", "seq", "message", "first_seq", "line_count", "file")}
                for r in a.rejected]}


def cross_check_rows(a: SiteAudit) -> list[dict[str, Any]]:
    """Per round of the round log that involved the site: what the coordinator saw beside what the ledger says."""
    dp_rounds = {r.round for r in a.releases if isinstance(r.entry, DpRelease)}
    rows = []
    for w in a.rounds:
        in_sum, released = a.site in w.inputs, w.round in dp_rounds
        verdict = ("released" if in_sum and released else "charged, not released" if released
                   else "no DP release (DP off)" if in_sum and not w.dp
                   else "MISSING release" if in_sum else "not charged (no upload)")
        rows.append({"round": w.round, "outcome": w.outcome, "input_in_sum": in_sum,
                     "masked_input_received": None if w.received is None else a.site in w.received,
                     "dp": w.dp, "dp_release_in_ledger": released, "verdict": verdict})
    return rows


def report_json(report: AuditReport) -> dict[str, Any]:
    """The report as a JSON-able document (``audit.json``)."""
    return {"state_dir": report.state_dir, "generated": report.generated, "ca_checked": report.ca_checked,
            "round_log_checked": report.round_log, "ok": report.ok, "sites": [_site_json(a) for a in report.sites],
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
           "Ledgers cross-checked with the coordinator's round log (`rounds.json`): " + ("yes." if
           doc["round_log_checked"] else "**no** (no round log found; a ledger cut at its tail would pass)."),
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
        if s["coordinator_head"]:
            head = s["coordinator_head"]
            out += [f"Coordinator's verified head: `{head['entries']}:{head['hash']}` (for `pfmh-participant "
                    "budget --coordinator-head`).", ""]
        for r in s["rejected_reports"]:
            out += [f"- **rejected ledger report** at {r['received']} ({r['reason']}): {r['message']} "
                    f"(`{r['file']}`)"]
        if s["rejected_reports"]:
            out += [""]
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
        if s["cross_checked"]:
            out += ["", "### Cross-check with the round log", ""]
            out += _table(["round", "outcome", "input in revealed sum", "DP", "dp_release in ledger", "verdict"],
                          [[r["round"], r["outcome"], "yes" if r["input_in_sum"] else "no",
                            "-" if r["dp"] is None else "on" if r["dp"] else "off",
                            "yes" if r["dp_release_in_ledger"] else "no", r["verdict"]] for r in s["round_log"]])
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
            rows = round_summary(a.releases) if a.ok else []
            if not rows:
                continue
            xs, ys = [r["round"] for r in rows], [r["epsilon"] for r in rows]
            (line,) = ax.step([min(xs) - 1, *xs], [0.0, *ys], where="post", marker="o", label=a.site)  # from 0
            if (last := a.last_release) is not None and isinstance(last.entry, DpRelease):
                ax.axhline(last.entry.epsilon_max, color=line.get_color(), linestyle="--", linewidth=0.8)
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
