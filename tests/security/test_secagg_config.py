"""SecAggConfig validation and per-cohort plans (safe thresholds, overflow bound)."""
from __future__ import annotations

import pytest

from security.errors import OverflowRisk, UnsafeConfiguration
from security.prg import PrgAlgorithm
from security.secagg_config import RoundPlan, SecAggConfig, default_threshold


def test_default_plans() -> None:
    # Prepare
    config = SecAggConfig(federation_id="fed", vector_length=10)
    # Execute
    plans = {n: config.plan(n) for n in (2, 3, 10, 100, 500)}
    # Assert
    # colluders tolerated against an active coordinator: 2t - m - 1
    assert plans[2] == RoundPlan(cohort_size=2, neighbours=2, holders=2, threshold=2, colluders=1)
    assert plans[3] == RoundPlan(cohort_size=3, neighbours=4, holders=3, threshold=2, colluders=0)
    assert plans[3].full_graph and not plans[10].full_graph
    assert plans[10] == RoundPlan(cohort_size=10, neighbours=8, holders=9, threshold=6, colluders=2)
    assert plans[100] == RoundPlan(cohort_size=100, neighbours=14, holders=15, threshold=10, colluders=4)
    assert plans[500] == RoundPlan(cohort_size=500, neighbours=18, holders=19, threshold=13, colluders=6)
    assert not plans[500].full_graph
    for plan in plans.values():
        assert 2 <= plan.threshold <= plan.holders and 2 * plan.threshold > plan.holders


def test_default_threshold_is_above_half() -> None:
    # Execute / Assert
    for m in range(2, 200):
        t = default_threshold(m)
        assert 2 * t > m and t <= m and t >= 2


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(threshold=1), "threshold=1 must be an int >= 2"),
    (dict(neighbours=3), "neighbours=3 must be an even int"),
    (dict(neighbours=8, threshold=4), "threshold=4 <= half of the 9 holders"),
    (dict(vector_length=0), "vector_length=0"),
    (dict(fraction_bits=60), "fraction_bits=60"),
    (dict(federation_id=""), "federation_id"),
    (dict(prg="chacha"), "prg="),
])
def test_unsafe_settings_are_refused(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    # Prepare
    base = dict(federation_id="fed", vector_length=4)
    base.update(kwargs)
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration, match=match):
        SecAggConfig(**base)  # type: ignore[arg-type]


def test_plan_refuses_unreachable_or_weak_thresholds() -> None:
    # Prepare
    config = SecAggConfig(federation_id="fed", vector_length=4, threshold=6)
    weak = SecAggConfig(federation_id="fed", vector_length=4, threshold=2)
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration, match="threshold=6 > 5 holders"):
        config.plan(5)
    with pytest.raises(UnsafeConfiguration, match="threshold=2 <= half of the 9 holders"):
        weak.plan(10)
    with pytest.raises(UnsafeConfiguration, match="cohort of 1"):
        config.plan(1)
    assert config.plan(10).threshold == 6


def test_overflow_is_checked_for_the_cohort() -> None:
    # Prepare: 2^40 * 2^20 = 2^60 per site -> 8 sites reach 2^63
    config = SecAggConfig(federation_id="fed", vector_length=4, max_abs_value=2.0**40, fraction_bits=20)
    # Execute / Assert
    config.plan(7)
    with pytest.raises(OverflowRisk, match="8 sites"):
        config.plan(8)
    with pytest.raises(OverflowRisk):
        SecAggConfig(federation_id="fed", vector_length=4, max_abs_value=2.0**40, fraction_bits=23)


def test_prg_choice_is_typed() -> None:
    # Execute / Assert
    assert SecAggConfig(federation_id="f", vector_length=1, prg=PrgAlgorithm.AES256_CTR).prg == "aes256-ctr"


def test_colluder_bound_is_enforced_and_raises_the_default_threshold() -> None:
    # Prepare: n = 10 -> k = 8, m = 9 holders; the consistency check needs 2t > m + c
    stated = SecAggConfig(federation_id="fed", vector_length=4, colluders=3)
    too_many = SecAggConfig(federation_id="fed", vector_length=4, threshold=6, colluders=3)
    semi_honest = SecAggConfig(federation_id="fed", vector_length=4, threshold=6, colluders=3,
                               consistency_check=False)
    # Execute / Assert: the default t = 6 is raised to floor((9 + 3) / 2) + 1 = 7
    assert stated.plan(10).threshold == 7 and stated.plan(10).colluders == 3
    with pytest.raises(UnsafeConfiguration, match=r"colluders=3 breaks 2t > m \+ c, i.e. 2\*6 > 9 \+ 3"):
        too_many.plan(10)
    assert semi_honest.plan(10).colluders == 3  # semi-honest: only c < t (honest-but-curious coordinator)
    with pytest.raises(UnsafeConfiguration, match="at most 0 colluders"):
        SecAggConfig(federation_id="fed", vector_length=4, colluders=1, threshold=2).plan(3)
    with pytest.raises(UnsafeConfiguration, match="colluders=-1"):
        SecAggConfig(federation_id="fed", vector_length=4, colluders=-1)
