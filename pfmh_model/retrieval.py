"""Binary hash codes packed into uint64 words, exact Hamming ranking and exact top-k search.

Binarisation rule (bit 1 is the +1 code, bit 0 the -1 code), by dtype:

- float (continuous or +-1 codes): bit = ``x >= 0``, i.e. the sign with sign(0) = +1, the same rule as
  ``network.binarize``; NaN is refused.
- signed integers (+-1 codes such as int8): bit = ``x > 0``; a 0 is refused as ambiguous.
- bool and unsigned integers ({0, 1} bit arrays): bit = ``x != 0``.

Bit layout: bit ``j`` of a code sits in word ``j // 64`` at bit position ``j % 64`` (least significant
bit first). Pad bits (positions ``bits .. 64 * words - 1``) are 0 in every row, so they never add to a
Hamming distance.

Ordering, everywhere: rank by Hamming distance ascending, ties by archive index ascending.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pfmh_model.errors import ConfigError, DataError

if TYPE_CHECKING:  # multi_index builds on this module
    from pfmh_model.multi_index import MultiIndexHashing

_WORD_BITS = 64
_MAX_WORDS = 1023            # distances up to 65,472 bits fit the uint16 distance blocks
_BLOCK_ELEMENTS = 1 << 17   # distances per block (queries x archive): 1 MiB of uint64 scratch stays in cache


def words_for(bits: int) -> int:
    """Number of uint64 words that hold ``bits`` bits (``ceil(bits / 64)``)."""
    return -(-bits // _WORD_BITS)


def binarize_codes(codes: np.ndarray) -> np.ndarray:
    """Bits of ``codes`` by the module's rule (float: ``x >= 0``; signed: ``x > 0``; bool/unsigned: ``x != 0``).

    Shape:
        - codes: (n, bits) bool, integer or float
        - output: (n, bits) bool

    Raises:
        DataError: codes are not 2-D, not numeric, contain NaN, or are signed integers with a 0.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"codes must be 2-D (n, bits), got shape {codes.shape}; reshape to (n, bits)")
    if codes.dtype == np.bool_ or np.issubdtype(codes.dtype, np.unsignedinteger):
        return codes != 0
    if np.issubdtype(codes.dtype, np.signedinteger):
        if (codes == 0).any():
            raise DataError(f"signed integer codes must be +-1, found {int((codes == 0).sum())} zeros; pass "
                            "{0, 1} bits as bool or unsigned, or real-valued codes as float")
        return codes > 0
    if not np.issubdtype(codes.dtype, np.floating):
        raise DataError(f"codes must be bool, integer or float, got dtype {codes.dtype}")
    if np.isnan(codes).any():
        raise DataError(f"codes contain {int(np.isnan(codes).sum())} NaN values; a NaN has no sign")
    return codes >= 0


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack binary codes into uint64 words (see the module docstring for the rule and bit order).

    Shape:
        - codes: (n, bits) bool, +-1 integers or real values
        - output: (n, ceil(bits / 64)) uint64, pad bits 0

    Raises:
        DataError: codes are not 2-D, have no columns, are not numeric, or contain NaN.
    """
    bits_of = binarize_codes(codes)
    n, bits = bits_of.shape
    if bits == 0:
        raise DataError("codes have 0 bits (shape (n, 0)); a hash code needs at least 1 bit")
    words = words_for(bits)
    padded = np.zeros((n, words * _WORD_BITS), dtype=np.bool_)
    padded[:, :bits] = bits_of
    packed_bytes = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed_bytes).view("<u8").astype(np.uint64, copy=False)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: +-1 codes from packed words.

    Shape:
        - packed: (n, ceil(bits / 64)) uint64
        - output: (n, bits) int8 with entries +1 / -1

    Raises:
        DataError: packed has the wrong dtype or width for ``bits``.
    """
    packed = check_packed(packed, "packed")
    if bits < 1 or packed.shape[1] != words_for(bits):
        raise DataError(f"packed has {packed.shape[1]} words but {bits} bits need {words_for(max(bits, 1))}; "
                        "pass the bit length used with pack_codes")
    as_bytes = np.ascontiguousarray(packed.astype("<u8", copy=False)).view(np.uint8)
    unpacked = np.unpackbits(as_bytes, axis=1, count=bits, bitorder="little")
    return (unpacked.astype(np.int8) * 2 - 1).astype(np.int8)


