"""DistinctCodes gives exactly the linear scan's answer (ties by row included) on archives whose codes repeat."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model import hamming_index
from pfmh_model.distinct_codes import DistinctCodes, worth_grouping
from pfmh_model.hamming_index import HammingIndex
from pfmh_model.packed_codes import pack_codes
from pfmh_model.retrieval import search


@pytest.mark.parametrize(("bits", "distinct", "k"), [(16, 5, 7), (64, 40, 100), (70, 300, 33), (128, 3, 500)])
def test_equals_the_linear_scan_with_repeated_codes(bits: int, distinct: int, k: int) -> None:
    # Prepare: few distinct codes spread over many rows in random order, queries near and far
    rng = np.random.default_rng(bits + distinct)
    codes = rng.integers(0, 2, (distinct, bits)).astype(bool)
    archive = pack_codes(codes[rng.integers(0, distinct, 4000)])
    near = codes[rng.integers(0, distinct, 5)]
    queries = pack_codes(np.concatenate([near ^ (rng.random((5, bits)) < 0.05),
                                         rng.integers(0, 2, (5, bits)).astype(bool)]))
    # Execute
    got = DistinctCodes(archive, bits).search(queries, k=k)
    want = search(queries, archive, k=k)
    # Assert
    np.testing.assert_array_equal(got.distances, want.distances)
    np.testing.assert_array_equal(got.indices, want.indices)


def test_hamming_index_groups_only_archives_that_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a small threshold so the test archive counts as large
    monkeypatch.setattr(hamming_index, "MIH_MIN_ARCHIVE", 1000)
    rng = np.random.default_rng(0)
    repeated = rng.integers(0, 2, (20, 64)).astype(bool)[rng.integers(0, 20, 3000)]
    spread = rng.integers(0, 2, (3000, 64)).astype(bool)
    queries = rng.integers(0, 2, (6, 64)).astype(bool)
    results = {}
    for name, codes in (("repeated", repeated), ("spread", spread)):
        index = HammingIndex(64)
        index.add(codes)
        # Execute
        index.prepare()
        results[name] = (index.method, index.search(queries, 50), search(pack_codes(queries), pack_codes(codes), k=50))
    # Assert
    assert results["repeated"][0] == "distinct codes" and results["spread"][0] == "multi-index hashing"
    for _, got, want in results.values():
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.distances, want.distances)
    assert worth_grouping(pack_codes(repeated)) and not worth_grouping(pack_codes(spread))
