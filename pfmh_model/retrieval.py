"""Exact Hamming distances, ranking and top-k search over packed codes (see ``packed_codes``).

Ordering, everywhere: rank by Hamming distance ascending, ties by archive index ascending.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pfmh_model.errors import ConfigError, DataError
from pfmh_model.packed_codes import WORD_BITS, check_packed

_BLOCK_ELEMENTS = 1 << 17   # distances per block (queries x archive): 1 MiB of uint64 scratch stays in cache


def _check_pair(query_packed: np.ndarray, archive_packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query_packed = check_packed(query_packed, "query_packed")
    archive_packed = check_packed(archive_packed, "archive_packed")
    if query_packed.shape[1] != archive_packed.shape[1]:
        raise DataError(f"query codes have {query_packed.shape[1]} words, archive codes "
                        f"{archive_packed.shape[1]}; pack both with the same bit length")
    return query_packed, archive_packed


def check_queries(query_packed: np.ndarray, words: int, k: int) -> np.ndarray:
    """The checks every index's ``search_packed`` makes: well-formed query codes of ``words`` words, k >= 1."""
    query_packed = check_packed(query_packed, "query_packed")
    if query_packed.shape[1] != words:
        raise DataError(f"queries have {query_packed.shape[1]} words, the index {words}; pack both with the same "
                        "bit length")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}; ask for at least one neighbour")
    return query_packed


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] .. starts[i] + lengths[i] - 1``."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(total)


def distance_block(query_packed: np.ndarray, archive_t: np.ndarray,
                   buffer: np.ndarray | None = None) -> np.ndarray:
    """Hamming distances of a few queries to a word-major archive, in the smallest safe unsigned dtype.

    The archive goes through in column tiles of about 131 k distances (queries x tile), so the uint64
    XOR scratch stays in cache even when one query row spans a million codes; without the tiles the
    scratch went to memory and the scan ran about 1.6x slower at 1e6 codes.

    Args:
        query_packed: packed queries.
        archive_t: the archive transposed to word-major order (contiguous rows per word).
        buffer: optional uint64 scratch, reused across calls (used when it holds a whole tile).

    Shape:
        - query_packed: (q, w) uint64
        - archive_t: (w, n) uint64
        - output: (q, n) uint8 when w <= 3 (distances <= 192), else uint16
    """
    q, w = query_packed.shape
    n = archive_t.shape[1]
    out = np.zeros((q, n), np.uint8 if w <= 3 else np.uint16)
    tile = _tile_columns(q)
    need = _scratch_size(q, n)
    scratch_flat = buffer.reshape(-1) if buffer is not None and buffer.size >= need else np.empty(need, np.uint64)
    step_flat = np.empty(need, np.uint8) if w > 1 else None
    for start in range(0, n, tile):
        stop = min(n, start + tile)
        scratch = scratch_flat[: q * (stop - start)].reshape(q, stop - start)
        target = out[:, start:stop]
        step = target if step_flat is None else step_flat[: q * (stop - start)].reshape(q, stop - start)
        for j in range(w):
            np.bitwise_xor(query_packed[:, j, None], archive_t[j, None, start:stop], out=scratch)
            np.bitwise_count(scratch, out=step)
            if step_flat is not None:
                np.add(target, step, out=target, casting="unsafe")
    return out


