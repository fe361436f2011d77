"""PivotGroups gives exactly the linear scan's answer (ties by row included); worth_pivots tells clusters from noise."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model import hamming_index, pivot_groups
from pfmh_model.errors import ConfigError, DataError
from pfmh_model.hamming_index import HammingIndex
from pfmh_model.packed_codes import pack_codes
from pfmh_model.pivot_groups import PivotGroups, worth_pivots
from pfmh_model.retrieval import search


def _clustered(rng: np.random.Generator, n: int, centres: np.ndarray, flip: float) -> np.ndarray:
    return centres[rng.integers(0, len(centres), size=n)] ^ (rng.random((n, centres.shape[1])) < flip)


def _problem(bits: int, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered archive with exact duplicates (ties); queries: members, cluster draws, random codes."""
    rng = np.random.default_rng(seed + bits)
    centres = rng.integers(0, 2, size=(12, bits)).astype(bool)
    archive = _clustered(rng, n, centres, 0.06)
    archive[n // 2: n // 2 + 200] = archive[:200]
    queries = np.concatenate([archive[:4], _clustered(rng, 12, centres, 0.08),
                              rng.integers(0, 2, size=(4, bits)).astype(bool)])
    return pack_codes(queries), pack_codes(archive)


@pytest.mark.parametrize("bits", (8, 33, 64, 65, 128, 200))
@pytest.mark.parametrize("refine", (0, 1))
def test_matches_linear_scan_exactly(bits: int, refine: int) -> None:
    # Prepare
    queries, archive = _problem(bits)
    index = PivotGroups(archive, bits, pivots=24, refine=refine)
    for k in (1, 10, 150, 4000):
        expected = search(queries, archive, k=k)
        # Execute
        got = index.search(queries, k=k)
        # Assert
        np.testing.assert_array_equal(got.distances, expected.distances)
        np.testing.assert_array_equal(got.indices, expected.indices)


def test_clustered_queries_read_a_fraction_and_the_linear_fallback_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one query per cluster, and count the queries the linear scan answers
    queries, archive = _problem(64, n=6000)
    queries = queries[4:16]
    pruned = PivotGroups(archive, 64, pivots=24)
    linear = PivotGroups(archive, 64, pivots=24, linear_fraction=1e-6)
    fallbacks = []
    original = pivot_groups.search_transposed
    monkeypatch.setattr(pivot_groups, "search_transposed", lambda *a: fallbacks.append(1) or original(*a))
    # Execute
    got = pruned.search(queries, k=20)
    pruned_fallbacks = len(fallbacks)
    via_scan = linear.search(queries, k=20)
    # Assert: pruning reads under a third of the archive per query; both paths give the scan's answer
    expected = search(queries, archive, k=20)
    assert pruned_fallbacks == 0 and len(fallbacks) == len(queries)
    assert pruned.scanned < len(queries) * len(archive) / 3
    for result in (got, via_scan):
        np.testing.assert_array_equal(result.indices, expected.indices)
        np.testing.assert_array_equal(result.distances, expected.distances)


def test_worth_pivots_and_hamming_index_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: clustered codes with many distinct values, and uniform random ones
    monkeypatch.setattr(hamming_index, "MIH_MIN_ARCHIVE", 1000)
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2, (40, 64)).astype(bool)
    clustered = _clustered(rng, 20000, centres, 0.08)
    spread = rng.integers(0, 2, (20000, 64)).astype(bool)
    queries = _clustered(rng, 5, centres, 0.08)
    methods = {}
    for name, codes in (("clustered", clustered), ("spread", spread)):
        index = HammingIndex(64)
        index.add(codes)
        # Execute
        index.prepare()
        methods[name] = index.method
        got, want = index.search(queries, 30), search(pack_codes(queries), pack_codes(codes), k=30)
        # Assert
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.distances, want.distances)
    assert methods == {"clustered": "pivot groups", "spread": "multi-index hashing"}
    assert worth_pivots(pack_codes(clustered), 64) and not worth_pivots(pack_codes(spread), 64)


def test_bad_arguments_raise() -> None:
    archive = pack_codes(np.zeros((10, 16), bool))
    with pytest.raises(ConfigError, match="pivots"):
        PivotGroups(archive, 16, pivots=11)
    with pytest.raises(ConfigError, match="linear_fraction"):
        PivotGroups(archive, 16, linear_fraction=0)
    with pytest.raises(ConfigError, match="bits"):
        PivotGroups(archive, 65)
    index = PivotGroups(archive, 16, pivots=2)
    with pytest.raises(ConfigError, match="k must be"):
        index.search(archive[:1], k=0)
    with pytest.raises(DataError, match="words"):
        index.search(np.zeros((1, 2), np.uint64), k=1)
    assert index.search(archive[:0], k=3).indices.shape == (0, 3)
    assert PivotGroups(archive[:0], 16).search(archive[:2], k=3).indices.shape == (2, 0)
