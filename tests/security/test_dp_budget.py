"""Budget guard: refuses a release that would exceed epsilon_max, exactly at the boundary, before spending."""
from __future__ import annotations

import math

import pytest

from security.accountant import OpacusAccountant, epsilon_for
from security.dp_budget import BudgetGuard, PrivacyBudget
from security.errors import BudgetExceeded, UnsafeConfiguration

DELTA = 1e-5


def test_release_exactly_at_the_limit_is_allowed_and_one_ulp_less_refuses() -> None:
    # Prepare: the epsilon after 10 releases, as the limit itself and one ulp below it.
    limit = epsilon_for([(1.0, 1.0, 10)], DELTA)
    at_limit = BudgetGuard(OpacusAccountant(), epsilon_max=limit, delta=DELTA)
    below = BudgetGuard(OpacusAccountant(), epsilon_max=math.nextafter(limit, 0.0), delta=DELTA)
    # Execute
    last = [at_limit.spend(noise_multiplier=1.0, sample_rate=1.0) for _ in range(10)][-1]
    for _ in range(9):
        below.spend(noise_multiplier=1.0, sample_rate=1.0)
    with pytest.raises(BudgetExceeded) as refused:
        below.spend(noise_multiplier=1.0, sample_rate=1.0, round_number=10)
    # Assert: the refused release left no trace.
    assert last == limit and at_limit.spent == limit and at_limit.remaining == 0.0
    assert below.accountant.num_steps == 9
    assert "at round 10" in str(refused.value)


def test_check_does_not_spend_and_matches_spend() -> None:
    # Prepare
    guard = BudgetGuard(OpacusAccountant(), epsilon_max=8.0, delta=DELTA)
    # Execute
    projected = guard.check(noise_multiplier=2.0, sample_rate=1.0, steps=5)
    before = guard.accountant.num_steps
    spent = guard.spend(noise_multiplier=2.0, sample_rate=1.0, steps=5)
    # Assert
    assert before == 0
    assert projected == spent == guard.spent == guard.accountant.epsilon(DELTA)
    assert guard.remaining == pytest.approx(8.0 - spent)


def test_refusal_message_names_value_limit_round_and_fix() -> None:
    # Prepare: sigma 1 costs ~19 epsilon over 10 releases.
    guard = BudgetGuard(OpacusAccountant(), epsilon_max=8.0, delta=DELTA)
    for _ in range(2):
        guard.spend(noise_multiplier=1.0, sample_rate=1.0)
    # Execute
    with pytest.raises(BudgetExceeded) as refused:
        guard.check(noise_multiplier=1.0, sample_rate=1.0, round_number=12)
    # Assert
    projected = epsilon_for([(1.0, 1.0, 3)], DELTA)
    message = str(refused.value)
    assert message.startswith(f"epsilon would reach {projected:.6g} > epsilon_max 8 at round 12")
    assert message.endswith("raise epsilon_max or noise_multiplier")


def test_budget_survives_a_restart_through_state_dict() -> None:
    # Prepare
    first = BudgetGuard(OpacusAccountant(), epsilon_max=5.0, delta=DELTA)
    while True:
        try:
            first.spend(noise_multiplier=4.0, sample_rate=1.0)
        except BudgetExceeded:
            break
    state = first.accountant.state_dict()
    # Execute
    restored = OpacusAccountant()
    restored.load_state_dict(state)
    second = BudgetGuard(restored, epsilon_max=5.0, delta=DELTA)
    # Assert
    with pytest.raises(BudgetExceeded, match="after"):
        second.spend(noise_multiplier=4.0, sample_rate=1.0)
    assert second.spent == first.spent <= 5.0


@pytest.mark.parametrize(("epsilon_max", "delta"), [(0.0, 1e-5), (math.inf, 1e-5), (1.0, 0.0), (1.0, 1.0)])
def test_invalid_budget_raises(epsilon_max: float, delta: float) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        PrivacyBudget(epsilon_max=epsilon_max, delta=delta)
