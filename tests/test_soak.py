"""Soak (slow, excluded from ``./run test``): a real coordinator process and 10 soak-site processes under faults.

Select with ``python -m pytest -m slow tests/test_soak.py`` (about 1.5 minutes on two cores). The full
N = 10, 50, 100 run is ``python bench/soak.py --sites 10 50 100 --rounds 5`` (docs/SOAK.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import Settings, soak


@pytest.mark.slow
def test_soak_of_ten_sites_keeps_every_invariant_under_faults(tmp_path: Path) -> None:
    # Prepare
    settings = Settings(sites=10, rounds=3, seed=7, timeout_s=420.0)
    # Execute
    result = soak(settings, tmp_path)
    # Assert: every invariant held (exact sums, aborted rounds reveal nothing, nothing lost, no crash)
    assert result["violations"] == []
    assert result["rounds_completed"] == 3
    assert result["rounds_aborted"] >= 1, "round 2 is made to abort (half the cohort slow before unmask)"
    assert result["coordinator_kills"] == 1 and result["rounds_interrupted"] >= 1
    assert result["site_kills_restarts"] >= 2
    fired = result["faults_fired"]
    assert any(k.startswith("kill@") for k in fired) and any(k.startswith("slow@") for k in fired)
    assert result["max_sum_error"] <= 10 * 2.0**-20
    assert result["coordinator_peak_rss_mb"] > 0 and result["site_bytes_per_round"] > 0
