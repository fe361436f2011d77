"""Fixed point: round trip, two's complement, sums mod 2^64, overflow proof, refusals."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.errors import OverflowRisk
from security.fixed_point import check_overflow, decode, encode

F, MAX = 24, 1000.0
floats = st.floats(-MAX, MAX, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(floats, min_size=1, max_size=50))
def test_round_trip_within_half_resolution(values: list[float]) -> None:
    # Prepare
    x = np.array(values)
    # Execute
    back = decode(encode(x, fraction_bits=F, max_abs=MAX), fraction_bits=F)
    # Assert
    assert np.max(np.abs(back - x)) <= 2.0 ** -(F + 1)


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.lists(floats, min_size=3, max_size=3), min_size=1, max_size=30))
def test_sum_mod_2_64_decodes_to_the_sum(rows: list[list[float]]) -> None:
    # Prepare
    x = np.array(rows)
    total = np.zeros(3, dtype=np.uint64)
    # Execute
    for row in x:
        total += encode(row, fraction_bits=F, max_abs=MAX)
    # Assert
    assert np.max(np.abs(decode(total, fraction_bits=F) - x.sum(axis=0))) <= len(rows) * 2.0 ** -(F + 1) + 1e-9


def test_negative_values_are_twos_complement() -> None:
    # Prepare / Execute
    enc = encode(np.array([-1.0, 1.0, 0.0]), fraction_bits=0, max_abs=2.0)
    # Assert
    assert enc.dtype == np.uint64
    assert enc.tolist() == [2**64 - 1, 1, 0]


def test_overflow_bound_is_exact_at_the_limit() -> None:
    # Prepare: 2 sites * ceil(2^61 * 2^0)... use f=1, max 2^60: per site 2^61, two sites = 2^62 ok, four = 2^63 not
    # Execute / Assert
    check_overflow(3, 2.0**60, 1)
    with pytest.raises(OverflowRisk, match=r"4 sites .* >= 2\^63 limit; lower fraction_bits"):
        check_overflow(4, 2.0**60, 1)
    with pytest.raises(OverflowRisk):
        check_overflow(1, 2.0**63, 0)


def test_encode_refuses_out_of_range_and_non_finite() -> None:
    # Prepare
    bad = [np.array([1.0, 1000.5]), np.array([np.nan]), np.array([np.inf]), np.zeros((2, 2))]
    # Execute / Assert
    for x in bad:
        with pytest.raises(OverflowRisk):
            encode(x, fraction_bits=F, max_abs=MAX)
    with pytest.raises(OverflowRisk, match="clip upstream"):
        encode(np.array([-2000.0]), fraction_bits=F, max_abs=MAX)


def test_invalid_parameters_raise() -> None:
    # Execute / Assert
    for args in [(0, 1.0, 8), (2, 0.0, 8), (2, float("inf"), 8), (2, 1.0, 53), (2, 1.0, -1)]:
        with pytest.raises(OverflowRisk):
            check_overflow(*args)
    with pytest.raises(OverflowRisk, match="uint64"):
        decode(np.zeros(3, dtype=np.int64), fraction_bits=8)  # type: ignore[arg-type]
