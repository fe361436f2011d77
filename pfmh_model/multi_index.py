"""Exact k-nearest-neighbour Hamming search by multi-index hashing (MIH).

The b-bit codes are cut into m disjoint substrings, and each substring gets a direct-address hash
table (bucket offsets over all 2^L values, item ids sorted by bucket). Pigeonhole: if two codes
differ in at most ``m * r + s`` bits, then some substring ``j <= s`` differs in at most ``r`` bits or
some substring ``j > s`` in at most ``r - 1`` bits. So after probing every bucket within radius ``r``
in substrings ``0..s`` and within ``r - 1`` in the others, every item at distance ``<= m * r + s``
has been seen. A query is finished as soon as its k-th best (distance, index) pair so far lies
within that certified radius; the answer is then exactly that of the linear scan, ties by archive
index ascending included.

Probing costs grow as C(L, r); when a query's probe or candidate count passes a fraction of the
archive size it finishes with the exact linear scan instead (random uniform codes, the worst case
for MIH, often get there; learned codes, which cluster, rarely do).

References:
    M. Norouzi, A. Punjani, D. J. Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
    CVPR 2012, Sec. 3-4 (the search radius schedule and the choice m ~ b / log2 n); TPAMI 2014.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from pfmh_model.errors import ConfigError
from pfmh_model.packed_codes import check_packed, words_for
from pfmh_model.retrieval import SearchResult, check_queries, chunk_rows, distance_block, search_transposed

_MAX_SUBSTRING_BITS = 24
_CANDIDATE_WEIGHT = 0.25                # a candidate costs about a quarter of a bucket probe
_SAMPLE_SIZE = 1 << 13                   # archive items used to guess each query's k-th distance


def substring_keys(packed: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits ``start .. start + length - 1`` of each packed code as an integer (bit ``start`` lowest).

    Shape:
        - packed: (n, w) uint64; output: (n,) int64
    """
    word, offset = divmod(start, 64)
    value = packed[:, word] >> np.uint64(offset)
    if offset + length > 64:
        value |= packed[:, word + 1] << np.uint64(64 - offset)
    return (value & np.uint64((1 << length) - 1)).astype(np.int64)


