"""Gaussian noise: empirical std matches the calibration; local vs distributed; refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from security.dp_noise import NoiseMode, add_gaussian_noise, noise_std, secure_generator
from security.errors import UnsafeConfiguration

_DRAWS = 200_000


def test_local_noise_std_matches_sigma_times_sensitivity() -> None:
    # Prepare
    vector = np.full(_DRAWS, 3.0)
    # Execute
    noisy = add_gaussian_noise(vector, sigma=1.7, sensitivity=math.sqrt(2), mode=NoiseMode.LOCAL,
                               rng=np.random.default_rng(1))
    # Assert: within 1 % (the std of a 200k-sample std is ~0.16 %); the mean is the input.
    expected = 1.7 * math.sqrt(2)
    assert np.std(noisy - vector) == pytest.approx(expected, rel=0.01)
    assert np.mean(noisy) == pytest.approx(3.0, abs=0.02)
    assert noise_std(sigma=1.7, sensitivity=math.sqrt(2), mode=NoiseMode.LOCAL) == expected


def test_distributed_shares_sum_to_the_local_std() -> None:
    # Prepare: m sites, each adding its distributed share to a zero vector.
    m, sigma, sens = 5, 2.0, math.sqrt(2)
    rng = np.random.default_rng(2)
    zero = np.zeros(_DRAWS)
    # Execute
    shares = [add_gaussian_noise(zero, sigma=sigma, sensitivity=sens, mode=NoiseMode.DISTRIBUTED,
                                 min_cohort=m, secure_aggregation=True, rng=rng) for _ in range(m)]
    # Assert: one share has std sigma*sens/sqrt(m); the sum of m shares has the local std.
    assert np.std(shares[0]) == pytest.approx(sigma * sens / math.sqrt(m), rel=0.01)
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(sigma * sens, rel=0.01)
    assert noise_std(sigma=sigma, sensitivity=sens, mode="distributed", min_cohort=m) == pytest.approx(
        sigma * sens / math.sqrt(m), rel=1e-15)


def test_distributed_without_secure_aggregation_refuses() -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration, match="secure aggregation"):
        add_gaussian_noise(np.zeros(4), sigma=1.0, sensitivity=1.0, mode=NoiseMode.DISTRIBUTED, min_cohort=3)


def test_input_is_not_modified_and_default_rng_is_fresh() -> None:
    # Prepare
    vector = np.arange(8, dtype=np.float64)
    before = vector.copy()
    # Execute
    a = add_gaussian_noise(vector, sigma=1.0, sensitivity=1.0, mode=NoiseMode.LOCAL)
    b = add_gaussian_noise(vector, sigma=1.0, sensitivity=1.0, mode=NoiseMode.LOCAL)
    # Assert
    np.testing.assert_array_equal(vector, before)
    assert not np.array_equal(a, b)
    assert a.dtype == np.float64 and a.shape == (8,)
    assert isinstance(secure_generator(), np.random.Generator)


@pytest.mark.parametrize(("vector", "kwargs"), [
    (np.zeros(3, dtype=np.float32), {}),
    (np.zeros((2, 2)), {}),
    (np.array([0.0, np.inf]), {}),
    (np.zeros(3), {"sigma": 0.0}),
    (np.zeros(3), {"sigma": -1.0}),
    (np.zeros(3), {"sensitivity": 0.0}),
    (np.zeros(3), {"min_cohort": 0}),
])
def test_invalid_arguments_raise(vector: np.ndarray, kwargs: dict[str, float]) -> None:
    # Prepare
    args: dict[str, object] = {"sigma": 1.0, "sensitivity": 1.0, "min_cohort": 1, **kwargs}
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        add_gaussian_noise(vector, mode=NoiseMode.LOCAL, rng=np.random.default_rng(0), **args)  # type: ignore[arg-type]