def _tile_columns(q: int) -> int:
    """Archive codes per tile for ``q`` queries: about 131 k distances per tile."""
    return max(1, _BLOCK_ELEMENTS // max(q, 1))


def _scratch_size(q: int, n: int) -> int:
    """uint64 elements of scratch :func:`distance_block` uses for ``q`` queries over ``n`` codes."""
    return q * min(_tile_columns(q), n)


def chunk_rows(n: int, chunk_size: int | None) -> int:
    """Queries per block: ``chunk_size``, or as many as keep a block under about 131 k distances."""
    if chunk_size is None:
        return max(1, min(256, _BLOCK_ELEMENTS // max(n, 1)))
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}; use None for automatic")
    return int(chunk_size)


def _distance_blocks(query_packed: np.ndarray, archive_packed: np.ndarray
                     ) -> Iterator[tuple[slice, np.ndarray]]:
    """(query rows, their distance block) for all queries, a cache-sized block at a time."""
    query_packed, archive_packed = _check_pair(query_packed, archive_packed)
    archive_t = np.ascontiguousarray(archive_packed.T)
    rows = chunk_rows(archive_packed.shape[0], None)
    for start in range(0, query_packed.shape[0], rows):
        yield slice(start, start + rows), distance_block(query_packed[start:start + rows], archive_t)


def hamming_distances(query_packed: np.ndarray, archive_packed: np.ndarray) -> np.ndarray:
    """All query-to-archive Hamming distances (the full matrix; use :func:`search` for top-k).

    Shape:
        - query_packed: (q, w) uint64; archive_packed: (n, w) uint64
        - output: (q, n) int32
    """
    out = np.empty((len(query_packed), len(archive_packed)), np.int32)
    for rows, block in _distance_blocks(query_packed, archive_packed):
        out[rows] = block
    return out


def hamming_rank(query_packed: np.ndarray, archive_packed: np.ndarray) -> np.ndarray:
    """Full ranking of the archive for each query: distance ascending, ties by archive index ascending.

    Shape:
        - query_packed: (q, w) uint64; archive_packed: (n, w) uint64
        - output: (q, n) int64 archive indices, best first
    """
    out = np.empty((len(query_packed), len(archive_packed)), np.int64)
    for rows, block in _distance_blocks(query_packed, archive_packed):
        out[rows] = np.argsort(block, axis=1, kind="stable")
    return out


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours per query, best first (distance ascending, ties by archive index ascending).

    Shape:
        - indices: (q, k) int64 archive positions
        - distances: (q, k) int32 Hamming distances
    """

    indices: np.ndarray
    distances: np.ndarray


def kth_threshold(row: np.ndarray, k: int, guess: int, max_distance: int) -> int:
    """Smallest radius ``t`` with at least ``k`` entries of ``row`` at distance <= ``t``.

    Gallops from ``guess`` (the previous query's answer is a good one), then bisects, so a good guess
    costs two counts and a bad one O(log max_distance). Requires ``1 <= k <= row.size``.
    """
    lo, hi = -1, max_distance               # invariant: count(<= lo) < k <= count(<= hi)
    g = min(max(guess, 0), max_distance)
    step = 1
    if np.count_nonzero(row <= g) >= k:
        hi = g
        while hi - step > lo:
            if np.count_nonzero(row <= hi - step) >= k:
                hi, step = hi - step, step * 2
            else:
                lo = hi - step
                break
    else:
        lo = g
        while lo + step < hi:
            if np.count_nonzero(row <= lo + step) >= k:
                hi = lo + step
                break
            lo, step = lo + step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.count_nonzero(row <= mid) >= k:
            hi = mid
        else:
            lo = mid
    return hi


def top_k_rows(block: np.ndarray, k: int, indices: np.ndarray, distances: np.ndarray,
               max_distance: int, guess: int) -> int:
    """Exact top-k of each distance row into ``indices``/``distances`` (ties by archive index ascending).

    Every entry below the k-th radius ``t`` is kept, then entries at ``t`` in index order; a stable sort
    of the survivors' distances puts them in the final order. Returns the last row's radius, the
    next block's guess.
    """
    for i, row in enumerate(block):
        guess = kth_threshold(row, k, guess, max_distance)
        cand = np.flatnonzero(row <= guess)
        order = np.argsort(row[cand], kind="stable")[:k]
        indices[i] = cand[order]
        distances[i] = row[cand[order]]
    return guess


def search_transposed(query_packed: np.ndarray, archive_t: np.ndarray, k: int,
                      chunk_size: int | None = None) -> SearchResult:
    """:func:`search` on a word-major archive (``archive_packed.T`` made contiguous), no input checks."""
    q, w = query_packed.shape
    n = archive_t.shape[1]
    k = min(k, n)
    indices = np.empty((q, k), np.int64)
    distances = np.empty((q, k), np.int32)
    if k == 0 or q == 0:
        return SearchResult(indices, distances)
    rows = chunk_rows(n, chunk_size)
    buffer = np.empty(_scratch_size(min(rows, q), n), np.uint64)
    guess = w * WORD_BITS // 2
    for start in range(0, q, rows):
        block = distance_block(query_packed[start:start + rows], archive_t, buffer)
        guess = top_k_rows(block, k, indices[start:start + rows], distances[start:start + rows],
                           w * WORD_BITS, guess)
    return SearchResult(indices, distances)


def search(query_packed: np.ndarray, archive_packed: np.ndarray, *, k: int,
           chunk_size: int | None = None) -> SearchResult:
    """Exact top-k Hamming neighbours by a linear scan (distance ascending, ties by archive index ascending).

    Memory stays bounded: queries go through in blocks of ``chunk_size`` (default: as many as keep
    a block under about 131 k distances), so a (q x n) matrix is never built.

    Args:
        query_packed: packed query codes.
        archive_packed: packed archive codes (same bit length).
        k: neighbours per query; ``k > n`` returns all ``n``.
        chunk_size: queries per block (None: automatic).

    Shape:
        - query_packed: (q, w) uint64; archive_packed: (n, w) uint64
        - output: SearchResult with (q, min(k, n)) arrays

    Raises:
        DataError: the packed arrays are malformed or their widths differ.
        ConfigError: ``k < 1`` or ``chunk_size < 1``.
    """
    query_packed, archive_packed = _check_pair(query_packed, archive_packed)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}; ask for at least one neighbour")
    chunk_rows(archive_packed.shape[0], chunk_size)
    return search_transposed(query_packed, np.ascontiguousarray(archive_packed.T), k, chunk_size)

