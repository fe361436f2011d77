"""Packing, Hamming distances, ranking, exact top-k search and HammingIndex against a brute-force float reference."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model.errors import ConfigError, DataError
from pfmh_model.hamming_index import HammingIndex
from pfmh_model.packed_codes import pack_codes, unpack_codes
from pfmh_model.retrieval import SearchResult, hamming_distances, hamming_rank, kth_threshold, search

BIT_LENGTHS = (1, 8, 16, 32, 63, 64, 65, 128, 257)


def _pm1(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, bits))


def _ref_distances(query: np.ndarray, archive: np.ndarray) -> np.ndarray:
    """Float reference: for +-1 codes, Hamming distance = (b - q . d) / 2."""
    q = np.where(np.asarray(query, dtype=np.float64) >= 0, 1.0, -1.0)
    a = np.where(np.asarray(archive, dtype=np.float64) >= 0, 1.0, -1.0)
    return (q.shape[1] - q @ a.T) / 2


def _ref_top_k(query: np.ndarray, archive: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = _ref_distances(query, archive)
    idx = np.stack([np.argsort(row, kind="stable")[:k] for row in dist])
    return idx, np.take_along_axis(dist, idx, axis=1)


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_pack_unpack_round_trip_and_pad_bits_zero(bits: int) -> None:
    # Prepare
    codes = _pm1(np.random.default_rng(bits), 37, bits)
    # Execute
    packed = pack_codes(codes)
    # Assert
    assert packed.dtype == np.uint64 and packed.shape == (37, -(-bits // 64))
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)
    if bits % 64:
        assert not np.any(packed[:, -1] >> np.uint64(bits % 64))


def test_bit_order_is_little_endian_within_words() -> None:
    # Prepare: only bit 0 and bit 65 set
    codes = -np.ones((1, 70), dtype=np.int8)
    codes[0, [0, 65]] = 1
    # Execute
    packed = pack_codes(codes)
    # Assert
    assert packed.tolist() == [[1, 2]]


def test_binarisation_rule_by_dtype() -> None:
    # Prepare: the same code as float (with signed zeros), int8 +-1, bool and uint8 {0, 1}
    expected = [[1, -1, 1, 1, -1]]
    inputs = [np.array([[0.3, -0.2, 0.0, -0.0, -1e-9]]), np.array([[1, -1, 1, 1, -1]], np.int8),
              np.array([[True, False, True, True, False]]), np.array([[1, 0, 1, 1, 0]], np.uint8)]
    # Execute
    outputs = [unpack_codes(pack_codes(codes), 5).tolist() for codes in inputs]
    # Assert: sign with sign(0) = +1 for floats; True / nonzero = +1 for bit arrays
    assert outputs == [expected] * 4


def test_signed_integer_zero_is_ambiguous() -> None:
    # Prepare
    zero_one = np.array([[1, 0, 1]], dtype=np.int64)
    # Execute / Assert
    with pytest.raises(DataError, match="zeros"):
        pack_codes(zero_one)


def test_pad_bits_never_count() -> None:
    # Prepare: all +1 against all -1 over 65 bits: 63 pad bits in the second word
    plus, minus = pack_codes(np.ones((1, 65))), pack_codes(-np.ones((2, 65)))
    # Execute
    dist = hamming_distances(plus, minus)
    # Assert
    assert dist.tolist() == [[65, 65]]


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_distances_and_rank_match_float_reference(bits: int) -> None:
    # Prepare: real-valued queries, +-1 archive
    rng = np.random.default_rng(100 + bits)
    queries, archive = rng.standard_normal((23, bits)), _pm1(rng, 301, bits)
    ref = _ref_distances(queries, archive)
    # Execute
    dist = hamming_distances(pack_codes(queries), pack_codes(archive))
    rank = hamming_rank(pack_codes(queries), pack_codes(archive))
    # Assert
    assert dist.dtype == np.int32 and rank.dtype == np.int64
    np.testing.assert_array_equal(dist, ref)
    np.testing.assert_array_equal(rank, np.stack([np.argsort(r, kind="stable") for r in ref]))


@pytest.mark.parametrize("bits", [64, 128, 257])
def test_archive_tiles_give_the_same_distances_and_top_k(monkeypatch, bits: int) -> None:
    # Prepare: blocks of 40 distances, so the 301 archive codes go through in tiles of 40 (one query)
    # or 10 (four queries), the last one ragged; 257 bits take the uint16 path
    import pfmh_model.retrieval as retrieval

    rng = np.random.default_rng(7 + bits)
    queries, archive = _pm1(rng, 9, bits), _pm1(rng, 301, bits)
    ref = _ref_distances(queries, archive)
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 40)
    # Execute
    dist = hamming_distances(pack_codes(queries), pack_codes(archive))
    top = search(pack_codes(queries), pack_codes(archive), k=7, chunk_size=4)
    # Assert
    np.testing.assert_array_equal(dist, ref)
    np.testing.assert_array_equal(top.indices, _ref_top_k(queries, archive, 7)[0])


@pytest.mark.parametrize("bits", BIT_LENGTHS)
@pytest.mark.parametrize("k", [1, 10, 150])
def test_search_matches_reference_with_ties(bits: int, k: int) -> None:
    # Prepare: a small archive with duplicated rows so ties are plentiful at every bit length
    rng = np.random.default_rng(7 * bits + k)
    base = _pm1(rng, 60, bits)
    archive = base[rng.integers(0, 60, size=700)]
    queries = np.concatenate([base[:5], _pm1(rng, 15, bits)])
    ref_idx, ref_dist = _ref_top_k(queries, archive, k)
    # Execute
    result = search(pack_codes(queries), pack_codes(archive), k=k)
    # Assert
    assert isinstance(result, SearchResult)
    assert result.indices.dtype == np.int64 and result.distances.dtype == np.int32
    np.testing.assert_array_equal(result.indices, ref_idx)
    np.testing.assert_array_equal(result.distances, ref_dist)


def test_search_k_larger_than_archive_returns_everything_ranked() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    queries, archive = _pm1(rng, 4, 8), _pm1(rng, 9, 8)
    # Execute
    result = search(pack_codes(queries), pack_codes(archive), k=50)
    # Assert
    assert result.indices.shape == (4, 9)
    np.testing.assert_array_equal(result.indices, hamming_rank(pack_codes(queries), pack_codes(archive)))


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_search_chunked_equals_unchunked(chunk_size: int) -> None:
    # Prepare
    rng = np.random.default_rng(2)
    queries, archive = pack_codes(_pm1(rng, 50, 16)), pack_codes(_pm1(rng, 2000, 16))
    # Execute
    whole = search(queries, archive, k=25)
    chunked = search(queries, archive, k=25, chunk_size=chunk_size)
    # Assert
    np.testing.assert_array_equal(whole.indices, chunked.indices)
    np.testing.assert_array_equal(whole.distances, chunked.distances)


def test_kth_threshold_is_exact_for_any_guess() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    row = rng.binomial(64, 0.5, size=500).astype(np.uint8)
    for k in (1, 2, 17, 250, 500):
        expected = int(np.sort(row)[k - 1])
        for guess in (-5, 0, 10, expected - 1, expected, expected + 1, 40, 64, 99):
            # Execute / Assert
            assert kth_threshold(row, k, guess, 64) == expected


def test_empty_query_and_archive_shapes() -> None:
    # Prepare
    archive = pack_codes(np.ones((0, 8)))
    queries = pack_codes(np.ones((3, 8)))
    # Execute
    none_found = search(queries, archive, k=5)
    no_queries = search(pack_codes(np.ones((0, 8))), pack_codes(np.ones((4, 8))), k=2)
    # Assert
    assert none_found.indices.shape == (3, 0) and no_queries.indices.shape == (0, 2)


def test_bad_inputs_raise_specific_errors() -> None:
    # Prepare
    one_word, two_words = pack_codes(np.ones((2, 8))), pack_codes(np.ones((2, 70)))
    # Execute / Assert
    with pytest.raises(DataError, match="words"):
        search(one_word, two_words, k=1)
    with pytest.raises(ConfigError, match="k must be"):
        search(one_word, one_word, k=0)
    with pytest.raises(ConfigError, match="chunk_size"):
        search(one_word, one_word, k=1, chunk_size=0)
    with pytest.raises(DataError, match="NaN"):
        pack_codes(np.array([[0.1, np.nan]]))
    with pytest.raises(DataError, match="2-D"):
        pack_codes(np.ones(8))
    with pytest.raises(DataError, match="uint64"):
        hamming_distances(np.ones((2, 1)), one_word)
    with pytest.raises(DataError, match="bits"):
        unpack_codes(two_words, 8)


def test_hamming_index_add_search_save_load(tmp_path) -> None:
    # Prepare
    rng = np.random.default_rng(4)
    first, second, queries = rng.standard_normal((40, 65)), _pm1(rng, 30, 65), rng.standard_normal((6, 65))
    index = HammingIndex(65)
    # Execute
    index.add(first)
    before = index.search(queries, 5)
    index.add(second)
    after = index.search(queries, 10)
    index.save(tmp_path / "site.npz")
    loaded = HammingIndex.load(tmp_path / "site.npz")
    # Assert
    assert len(index) == 70 and len(loaded) == 70 and loaded.bits == 65
    ref_idx, _ = _ref_top_k(queries, first, 5)
    np.testing.assert_array_equal(before.indices, ref_idx)
    expected = search(pack_codes(queries), pack_codes(np.concatenate([first, second])), k=10)
    np.testing.assert_array_equal(after.indices, expected.indices)
    np.testing.assert_array_equal(loaded.search(queries, 10).indices, expected.indices)
    np.testing.assert_array_equal(loaded.packed, index.packed)
    assert [p.name for p in tmp_path.iterdir()] == ["site.npz"]    # no temporary file left behind


@pytest.mark.parametrize("k", [1, 100, 5000])
def test_hamming_index_switches_to_multi_index_hashing_with_the_same_answer(monkeypatch, k: int) -> None:
    # Prepare: clustered codes (like learned ones), the MIH threshold lowered to this archive size
    import pfmh_model.hamming_index as hamming_index

    monkeypatch.setattr(hamming_index, "MIH_MIN_ARCHIVE", 2000)
    rng = np.random.default_rng(9)
    centres = _pm1(rng, 20, 64)
    archive = centres[rng.integers(0, 20, 3000)] * np.where(rng.random((3000, 64)) < 0.1, -1, 1)
    queries = centres[rng.integers(0, 20, 50)] * np.where(rng.random((50, 64)) < 0.1, -1, 1)
    index = HammingIndex(64)
    index.add(archive[:1500])
    # Execute: below the threshold (linear scan), then above it (MIH), then after another add
    small = index.search(queries, k)
    index.add(archive[1500:])
    large = index.search(queries, k)
    built = index._fast
    index.add(archive[:10])
    again = index.search(queries, k)
    # Assert: identical to the linear scan, ties included; the MIH tables follow the archive
    assert built is not None and index._fast is not None and index._fast is not built
    for result, codes in ((small, archive[:1500]), (large, archive),
                          (again, np.concatenate([archive, archive[:10]]))):
        expected = search(pack_codes(queries), pack_codes(codes), k=k)
        np.testing.assert_array_equal(result.indices, expected.indices)
        np.testing.assert_array_equal(result.distances, expected.distances)


def test_hamming_index_rejects_wrong_bits_and_bad_files(tmp_path) -> None:
    # Prepare
    index = HammingIndex(16)
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    np.savez(tmp_path / "future.npz", format=np.int64(99), bits=np.int64(16),
             packed=np.zeros((1, 1), np.uint64))
    # Execute / Assert
    with pytest.raises(DataError, match=r"\(n, 16\)"):
        index.add(np.ones((3, 32)))
    with pytest.raises(ConfigError):
        HammingIndex(0)
    with pytest.raises(DataError, match="missing"):
        HammingIndex.load(tmp_path / "other.npz")
    with pytest.raises(DataError, match="format 99"):
        HammingIndex.load(tmp_path / "future.npz")
    np.savez(tmp_path / "pad.npz", format=np.int64(1), bits=np.int64(16),
             packed=np.array([[1 << 20]], np.uint64))
    with pytest.raises(DataError, match="pad bits"):
        HammingIndex.load(tmp_path / "pad.npz")
    assert len(index) == 0 and index.search(np.ones((2, 16)), 3).indices.shape == (2, 0)


def test_index_over_word_major_codes_answers_like_the_plain_index_without_copying() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 2, (300, 128)).astype(bool)
    queries = rng.integers(0, 2, (7, 128)).astype(bool)
    plain = HammingIndex(128)
    plain.add(codes)
    archive_t = np.ascontiguousarray(pack_codes(codes).T)
    # Execute
    index = HammingIndex.from_word_major(archive_t, 128)
    got, want = index.search(queries, 9), plain.search(queries, 9)
    # Assert
    assert np.shares_memory(index.packed, archive_t)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.distances, want.distances)
    np.testing.assert_array_equal(index.search_packed(pack_codes(queries), 9).indices, want.indices)
    with pytest.raises(DataError, match="word-major"):
        HammingIndex.from_word_major(archive_t.T, 128)
