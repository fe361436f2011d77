"""Invariant checks of one soak run, read from the files the coordinator and the soak sites left behind.

``verify(work_dir, ...)`` returns ``(violations, facts)``. Checked:

- round numbers in the coordinator's history strictly increase (never reused, even across its restart);
  its completed entries match ``checkpoint.npz``; no round completed before the coordinator kill is lost;
- every completed round: the unmasked sum (``aggregates/round-N.npy``, the ``PFMH_TEST_RECORD_AGGREGATES``
  hook) equals the sum of the plain inputs the named survivors recorded (``inputs/round-N.npy``) within
  ``survivors * 2^-f``, and every site that fetched the result got ``unit(sum / count)`` of that exact sum;
- every aborted round: no aggregate was recorded, and no site got prototypes, survivors or a READY result;
- a round missing from the history (cut by the coordinator kill) was never reported READY to any site;
- every round a site saw completed is completed in the history, with the same survivors.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def load_events(state: Path) -> list[dict[str, Any]]:
    """A soak site's ``events.jsonl`` (a torn last line, from a SIGKILL, is skipped)."""
    path = state / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _unit_means(total: np.ndarray, classes: int, bits: int) -> np.ndarray:
    sums, counts = total[:classes * bits].reshape(classes, bits), total[classes * bits:]
    means = sums / counts[:, None]
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def verify(work: Path, sites: list[str], *, classes: int, bits: int, fraction_bits: int,
           completed_before_kill: list[int], interrupted: list[int]) -> tuple[list[str], dict[str, Any]]:
    """Check the invariants above; ``work`` holds ``state/coordinator`` and ``sites/<name>``."""
    bad: list[str] = []
    coord = work / "state" / "coordinator"
    meta = json.loads((coord / "rounds.json").read_text())
    history = meta["history"]
    numbers = [h["round"] for h in history]
    if numbers != sorted(set(numbers)):
        bad.append(f"round numbers not strictly increasing: {numbers}")
    with np.load(coord / "checkpoint.npz") as checkpoint:
        saved = int(checkpoint["completed_rounds"])
    completed = {h["round"]: h for h in history if h["outcome"] == "completed"}
    aborted = {h["round"]: h for h in history if h["outcome"] == "aborted"}
    if saved != len(completed):
        bad.append(f"checkpoint says {saved} completed rounds, history lists {len(completed)}")
    lost = sorted(set(completed_before_kill) - set(completed))
    if lost:
        bad.append(f"completed rounds lost across the coordinator restart: {lost}")

    events = {s: load_events(work / "sites" / s) for s in sites}
    seen: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for site, evs in events.items():
        for e in evs:
            if e["event"] == "outcome":
                seen.setdefault(e["round"], []).append((site, e))
    max_error = 0.0
    for number, h in completed.items():
        agg_path = coord / "aggregates" / f"round-{number}.npy"
        if not agg_path.is_file():
            bad.append(f"round {number}: completed but no recorded aggregate")
            continue
        aggregate = np.load(agg_path)
        inputs = []
        for site in h["survivors"]:
            path = work / "sites" / site / "inputs" / f"round-{number}.npy"
            if path.is_file():
                inputs.append(np.load(path))
            else:
                bad.append(f"round {number}: survivor {site} recorded no input")
        if len(inputs) != len(h["survivors"]):
            continue
        exact = np.sum(inputs, axis=0)
        error = float(np.max(np.abs(exact - aggregate)))
        max_error = max(max_error, error)
        if error > len(inputs) * 2.0 ** -fraction_bits:
            bad.append(f"round {number}: |sum of inputs - unmasked sum| = {error:.3g} > "
                       f"{len(inputs)} * 2^-{fraction_bits}")
        expected = _unit_means(exact, classes, bits).ravel()
        for site in sites:
            path = work / "sites" / site / "results" / f"round-{number}.npy"
            if path.is_file() and not np.allclose(np.load(path), expected, atol=1e-6):
                bad.append(f"round {number}: {site} received prototypes that are not unit(sum/count)")
    for number, h in aborted.items():
        if (coord / "aggregates" / f"round-{number}.npy").is_file():
            bad.append(f"round {number}: aborted ({h['reason']}) but an aggregate was recorded")
        for site, e in seen.get(number, []):
            if e["outcome"] == "completed" or e.get("prototypes") or e.get("survivors"):
                bad.append(f"round {number}: aborted, yet {site} got a result {e}")
    for number, outcomes in seen.items():
        for site, e in outcomes:
            if e["outcome"] != "completed":
                continue
            if number not in completed:
                bad.append(f"round {number}: {site} saw it completed, the coordinator's history does not")
            elif sorted(e["survivors"]) != sorted(completed[number]["survivors"]):
                bad.append(f"round {number}: {site} was told other survivors than the history holds")
    gone = sorted(n for n in set(seen) | set(interrupted) if n not in completed and n not in aborted)
    unexplained = [n for n in gone if n not in interrupted]
    if unexplained:
        bad.append(f"rounds {unexplained} are neither completed nor aborted nor cut by the coordinator kill")
    facts = {
        "completed_rounds": sorted(completed), "aborted_rounds": {n: h["reason"] for n, h in aborted.items()},
        "interrupted_rounds": gone, "max_sum_error": max_error,
        "interrupted_with_aggregate": [n for n in gone if (coord / "aggregates" / f"round-{n}.npy").is_file()],
        "cohort_sizes": [len(h["cohort"]) for h in history],
        "survivor_counts": [len(h["survivors"]) for h in completed.values()],
        "round_seconds": [h["seconds"] for h in completed.values()],
        "site_outcomes": dict(Counter(e["outcome"] for evs in events.values() for e in evs
                                      if e["event"] == "outcome")),
        "faults_fired": dict(Counter(f"{e['action']}@{e['point']}" for evs in events.values() for e in evs
                                     if e["event"] == "fault")),
        "site_round_bytes": [e["bytes_sent"] + e["bytes_received"] for evs in events.values() for e in evs
                             if e["event"] == "outcome" and e["outcome"] == "completed"],
    }
    return bad, facts
