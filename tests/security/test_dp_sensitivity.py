"""Sensitivity of [sums, counts]: removing any one record moves the vector by at most the stated L2 bound."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.dp_sensitivity import L2_SENSITIVITY, clipped_class_statistics, l2_sensitivity, record_weights
from security.errors import UnsafeConfiguration


def _upload(embeddings: np.ndarray, labels: np.ndarray, label_cap: int | None) -> tuple[np.ndarray, float]:
    sums, counts, sens = clipped_class_statistics(embeddings, labels, label_cap=label_cap)
    return np.concatenate([sums.ravel(), counts]), sens


def _max_leave_one_out(embeddings: np.ndarray, labels: np.ndarray,
                       label_cap: int | None) -> tuple[float, float]:
    full, sens = _upload(embeddings, labels, label_cap)
    worst = 0.0
    for i in range(labels.shape[0]):
        keep = np.arange(labels.shape[0]) != i
        reduced, _ = _upload(embeddings[keep], labels[keep], label_cap)
        worst = max(worst, float(np.linalg.norm(full - reduced)))
    return worst, sens


def _random_site(rng: np.random.Generator, n: int, c: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random((n, c)) < 0.35).astype(np.int64)
    labels[0] = 1  # one record with every label
    labels[1] = 0  # one record without labels
    embeddings = rng.normal(size=(n, b)) * rng.uniform(0.01, 100.0, size=(n, 1))  # not normalised
    embeddings[2] = 0.0  # a zero code
    return embeddings, labels


@pytest.mark.parametrize("label_cap", [None, 1, 2, 4])
def test_leave_one_out_change_is_bounded_and_attained(label_cap: int | None) -> None:
    # Prepare
    rng = np.random.default_rng(7)
    embeddings, labels = _random_site(rng, n=40, c=6, b=16)
    # Execute
    worst, sens = _max_leave_one_out(embeddings, labels, label_cap)
    # Assert: never above the bound, and the record with every label attains it.
    assert sens == pytest.approx(math.sqrt(2.0 * (label_cap or 1)), abs=0.0)
    assert worst <= sens * (1.0 + 1e-12)
    assert worst == pytest.approx(sens, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), c=st.integers(1, 5), b=st.integers(1, 6),
       label_cap=st.sampled_from([None, 1, 2, 3]))
def test_leave_one_out_bound_holds_for_random_sites(seed: int, n: int, c: int, b: int,
                                                    label_cap: int | None) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.5).astype(np.int64)
    embeddings = rng.normal(size=(n, b)) * 10.0 ** rng.uniform(-6, 6, size=(n, 1))
    # Execute
    worst, sens = _max_leave_one_out(embeddings, labels, label_cap)
    # Assert
    assert worst <= sens * (1.0 + 1e-12)


def test_record_weights_values() -> None:
    # Prepare: 0, 1, 2, 4 labels
    labels = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    # Execute
    default = record_weights(labels, label_cap=None)
    capped = record_weights(labels, label_cap=2)
    # Assert
    np.testing.assert_allclose(default, [0.0, 1.0, 1 / math.sqrt(2), 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(capped, [0.0, 1.0, 1.0, 1 / math.sqrt(2)], rtol=0, atol=1e-15)
    assert default.dtype == np.float64


def test_statistics_normalise_rows_and_are_weighted_means() -> None:
    # Prepare: three single-label records of class 0 with arbitrary scales, one two-label record.
    emb = np.array([[3.0, 4.0], [0.0, -2.0], [10.0, 0.0], [1.0, 1.0]])
    labels = np.array([[1, 0], [1, 0], [1, 0], [1, 1]])
    # Execute
    sums, counts, sens = clipped_class_statistics(emb, labels)
    sums_scaled, counts_scaled, _ = clipped_class_statistics(emb * 1e6, labels)
    # Assert: unit rows, the two-label record weighs 1/sqrt(2) in both classes.
    w = 1 / math.sqrt(2)
    unit = np.array([[0.6, 0.8], [0.0, -1.0], [1.0, 0.0], [w, w]])
    np.testing.assert_allclose(sums[0], unit[0] + unit[1] + unit[2] + w * unit[3], atol=1e-12)
    np.testing.assert_allclose(sums[1], w * unit[3], atol=1e-12)
    np.testing.assert_allclose(counts, [3 + w, w], atol=1e-12)
    np.testing.assert_allclose(sums_scaled, sums, atol=1e-12)
    np.testing.assert_allclose(counts_scaled, counts, atol=0)
    assert sens == L2_SENSITIVITY == l2_sensitivity()
    assert sums.shape == (2, 2) and counts.shape == (2,)


@pytest.mark.parametrize(("emb", "labels"), [
    (np.ones((3, 2)), np.array([[1, 0], [0, 2], [1, 1]])),          # non-binary label
    (np.ones((3, 2)), np.array([[1.0, 0.5], [0, 1], [1, 1]])),      # fractional label
    (np.array([[1.0, np.nan], [1, 1], [1, 1]]), np.eye(3, 2)),       # NaN embedding
    (np.ones((3, 2)), np.ones((4, 2))),                              # n mismatch
    (np.ones(3), np.ones((3, 2))),                                   # 1-D embeddings
])
def test_inputs_that_void_the_bound_raise(emb: np.ndarray, labels: np.ndarray) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        clipped_class_statistics(emb, labels)


@pytest.mark.parametrize("cap", [0, -1, 1.5, True])
def test_bad_label_cap_raises(cap: object) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration, match="label_cap"):
        l2_sensitivity(label_cap=cap)  # type: ignore[arg-type]
