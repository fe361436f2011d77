"""Calibration: same sigma as Opacus' get_noise_multiplier, never overshoots the target; affordable rounds."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.accountant import epsilon_for
from security.dp_calibration import calibrate_sigma, max_rounds
from security.errors import UnsafeConfiguration

# Opacus 1.6.0 get_noise_multiplier(target_epsilon=8, target_delta=1e-5, sample_rate=1, steps=50).
SIGMA_EPS8_DELTA1E5_50ROUNDS = 4.51171875


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus' own probes
def test_pinned_sigma_matches_opacus() -> None:
    # Prepare
    from opacus.accountants.utils import get_noise_multiplier
    # Execute
    ours = calibrate_sigma(target_epsilon=8.0, delta=1e-5, rounds=50)
    theirs = get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=1.0, steps=50)
    # Assert
    assert ours == theirs == SIGMA_EPS8_DELTA1E5_50ROUNDS
    assert epsilon_for([(ours, 1.0, 50)], 1e-5) <= 8.0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus' own probes
def test_subsampled_calibration_matches_opacus() -> None:
    # Prepare
    from opacus.accountants.utils import get_noise_multiplier
    # Execute
    ours = calibrate_sigma(target_epsilon=3.0, delta=1e-5, rounds=1000, sample_rate=0.01)
    theirs = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.01, steps=1000)
    # Assert
    assert ours == theirs


@settings(max_examples=30, deadline=None)
@given(target=st.floats(0.2, 30.0), rounds=st.integers(1, 500),
       delta=st.sampled_from([1e-4, 1e-5, 1e-7]))
def test_calibrated_sigma_never_overshoots(target: float, rounds: int, delta: float) -> None:
    # Execute
    sigma = calibrate_sigma(target_epsilon=target, delta=delta, rounds=rounds)
    eps = epsilon_for([(sigma, 1.0, rounds)], delta)
    # Assert: at most the target, and within the tolerance below it.
    assert eps <= target
    assert target - eps <= 0.01 + 1e-9


def test_prv_calibration_never_overshoots() -> None:
    # Execute
    sigma = calibrate_sigma(target_epsilon=8.0, delta=1e-5, rounds=50, accountant="prv")
    # Assert: PRV is tighter, so less noise is needed than under RDP.
    assert epsilon_for([(sigma, 1.0, 50)], 1e-5, "prv") <= 8.0
    assert sigma < SIGMA_EPS8_DELTA1E5_50ROUNDS


def test_max_rounds_is_the_last_round_within_budget() -> None:
    # Execute
    rounds = max_rounds(noise_multiplier=3.0, delta=1e-5, epsilon_max=8.0)
    # Assert
    assert epsilon_for([(3.0, 1.0, rounds)], 1e-5) <= 8.0 < epsilon_for([(3.0, 1.0, rounds + 1)], 1e-5)
    assert max_rounds(noise_multiplier=0.5, delta=1e-5, epsilon_max=1.0) == 0


@pytest.mark.parametrize("kwargs", [
    {"target_epsilon": 0.0, "delta": 1e-5, "rounds": 1},
    {"target_epsilon": 1.0, "delta": 1e-5, "rounds": 0},
    {"target_epsilon": 1.0, "delta": 0.0, "rounds": 1},
    {"target_epsilon": 1e-9, "delta": 1e-5, "rounds": 10},  # needs sigma beyond MAX_SIGMA
])
def test_impossible_or_invalid_targets_raise(kwargs: dict[str, float]) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        calibrate_sigma(**kwargs)  # type: ignore[arg-type]
