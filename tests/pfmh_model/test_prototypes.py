"""Tests of pfmh_model.prototypes: grouping by label, upload vector, centres, global protos, completion."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model.errors import DataError
from pfmh_model.prototypes import (
    PrototypeStats,
    class_statistics,
    complete_prototypes,
    global_prototypes,
    hadamard_centres,
    known_classes,
)


def test_class_statistics_groups_by_label_and_counts_multi_label_records_twice() -> None:
    # Prepare: unit codes (0.6, 0.8), (0, 1), (1, 0); record 1 has both labels.
    codes = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    labels = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.uint8)
    # Execute
    sums, counts = class_statistics(codes, labels)
    # Assert
    np.testing.assert_allclose(sums, [[0.6, 1.8], [1.0, 1.0]])
    np.testing.assert_array_equal(counts, [2.0, 2.0])
    assert sums.dtype == np.float64 and counts.dtype == np.float64


def test_class_statistics_handles_zero_codes_and_rejects_mismatched_rows() -> None:
    # Prepare
    codes = np.zeros((2, 3))
    labels = np.ones((2, 1))
    # Execute
    sums, counts = class_statistics(codes, labels)
    # Assert
    assert np.isfinite(sums).all() and counts.tolist() == [2.0]
    with pytest.raises(DataError, match="equal n"):
        class_statistics(np.zeros((3, 2)), np.zeros((2, 2)))


def test_to_vector_from_vector_round_trip_and_layout() -> None:
    # Prepare
    stats = PrototypeStats(np.arange(6.0).reshape(3, 2), np.array([1.0, 0.0, 5.0]))
    # Execute
    vec = stats.to_vector()
    back = PrototypeStats.from_vector(vec, 3, 2)
    # Assert
    np.testing.assert_array_equal(vec, [0, 1, 2, 3, 4, 5, 1, 0, 5])
    np.testing.assert_array_equal(back.sums, stats.sums)
    np.testing.assert_array_equal(back.counts, stats.counts)
    with pytest.raises(DataError, match="expected"):
        PrototypeStats.from_vector(vec[:-1], 3, 2)


def test_sum_of_site_statistics_equals_statistics_of_pooled_records() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    codes, labels = rng.normal(size=(10, 4)), (rng.random((10, 3)) < 0.5).astype(float)
    # Execute
    total = PrototypeStats(*class_statistics(codes[:4], labels[:4])) + PrototypeStats(
        *class_statistics(codes[4:], labels[4:]))
    pooled = PrototypeStats(*class_statistics(codes, labels))
    # Assert
    np.testing.assert_allclose(total.to_vector(), pooled.to_vector())


def test_hadamard_centres_are_orthogonal_rows_and_their_negations() -> None:
    # Execute
    centres = hadamard_centres(20, 16)
    # Assert
    assert centres.shape == (20, 16) and set(np.unique(centres)) == {-1.0, 1.0}
    np.testing.assert_array_equal(centres[:16] @ centres[:16].T, 16 * np.eye(16))
    np.testing.assert_array_equal(centres[16:], -centres[:4])


def test_hadamard_centres_fall_back_to_seeded_random_signs() -> None:
    # Execute
    a = hadamard_centres(5, 12)
    b = hadamard_centres(5, 12)
    c = hadamard_centres(40, 16, rng=np.random.default_rng(1))
    # Assert
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {-1.0, 1.0} and c.shape == (40, 16)


def test_global_prototypes_average_and_fall_back_for_missing_classes() -> None:
    # Prepare: class 0 seen twice, class 1 and 2 unseen.
    total = PrototypeStats(np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]) * 1.0, np.array([2.0, 0.0, 0.0]))
    previous = np.array([[0.0, 1.0], [0.0, -3.0], [1.0, 1.0]])
    # Execute
    first = global_prototypes(total, None, bits=2)
    later = global_prototypes(total, previous, bits=2)
    # Assert
    centres = hadamard_centres(3, 2) / np.sqrt(2)
    np.testing.assert_allclose(first, [[1.0, 0.0], centres[1], centres[2]])
    np.testing.assert_allclose(later, [[1.0, 0.0], [0.0, -1.0], [2 ** -0.5, 2 ** -0.5]])
    np.testing.assert_array_equal(known_classes(total), [True, False, False])
    with pytest.raises(DataError, match="bits"):
        global_prototypes(total, None, bits=4)


def test_complete_prototypes_uses_local_means_and_global_for_missing_classes() -> None:
    # Prepare
    local = PrototypeStats(np.array([[0.0, 3.0], [0.0, 0.0]]), np.array([3.0, 0.0]))
    glob = np.array([[1.0, 0.0], [0.6, 0.8]])
    # Execute
    completed = complete_prototypes(local, glob)
    # Assert
    np.testing.assert_allclose(completed, [[0.0, 1.0], [0.6, 0.8]])
    with pytest.raises(DataError):
        complete_prototypes(local, glob[:1])
