"""Shamir secret sharing: every threshold subset, too few shares, tampering, odd lengths, encoding."""
from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security import shamir
from security.errors import ShareInvalid


@pytest.mark.parametrize(("n", "t"), [(2, 2), (5, 3), (6, 6), (7, 4)])
def test_every_threshold_subset_reconstructs(n: int, t: int) -> None:
    # Prepare
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=t, indices=range(1, n + 1))
    # Execute / Assert: every subset of size t..n gives the secret back
    for size in range(t, n + 1):
        for subset in itertools.combinations(shares, size):
            assert shamir.combine(subset, threshold=t) == secret


@pytest.mark.parametrize("length", [0, 1, 31, 32, 47, 48, 49, 64, 100, 200])
def test_empty_and_unaligned_secrets_round_trip(length: int) -> None:
    # Prepare
    secret = os.urandom(length)
    # Execute
    shares = shamir.split(secret, threshold=3, indices=[9, 4, 200, 17])
    back = shamir.combine([shamir.Share.from_bytes(s.to_bytes()) for s in shares[1:]], threshold=3)
    # Assert
    assert back == secret


def test_fewer_than_threshold_shares_are_refused() -> None:
    # Prepare
    shares = shamir.split(b"k" * 32, threshold=4, indices=[1, 2, 3, 4, 5])
    # Execute / Assert
    with pytest.raises(ShareInvalid, match="3 shares < threshold 4"):
        shamir.combine(shares[:3], threshold=4)


def test_threshold_minus_one_shares_are_consistent_with_any_other_secret() -> None:
    # Prepare: t-1 real shares of secret A, and a polynomial through them with constant term = secret B.
    t, a, b = 4, os.urandom(32), os.urandom(32)
    real = shamir.split(a, threshold=t, indices=[1, 2, 3, 4, 5])[: t - 1]
    fake_b = shamir.split(b, threshold=2, indices=[1, 2])  # only to obtain B's encoded payload at x=0
    lam = shamir.lagrange_at_zero([1, 2])
    payload = [(lam[0] * fake_b[0].values[c] + lam[1] * fake_b[1].values[c]) % shamir.PRIME for c in range(1)]
    # Execute: evaluate at x=7 the unique degree t-1 polynomial through (0, payload_B) and the t-1 real points
    points = [(0, payload[0])] + [(s.index, s.values[0]) for s in real]
    value = 0
    for xi, yi in points:
        num, den = 1, 1
        for xj, _ in points:
            if xj != xi:
                num, den = num * (7 - xj) % shamir.PRIME, den * (xi - xj) % shamir.PRIME
        value = (value + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    forged = shamir.Share(7, 32, (value,))
    # Assert: the t-1 shares of A plus one point reconstruct B with a valid tag, i.e. they fix nothing about A
    assert shamir.combine([*real, forged], threshold=t) == b


@settings(max_examples=25, deadline=None)
@given(victim=st.integers(0, 2), delta=st.integers(1, 2**520), chunk=st.integers(0, 1))
def test_tampered_share_is_detected(victim: int, delta: int, chunk: int) -> None:
    # Prepare: a 80-byte secret has 2 chunks
    secret = os.urandom(80)
    shares = shamir.split(secret, threshold=3, indices=[1, 2, 3])
    values = list(shares[victim].values)
    values[chunk] = (values[chunk] + delta) % shamir.PRIME
    shares[victim] = shamir.Share(shares[victim].index, 80, tuple(values))
    # Execute / Assert: the embedded integrity tag catches it (a wrong value is never returned)
    with pytest.raises(ShareInvalid, match="tampered"):
        shamir.combine(shares, threshold=3)


def test_shares_of_two_secrets_do_not_mix() -> None:
    # Prepare
    one = shamir.split(b"a" * 32, threshold=2, indices=[1, 2, 3])
    two = shamir.split(b"b" * 32, threshold=2, indices=[1, 2, 3])
    # Execute / Assert
    with pytest.raises(ShareInvalid):
        shamir.combine([one[0], two[1]], threshold=2)


def test_invalid_arguments_raise() -> None:
    # Prepare
    shares = shamir.split(b"s", threshold=2, indices=[1, 2])
    # Execute / Assert
    with pytest.raises(ShareInvalid, match="threshold"):
        shamir.split(b"s", threshold=1, indices=[1, 2])
    with pytest.raises(ShareInvalid, match="threshold"):
        shamir.split(b"s", threshold=3, indices=[1, 2])
    with pytest.raises(ShareInvalid, match="distinct"):
        shamir.split(b"s", threshold=2, indices=[1, 1])
    with pytest.raises(ShareInvalid, match="distinct"):
        shamir.split(b"s", threshold=2, indices=[0, 1])
    with pytest.raises(ShareInvalid, match="duplicate"):
        shamir.combine([shares[0], shares[0]], threshold=2)
    with pytest.raises(ShareInvalid, match="coefficients"):
        shamir.combine(shares, threshold=2, coefficients=[1])


def test_malformed_share_bytes_raise() -> None:
    # Prepare
    raw = shamir.split(b"x" * 32, threshold=2, indices=[1, 2])[0].to_bytes()
    # Execute / Assert
    for bad in (raw[:3], raw[:-1], raw + b"\x00", b"\x00\x00" + raw[2:]):
        with pytest.raises(ShareInvalid):
            shamir.Share.from_bytes(bad)


def test_precomputed_coefficients_match_and_repr_hides_values() -> None:
    # Prepare
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, indices=[3, 5, 8, 9])
    # Execute
    back = shamir.combine(shares, threshold=3, coefficients=shamir.lagrange_at_zero([3, 5, 8]))
    # Assert
    assert back == secret
    assert "hidden" in repr(shares[0]) and str(shares[0].values[0]) not in repr(shares[0])
