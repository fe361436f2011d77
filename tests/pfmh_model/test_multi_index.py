"""Multi-index hashing returns exactly the linear scan's top-k, on every path (MIH, early and late fallback)."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model.errors import ConfigError, DataError
from pfmh_model.multi_index import MultiIndexHashing, substring_keys
from pfmh_model.packed_codes import pack_codes
from pfmh_model.retrieval import search


def _clustered(rng: np.random.Generator, n: int, centres: np.ndarray, flip: float) -> np.ndarray:
    return centres[rng.integers(0, len(centres), size=n)] ^ (rng.random((n, centres.shape[1])) < flip)


def _problem(seed: int, bits: int, n: int = 3000, q: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Clustered archive (ties and heavy buckets), queries: archive members, cluster draws, random codes."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, size=(15, bits)).astype(bool)
    archive = _clustered(rng, n, centres, 0.05)
    queries = np.concatenate([archive[:5], _clustered(rng, q - 10, centres, 0.08),
                              rng.integers(0, 2, size=(5, bits)).astype(bool)])
    return pack_codes(queries), pack_codes(archive)


@pytest.mark.parametrize("bits", (8, 16, 32, 63, 64, 65, 128))
@pytest.mark.parametrize("probe_fraction", (0.003, 0.05, 1.0))
def test_matches_linear_scan_exactly(bits: int, probe_fraction: float) -> None:
    # Prepare
    queries, archive = _problem(bits, bits)
    index = MultiIndexHashing(archive, bits, probe_fraction=probe_fraction)
    for k in (1, 10, 100):
        expected = search(queries, archive, k=k)
        # Execute
        got = index.search(queries, k=k, chunk_size=16)
        # Assert
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_array_equal(got.distances, expected.distances)


@pytest.mark.parametrize("substrings", (2, 3, 5, 40))
def test_any_substring_count_is_exact(substrings: int) -> None:
    # Prepare
    queries, archive = _problem(substrings, 40, n=1500)
    index = MultiIndexHashing(archive, 40, substrings=substrings, probe_fraction=1.0)
    # Execute
    got = index.search(queries, k=25)
    # Assert
    np.testing.assert_array_equal(got.indices, search(queries, archive, k=25).indices)
    assert sum(index.lengths) == 40 and len(index.lengths) == substrings


def test_paths_taken_pure_mih_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count queries answered by the linear fallback; clustered queries only (no random ones)
    queries, archive = _problem(1, 64, n=4000)
    queries = queries[:35]
    linear_rows: list[int] = []
    original = MultiIndexHashing._linear

    def counting(self, qp, rows, k, out_idx, out_dist):  # type: ignore[no-untyped-def]
        linear_rows.append(len(rows))
        original(self, qp, rows, k, out_idx, out_dist)

    monkeypatch.setattr(MultiIndexHashing, "_linear", counting)
    # Execute
    MultiIndexHashing(archive, 64, probe_fraction=1.0).search(queries, k=10)
    pure = sum(linear_rows)
    linear_rows.clear()
    MultiIndexHashing(archive, 64, probe_fraction=0.01).search(queries, k=10)
    # Assert: with a generous budget nothing falls back; a tight budget sends some queries, not all
    assert pure == 0
    assert 0 < sum(linear_rows) < len(queries)


def test_k_larger_than_archive_and_duplicates() -> None:
    # Prepare: 30 codes, every one present three times
    rng = np.random.default_rng(5)
    archive = pack_codes(np.repeat(rng.integers(0, 2, size=(10, 16)).astype(bool), 3, axis=0))
    queries = pack_codes(rng.integers(0, 2, size=(4, 16)).astype(bool))
    index = MultiIndexHashing(archive, 16, probe_fraction=1.0)
    # Execute
    got = index.search(queries, k=100)
    # Assert
    assert got.indices.shape == (4, 30) and len(index) == 30
    np.testing.assert_array_equal(got.indices, search(queries, archive, k=100).indices)


def test_substring_keys_cross_word_boundary() -> None:
    # Prepare: bits 60..67 set to 1,0,1,0,1,0,1,0 straddle words 0 and 1
    codes = -np.ones((1, 70))
    codes[0, [60, 62, 64, 66]] = 1
    # Execute
    key = substring_keys(pack_codes(codes), 60, 8)
    # Assert
    assert key.tolist() == [0b01010101]


def test_bad_arguments_raise() -> None:
    # Prepare
    archive = pack_codes(np.ones((10, 64)))
    index = MultiIndexHashing(archive, 64)
    # Execute / Assert
    with pytest.raises(ConfigError, match="substrings"):
        MultiIndexHashing(archive, 64, substrings=2)           # 32-bit tables are refused
    with pytest.raises(ConfigError, match="bits"):
        MultiIndexHashing(archive, 65)
    with pytest.raises(ConfigError, match="probe_fraction"):
        MultiIndexHashing(archive, 64, probe_fraction=0)
    with pytest.raises(ConfigError, match="k must be"):
        index.search(archive, k=0)
    with pytest.raises(DataError, match="words"):
        index.search(pack_codes(np.ones((2, 70))), k=1)