def check_packed(packed: np.ndarray, name: str) -> np.ndarray:
    """``packed`` as a 2-D uint64 array with at least one word per row, or a DataError naming ``name``."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint64 or not 1 <= packed.shape[1] <= _MAX_WORDS:
        raise DataError(f"{name} must be a 2-D uint64 array from pack_codes with 1..{_MAX_WORDS} words "
                        f"per code, got dtype {packed.dtype} shape {packed.shape}")
    return packed


def _check_pair(query_packed: np.ndarray, archive_packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query_packed = check_packed(query_packed, "query_packed")
    archive_packed = check_packed(archive_packed, "archive_packed")
    if query_packed.shape[1] != archive_packed.shape[1]:
        raise DataError(f"query codes have {query_packed.shape[1]} words, archive codes "
                        f"{archive_packed.shape[1]}; pack both with the same bit length")
    return query_packed, archive_packed


def distance_block(query_packed: np.ndarray, archive_t: np.ndarray,
                   buffer: np.ndarray | None = None) -> np.ndarray:
    """Hamming distances of a few queries to a word-major archive, in the smallest safe unsigned dtype.

    Args:
        query_packed: packed queries.
        archive_t: the archive transposed to word-major order (contiguous rows per word).
        buffer: optional scratch of at least ``q * n`` uint64 elements, reused across calls.

    Shape:
        - query_packed: (q, w) uint64
        - archive_t: (w, n) uint64
        - output: (q, n) uint8 when w <= 3 (distances <= 192), else uint16
    """
    q, w = query_packed.shape
    n = archive_t.shape[1]
    dtype = np.uint8 if w <= 3 else np.uint16
    scratch = np.empty((q, n), np.uint64) if buffer is None else buffer.reshape(-1)[: q * n].reshape(q, n)
    out = np.zeros((q, n), dtype)
    step = np.empty((q, n), np.uint8) if w > 1 else out
    for j in range(w):
        np.bitwise_xor(query_packed[:, j, None], archive_t[j][None, :], out=scratch)
        np.bitwise_count(scratch, out=step)
        if w > 1:
            np.add(out, step, out=out, casting="unsafe")
    return out


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
    buffer = np.empty(min(rows, q) * n, np.uint64)
    guess = w * _WORD_BITS // 2
    for start in range(0, q, rows):
        block = distance_block(query_packed[start:start + rows], archive_t, buffer)
        guess = top_k_rows(block, k, indices[start:start + rows], distances[start:start + rows],
                           w * _WORD_BITS, guess)
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


# From this archive size on, HammingIndex searches with multi-index hashing: on learned (clustered)
# codes it ran 14x faster than the linear scan at 1e6 codes, on uniform random codes as fast; at
# 1e5 it was slower on random codes (docs/BENCHMARKS.md, "Retrieval speed").
MIH_MIN_ARCHIVE = 250_000


class HammingIndex:
    """A site's archive of binary codes: append codes, exact top-k search, atomic save and load.

    Codes are stored packed (8 bytes per 64 bits). Search is :func:`search`'s exact linear scan, or
    from ``MIH_MIN_ARCHIVE`` codes on exact multi-index hashing (built on the first search after an
    ``add``); both give the same answer. Result positions are the order in which codes were added,
    starting at 0.

    Args:
        bits: code length; every added or queried code must have exactly this many columns.

    Raises:
        ConfigError: ``bits < 1``.
    """

    _FORMAT = 1

    def __init__(self, bits: int) -> None:
        if bits < 1:
            raise ConfigError(f"bits must be >= 1, got {bits}; use the model's code length")
        self.bits = int(bits)
        self._blocks: list[np.ndarray] = []
        self._archive_t: np.ndarray | None = None
        self._mih: MultiIndexHashing | None = None  # over the current archive, built lazily

    def __len__(self) -> int:
        return sum(block.shape[0] for block in self._blocks)

    def _pack_checked(self, codes: np.ndarray, name: str) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.bits:
            raise DataError(f"{name} must have shape (n, {self.bits}), got {codes.shape}; "
                            f"this index holds {self.bits}-bit codes")
        return pack_codes(codes)

    def add(self, codes: np.ndarray) -> None:
        """Append codes (bool, +-1 or real; see the module's binarisation rule).

        Shape:
            - codes: (m, bits); they get positions ``len(self) .. len(self) + m - 1``
        """
        self._blocks.append(self._pack_checked(codes, "codes"))
        self._archive_t = None
        self._mih = None

    @property
    def packed(self) -> np.ndarray:
        """All stored codes, packed. Shape: (len(self), ceil(bits / 64)) uint64."""
        if len(self._blocks) != 1:
            merged = (np.concatenate(self._blocks) if self._blocks
                      else np.zeros((0, words_for(self.bits)), np.uint64))
            self._blocks = [merged]
        return self._blocks[0]

    def search(self, query_codes: np.ndarray, k: int, *, chunk_size: int | None = None) -> SearchResult:
        """Exact top-k archive positions per query (distance ascending, ties by position ascending).

        Shape:
            - query_codes: (q, bits)
            - output: SearchResult with (q, min(k, len(self))) arrays
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}; ask for at least one neighbour")
        query_packed = self._pack_checked(query_codes, "query_codes")
        if len(self) >= MIH_MIN_ARCHIVE and len(query_packed):
            if self._mih is None:
                from pfmh_model.multi_index import MultiIndexHashing  # it builds on this module

                self._mih = MultiIndexHashing(self.packed, self.bits)
            return self._mih.search(query_packed, k=k)
        if self._archive_t is None:
            self._archive_t = np.ascontiguousarray(self.packed.T)
        return search_transposed(query_packed, self._archive_t, k, chunk_rows(len(self), chunk_size))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` (npz) atomically: a temporary file in the same folder, then rename."""
        target = Path(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, format=np.int64(self._FORMAT), bits=np.int64(self.bits), packed=self.packed)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HammingIndex:
        """Read an index written by :meth:`save` (no pickle is ever loaded).

        Raises:
            DataError: the file is not a HammingIndex file of a known format, or is inconsistent.
        """
        with np.load(Path(path), allow_pickle=False) as data:
            missing = {"format", "bits", "packed"} - set(data.files)
            if missing:
                raise DataError(f"{path} is not a HammingIndex file: missing {sorted(missing)}")
            fmt, bits, packed = int(data["format"]), int(data["bits"]), data["packed"]
        if fmt != cls._FORMAT:
            raise DataError(f"{path} has index format {fmt}, this code reads format {cls._FORMAT}")
        index = cls(bits)
        packed = check_packed(packed, "packed")
        if packed.shape[1] != words_for(bits):
            raise DataError(f"{path}: packed width {packed.shape[1]} does not fit {bits} bits")
        if bits % _WORD_BITS and packed.size and np.any(packed[:, -1] >> np.uint64(bits % _WORD_BITS)):
            raise DataError(f"{path}: pad bits beyond bit {bits} are set; the file is corrupt")
        index._blocks = [packed]
        return index
