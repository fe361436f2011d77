"""A site's archive of binary codes: append, exact top-k search (linear scan, distinct codes, pivot groups or
multi-index hashing), atomic save and load."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pfmh_model.atomic_file import atomic_path
from pfmh_model.distinct_codes import DistinctCodes, worth_grouping
from pfmh_model.errors import ConfigError, DataError
from pfmh_model.multi_index import MultiIndexHashing
from pfmh_model.packed_codes import WORD_BITS, check_packed, pack_codes, words_for
from pfmh_model.pivot_groups import PivotGroups, worth_pivots
from pfmh_model.retrieval import SearchResult, chunk_rows, search_transposed

# From this archive size on, HammingIndex searches with multi-index hashing: on learned (clustered)
# codes it ran 14x faster than the linear scan at 1e6 codes, on uniform random codes as fast; at
# 1e5 it was slower on random codes (docs/BENCHMARKS.md, "Retrieval speed"). From the same size
# on, an archive whose codes repeat a lot (at most 1 in 8 distinct, judged on a sample) is searched
# through its distinct codes instead (pfmh_model.distinct_codes), and one whose codes cluster
# (judged on a sample) through pivot groups (pfmh_model.pivot_groups).
MIH_MIN_ARCHIVE = 250_000


class HammingIndex:
    """A site's archive of binary codes: append codes, exact top-k search, atomic save and load.

    Codes are stored packed (8 bytes per 64 bits). Search is ``retrieval.search``'s exact linear scan, or
    from ``MIH_MIN_ARCHIVE`` codes on the distinct-code search when codes repeat, pivot groups when
    they cluster, or exact multi-index hashing otherwise (built on the first search after an ``add``,
    or by :meth:`prepare`); all give the same answer. Result positions are the order in which codes were added,
    starting at 0.

    Args:
        bits: code length; every added or queried code must have exactly this many columns.

    Raises:
        ConfigError: ``bits < 1``.
    """

    _FORMAT = 1

    def __init__(self, bits: int, *, build_on_search: bool = True) -> None:
        if bits < 1:
            raise ConfigError(f"bits must be >= 1, got {bits}; use the model's code length")
        self.bits = int(bits)
        self.build_on_search = build_on_search  # False: the linear scan answers until prepare() is done
        self._blocks: list[np.ndarray] = []
        self._archive_t: np.ndarray | None = None
        self._fast: MultiIndexHashing | DistinctCodes | PivotGroups | None = None  # over the archive, built lazily

    @classmethod
    def from_word_major(cls, archive_t: np.ndarray, bits: int, *, build_on_search: bool = False) -> HammingIndex:
        """An index over word-major packed codes (``packed.T``, e.g. a memory-mapped file), without a copy.

        The linear scan reads ``archive_t`` in place, so opening costs nothing beyond the mapping;
        multi-index tables (from ``MIH_MIN_ARCHIVE`` codes) are built by :meth:`prepare`, and until
        then (with ``build_on_search`` False) the linear scan answers, with the same results.

        Shape:
            - archive_t: (ceil(bits / 64), n) uint64, C-contiguous

        Raises:
            DataError: the array is not word-major packed codes of ``bits`` bits.
        """
        index = cls(bits, build_on_search=build_on_search)
        archive_t = np.asarray(archive_t)
        if archive_t.ndim != 2 or archive_t.dtype != np.uint64 or archive_t.shape[0] != words_for(bits) \
                or not archive_t.flags.c_contiguous:
            raise DataError(f"word-major codes must be C-contiguous uint64 ({words_for(bits)}, n), got "
                            f"{archive_t.dtype} {archive_t.shape}")
        index._blocks = [archive_t.T]
        index._archive_t = archive_t
        return index

    @property
    def method(self) -> str:
        """What answers searches now: "linear scan", "distinct codes", "pivot groups" or "multi-index hashing"."""
        fast = self._fast
        if fast is None:
            return "linear scan"
        if isinstance(fast, DistinctCodes):
            return "distinct codes"
        return "pivot groups" if isinstance(fast, PivotGroups) else "multi-index hashing"

    @property
    def ready(self) -> bool:
        """True when searches use the fastest structure this archive size calls for."""
        return len(self) < MIH_MIN_ARCHIVE or self._fast is not None

    def prepare(self) -> None:
        """Build the fast structure now when the archive is large enough to use one (thread-safe to call
        while other threads search: they switch to it once built).

        Codes that repeat: distinct codes; codes that cluster: pivot groups; otherwise multi-index
        hashing (each judged on a sample of the archive).
        """
        if len(self) >= MIH_MIN_ARCHIVE and self._fast is None:
            packed = self.packed
            if worth_grouping(packed):
                self._fast = DistinctCodes(packed, self.bits)
            elif worth_pivots(packed, self.bits):
                self._fast = PivotGroups(packed, self.bits)
            else:
                self._fast = MultiIndexHashing(packed, self.bits)

    def __len__(self) -> int:
        return sum(block.shape[0] for block in self._blocks)

    def _pack_checked(self, codes: np.ndarray, name: str) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.bits:
            raise DataError(f"{name} must have shape (n, {self.bits}), got {codes.shape}; "
                            f"this index holds {self.bits}-bit codes")
        return pack_codes(codes)

    def add(self, codes: np.ndarray) -> None:
        """Append codes (bool, +-1 or real; see ``packed_codes`` for the binarisation rule).

        Shape:
            - codes: (m, bits); they get positions ``len(self) .. len(self) + m - 1``
        """
        self._blocks.append(self._pack_checked(codes, "codes"))
        self._archive_t = None
        self._fast = None

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
        return self.search_packed(self._pack_checked(query_codes, "query_codes"), k, chunk_size=chunk_size)

    def search_packed(self, query_packed: np.ndarray, k: int, *, chunk_size: int | None = None) -> SearchResult:
        """:meth:`search` with queries already packed (``packed_codes.pack_codes``).

        Shape:
            - query_packed: (q, ceil(bits / 64)) uint64
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}; ask for at least one neighbour")
        query_packed = check_packed(query_packed, "query_packed")
        if query_packed.shape[1] != words_for(self.bits):
            raise DataError(f"query codes have {query_packed.shape[1]} words, this index holds {self.bits}-bit codes")
        if len(self) >= MIH_MIN_ARCHIVE and len(query_packed):
            if self._fast is None and self.build_on_search:
                self.prepare()
            fast = self._fast
            if fast is not None:
                return fast.search(query_packed, k=k)
        if self._archive_t is None:
            self._archive_t = np.ascontiguousarray(self.packed.T)
        return search_transposed(query_packed, self._archive_t, k, chunk_rows(len(self), chunk_size))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` (npz) atomically (see :mod:`pfmh_model.atomic_file`)."""
        with atomic_path(path) as tmp:
            np.savez(tmp, format=np.int64(self._FORMAT), bits=np.int64(self.bits), packed=self.packed)

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
        if bits % WORD_BITS and packed.size and np.any(packed[:, -1] >> np.uint64(bits % WORD_BITS)):
            raise DataError(f"{path}: pad bits beyond bit {bits} are set; the file is corrupt")
        index._blocks = [packed]
        return index