class MultiIndexHashing:
    """Multi-index hash tables over a fixed archive, answering exact top-k queries.

    Args:
        archive_packed: the archive, packed by :func:`pfmh_model.retrieval.pack_codes`.
        bits: code length b.
        substrings: number of substrings m (default ``round(b / log2 n)``, at least ``ceil(b / 24)``).
        probe_fraction: a query switches to the linear scan once its bucket probes plus a quarter
            of its candidates pass this fraction of the archive size (a probe, a random read in
            a 2^L table, costs about as much as scanning 30 codes; hence the default 0.03).

    Shape:
        - archive_packed: (n, ceil(b / 64)) uint64

    Raises:
        ConfigError: ``bits``, ``substrings`` or ``probe_fraction`` out of range.
    """

    def __init__(self, archive_packed: np.ndarray, bits: int, *, substrings: int | None = None,
                 probe_fraction: float = 0.03) -> None:
        archive_packed = check_packed(archive_packed, "archive_packed")
        if bits < 1 or archive_packed.shape[1] != words_for(bits):
            raise ConfigError(f"bits={bits} does not fit packed codes of {archive_packed.shape[1]} words")
        n = archive_packed.shape[0]
        m = substrings if substrings is not None else max(1, round(bits / math.log2(max(n, 2))),
                                                            -(-bits // _MAX_SUBSTRING_BITS))
        if not 1 <= m <= bits or -(-bits // m) > _MAX_SUBSTRING_BITS:
            raise ConfigError(f"substrings={m} must be in [ceil(bits / {_MAX_SUBSTRING_BITS}), bits={bits}]")
        if not 0 < probe_fraction <= 1:
            raise ConfigError(f"probe_fraction must be in (0, 1], got {probe_fraction}")
        self.bits, self.n, self.probe_fraction = bits, n, probe_fraction
        self.archive_t = np.ascontiguousarray(archive_packed.T)
        lengths = [bits // m + (1 if j < bits % m else 0) for j in range(m)]
        self.starts = [sum(lengths[:j]) for j in range(m)]
        self.lengths = lengths
        id_dtype = np.int32 if n < 2**31 else np.int64
        # Per substring: bucket offsets (2^L + 1,), item ids in bucket order (n,), and the codes in
        # that order (w, n), so a bucket's codes are read contiguously (m extra copies of the archive).
        self.tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start, length in zip(self.starts, lengths, strict=True):
            keys = substring_keys(archive_packed, start, length)
            offsets = np.zeros((1 << length) + 1, id_dtype)
            np.cumsum(np.bincount(keys, minlength=1 << length), out=offsets[1:])
            ids = np.argsort(keys, kind="stable").astype(id_dtype)
            self.tables.append((offsets, ids, np.ascontiguousarray(self.archive_t[:, ids])))
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._sample_t = np.ascontiguousarray(self.archive_t[:, :: max(8, n // _SAMPLE_SIZE)])
        self._cost = self._certification_cost()

    def _certification_cost(self) -> np.ndarray:
        """Expected probes + candidates (uniform buckets) until radius D is certified. Shape: (b + 1,)."""
        cost, total, m = np.zeros(self.bits + 1), 0.0, len(self.lengths)
        for radius in range(max(self.lengths) + 1):
            for j, length in enumerate(self.lengths):
                if radius <= length:
                    total += math.comb(length, radius) * (1 + _CANDIDATE_WEIGHT * self.n / 2**length)
                if m * radius + j <= self.bits:
                    cost[m * radius + j] = total
        return cost

    def __len__(self) -> int:
        return self.n

    def masks(self, length: int, radius: int) -> np.ndarray:
        """All ``length``-bit values with exactly ``radius`` set bits, cached. Shape: (C(L, r),) int64."""
        key = (length, radius)
        if key not in self._masks:
            if radius > length:
                self._masks[key] = np.zeros(0, np.int64)
            elif radius == 0:
                self._masks[key] = np.zeros(1, np.int64)
            else:
                combos = np.array(list(combinations(range(length), radius)), np.int64)
                self._masks[key] = (np.int64(1) << combos).sum(axis=1, dtype=np.int64)
        return self._masks[key]

    def search(self, query_packed: np.ndarray, *, k: int, chunk_size: int = 64) -> SearchResult:
        """Exact top-k neighbours (distance ascending, ties by archive index ascending).

        Shape:
            - query_packed: (q, ceil(b / 64)) uint64; output: SearchResult with (q, min(k, n)) arrays

        Raises:
            ConfigError: ``k < 1`` or ``chunk_size < 1``. DataError: malformed query codes.
        """
        query_packed = check_queries(query_packed, self.archive_t.shape[0], k)
        # Bound the (rows x probes) arrays to about 4 M entries and the composite keys below 2^62.
        rows = min(chunk_rows(self.n, chunk_size), max(1, (1 << 22) // max(1, int(self.probe_fraction * self.n))),
                   max(1, (1 << 62) // ((self.bits + 1) * max(self.n, 1))))
        k = min(k, self.n)
        indices = np.empty((query_packed.shape[0], k), np.int64)
        distances = np.empty((query_packed.shape[0], k), np.int32)
        for s in range(0, query_packed.shape[0], rows):
            if k:
                self._search_chunk(query_packed[s:s + rows], k, indices[s:s + rows], distances[s:s + rows])
        return SearchResult(indices, distances)

    def _search_chunk(self, qp: np.ndarray, k: int, out_idx: np.ndarray, out_dist: np.ndarray) -> None:
        n, m = self.n, len(self.tables)
        span = (self.bits + 1) * n                            # composite key: row * span + dist * n + id
        qkeys = [substring_keys(qp, st, ln) for st, ln in zip(self.starts, self.lengths, strict=True)]
        budget = self.probe_fraction * n
        # Hopeless queries (k-th distance beyond the radius certifiable within budget, judged on a
        # strided sample of the archive) go straight to the linear scan.
        reach = int(np.searchsorted(self._cost, budget, side="right")) - 1
        sample = self._sample_t.shape[1]
        need = min(sample, max(1, round(k * sample / n)))
        hopeless = np.count_nonzero(distance_block(qp, self._sample_t) <= reach, axis=1) < need
        if hopeless.any():
            self._linear(qp, np.flatnonzero(hopeless), k, out_idx, out_dist)
        active = np.flatnonzero(~hopeless)
        if active.size == 0:
            return
        pool = np.zeros(0, np.int64)
        bound = np.full(active.size, self.bits)               # k-th best distance so far, per active row
        spent = np.zeros(qp.shape[0], np.int64)              # probes + candidates per query so far
        for radius in range(max(self.lengths) + 1):
            for j, (offsets, ids, codes) in enumerate(self.tables):
                masks = self.masks(self.lengths[j], radius)
                spent[active] += masks.size
                if (spent[active] > budget).any():
                    active, bound, pool, _ = self._give_up(qp, k, spent > budget, active, bound, pool, span,
                                                           out_idx, out_dist)
                    if active.size == 0:
                        return
                probe = qkeys[j][active][:, None] ^ masks[None, :]
                begin, count = offsets[probe], offsets[probe + 1] - offsets[probe]
                spent[active] += (_CANDIDATE_WEIGHT * count.sum(axis=1)).astype(np.int64)
                if (spent[active] > budget).any():
                    active, bound, pool, kept = self._give_up(qp, k, spent > budget, active, bound, pool, span,
                                                              out_idx, out_dist)
                    if active.size == 0:
                        return
                    begin, count = begin[kept], count[kept]
                count = count.ravel()
                per_row = count.reshape(active.size, -1).sum(axis=1)
                where = np.repeat(begin.ravel() - (np.cumsum(count) - count), count)
                where += np.arange(where.size, dtype=where.dtype)       # positions in bucket order
                dist = np.zeros(where.size, np.int64)
                for w, column in enumerate(codes):
                    dist += np.bitwise_count(np.repeat(qp[active, w], per_row) ^ np.take(column, where))
                close = np.flatnonzero(dist <= np.repeat(bound, per_row))   # beyond the k-th best: useless
                keys = np.repeat(active * span, per_row)[close] + dist[close] * n + np.take(ids, where[close])
                pool = np.sort(np.concatenate([pool, keys]))
                fresh = np.ones(pool.size, bool)
                fresh[1:] = pool[1:] != pool[:-1]
                pool = pool[fresh]                            # one entry per (row, id)
                starts = np.searchsorted(pool, active * span)  # rows in pool are a subset of active
                rows_of = np.repeat(np.arange(active.size), np.diff(np.append(starts, pool.size)))
                pool = pool[np.arange(pool.size) - starts[rows_of] < k]               # top-k per row
                active, pool, bound = self._finish(pool, active, k, m * radius + j, span, out_idx, out_dist)
                if active.size == 0:
                    return
        self._linear(qp, active, k, out_idx, out_dist)      # unreachable: the last radius certifies all

    def _finish(self, pool: np.ndarray, active: np.ndarray, k: int, certified: int, span: int,
                out_idx: np.ndarray, out_dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Write out rows whose k-th best lies within the certified radius.

        Returns the rows still active, their pool entries and their k-th best distance so far
        (``bits`` while fewer than k were found).
        """
        n = self.n
        starts = np.searchsorted(pool, active * span)
        found = np.diff(np.append(starts, pool.size))
        last = np.minimum(starts + k - 1, max(pool.size - 1, 0))
        kth = np.where(found >= k, (pool[last] % span) // n if pool.size else 0, self.bits + 1)
        done = kth <= certified
        if done.any():
            take = (starts[done][:, None] + np.arange(k)).ravel()
            rest = pool[take] % span
            out_idx[active[done]] = (rest % n).reshape(-1, k)
            out_dist[active[done]] = (rest // n).reshape(-1, k)
            keep = np.ones(pool.size, bool)
            keep[take] = False
            pool = pool[keep]
        return active[~done], pool, np.minimum(kth[~done], self.bits)

    def _give_up(self, qp: np.ndarray, k: int, over_budget: np.ndarray, active: np.ndarray, bound: np.ndarray,
                 pool: np.ndarray, span: int, out_idx: np.ndarray, out_dist: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Answer the active rows that ran over budget by the linear scan; drop them from the state.

        Returns the remaining active rows, their bounds, their pool entries and the kept-row mask.
        """
        over = over_budget[active]
        self._linear(qp, active[over], k, out_idx, out_dist)
        pool = pool[~np.isin(pool // span, active[over])]
        return active[~over], bound[~over], pool, ~over

    def _linear(self, qp: np.ndarray, rows: np.ndarray, k: int, out_idx: np.ndarray,
                out_dist: np.ndarray) -> None:
        result = search_transposed(qp[rows], self.archive_t, k)
        out_idx[rows], out_dist[rows] = result.indices, result.distances
