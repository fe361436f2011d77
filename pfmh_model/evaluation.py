"""Retrieval quality of binary codes: mAP, precision@k and the Hamming-radius precision-recall curve.

Definitions (q queries, archive of n items, codes of b bits):

- Relevant: an archive item shares at least one label with the query.
- Ranking: Hamming distance ascending, ties by archive index ascending (a stable sort), exactly the
  order of :func:`pfmh_model.retrieval.hamming_rank`.
- Average precision of one query over the top ``K`` ranks (``K = n`` by default):
  ``AP = (1 / R_K) * sum_{j <= K, item j relevant} (relevant items in ranks 1..j) / j``, with ``R_K``
  the relevant items in ranks 1..K (so with ``K = n`` it is all relevant items; a query with relevant
  items but none in the top ``K`` has AP 0).
- precision@k: relevant items in ranks 1..k over k; ``k > n`` is clamped to ``n``.
- PR curve at Hamming radius r = 0..b: the retrieved set is every item within distance r. Per query,
  precision(r) = relevant retrieved / retrieved and recall(r) = relevant retrieved / relevant. The
  curve averages over queries: recall over all counted queries, precision over the counted queries
  that retrieve at least one item at that radius (NaN when none does). This is the radius curve of
  cross-modal hashing papers; the ``pr_curve`` function widely copied between their code bases
  instead divides both sums by the number of queries whose precision at that radius is above 0,
  which also inflates recall at small radii, so its numbers can differ from ours there.
- Counted queries: a query with no relevant item in the whole archive is excluded from every metric
  (mAP, precision@k and both PR curves). When no query counts, every metric is NaN.

Codes may be continuous or +-1; they are binarised with :func:`pfmh_model.retrieval.pack_codes`'s rule.
Work is done in blocks of queries (about 4 M distances each), so memory stays bounded for any q.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pfmh_model.errors import ConfigError, DataError
from pfmh_model.packed_codes import pack_codes
from pfmh_model.retrieval import chunk_rows, distance_block

_BLOCK_ELEMENTS = 1 << 22


def _labels(labels: np.ndarray, rows: int | None, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or (rows is not None and labels.shape[0] != rows):
        raise DataError(f"{name} must have shape ({rows if rows is not None else 'rows'}, classes) to match "
                        f"the codes, got {labels.shape}")
    return labels > 0


def relevance(query_labels: np.ndarray, archive_labels: np.ndarray) -> np.ndarray:
    """Whether each archive item shares at least one label with each query.

    Shape:
        - query_labels: (q, C) multi-hot (any dtype; an entry > 0 means the label is present)
        - archive_labels: (n, C)
        - output: (q, n) bool
    """
    ql = _labels(query_labels, None, "query_labels")
    al = _labels(archive_labels, None, "archive_labels")
    if ql.shape[1] != al.shape[1]:
        raise DataError(f"query labels have {ql.shape[1]} classes, archive labels {al.shape[1]}")
    return (ql.astype(np.float32) @ al.astype(np.float32).T) > 0


@dataclass(frozen=True, eq=False)
class RetrievalReport:
    """All retrieval metrics of one evaluation (definitions in the module docstring).

    Shape:
        - pr_precision, pr_recall: (b + 1,) float64, index = Hamming radius
    """

    map: float
    precision_at: dict[int, float]
    pr_precision: np.ndarray
    pr_recall: np.ndarray
    num_queries: int = 0
    num_counted_queries: int = 0
    map_top_k: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (floats, lists, ints), ready for JSON."""
        return {"map": float(self.map), "map_top_k": self.map_top_k,
                "precision_at": {int(k): float(v) for k, v in self.precision_at.items()},
                "pr_precision": [float(v) for v in self.pr_precision],
                "pr_recall": [float(v) for v in self.pr_recall],
                "num_queries": self.num_queries, "num_counted_queries": self.num_counted_queries}


def _check(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
           archive_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    query_codes, archive_codes = np.asarray(query_codes), np.asarray(archive_codes)
    if query_codes.ndim != 2 or archive_codes.ndim != 2 or query_codes.shape[1] != archive_codes.shape[1]:
        raise DataError(f"codes must be (q, b) and (n, b) with the same b, got {query_codes.shape} and "
                        f"{archive_codes.shape}; encode queries and archive with the same model")
    ql = _labels(query_labels, query_codes.shape[0], "query_labels")
    al = _labels(archive_labels, archive_codes.shape[0], "archive_labels")
    if ql.shape[1] != al.shape[1]:
        raise DataError(f"query labels have {ql.shape[1]} classes, archive labels {al.shape[1]}")
    return query_codes, archive_codes, ql, al


def _ranked_keys(dist: np.ndarray, rel: np.ndarray, bits: int) -> np.ndarray:
    """Each row's items as sorted keys ``(distance * n + index) * 2 + relevant``: the ranking itself.

    The keys are unique, so any sort gives distance ascending, ties by index ascending; the low bit
    carries relevance along, so no gather is needed afterwards.

    Shape:
        - dist, rel: (c, n); output: (c, n) int32 (int64 when (bits + 1) * 2n >= 2^31)
    """
    n = dist.shape[1]
    dtype = np.int32 if (bits + 1) * 2 * n < 2**31 else np.int64
    keys = dist.astype(dtype)
    np.multiply(keys, 2 * n, out=keys)
    np.add(keys, np.arange(0, 2 * n, 2, dtype=dtype), out=keys)
    np.add(keys, rel, out=keys)
    keys.sort(axis=1)
    return keys


class _Totals:
    """Sums over counted queries, filled block by block from ranked keys."""

    def __init__(self, kept: list[int], pr_len: int) -> None:
        self.counted, self.ap_sum = 0, 0.0
        self.p_sum = np.zeros(len(kept))
        self.prec_sum, self.prec_cnt, self.rec_sum = np.zeros(pr_len), np.zeros(pr_len), np.zeros(pr_len)

    def add(self, keys: np.ndarray, n_rel: np.ndarray, cut: int | None, kept: list[int]) -> None:
        hits = keys & 1
        cum = np.cumsum(hits, axis=1, dtype=np.int32)
        if cut is not None:
            r_cut = cum[:, cut - 1]
            rows, cols = np.nonzero(hits[:, :cut])      # precision at each relevant rank, summed per row
            ap_rows = np.bincount(rows, weights=cum[rows, cols] / (cols + 1.0), minlength=keys.shape[0])
            self.ap_sum += float((ap_rows[r_cut > 0] / r_cut[r_cut > 0]).sum())
        for i, k in enumerate(kept):
            self.p_sum[i] += float((cum[:, k - 1] / k).sum())
        pr_len = self.prec_sum.size
        if pr_len:
            bounds = np.arange(1, pr_len + 1, dtype=keys.dtype) * (keys.shape[1] * 2)
            retrieved = np.stack([np.searchsorted(row, bounds) for row in keys])   # items within radius r
            rel_ret = np.where(retrieved > 0, np.take_along_axis(cum, np.maximum(retrieved - 1, 0), 1), 0)
            has = retrieved > 0
            self.prec_sum += np.where(has, rel_ret / np.maximum(retrieved, 1), 0.0).sum(axis=0)
            self.prec_cnt += has.sum(axis=0)
            self.rec_sum += (rel_ret / n_rel[:, None]).sum(axis=0)


def _scan(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
          archive_labels: np.ndarray, *, ks: Sequence[int], top_k: int | None, want_map: bool,
          want_pr: bool, chunk_size: int | None) -> RetrievalReport:
    query_codes, archive_codes, ql, al = _check(query_codes, archive_codes, query_labels, archive_labels)
    (q, bits), n = query_codes.shape, archive_codes.shape[0]
    for k in (*ks, *(() if top_k is None else (top_k,))):
        if k < 1:
            raise ConfigError(f"cut-offs must be >= 1, got {k}; use top_k=None for the full ranking")
    rows = max(1, min(256, _BLOCK_ELEMENTS // max(n, 1))) if chunk_size is None else chunk_rows(n, chunk_size)
    cut = (n if top_k is None else min(top_k, n)) if want_map else None
    kept = sorted({min(k, n) for k in ks}) if n else []
    totals = _Totals(kept, bits + 1 if want_pr else 0)
    if n and q:
        qp, archive_t = pack_codes(query_codes), np.ascontiguousarray(pack_codes(archive_codes).T)
        al_t = al.astype(np.float32).T.copy()
        for s in range(0, q, rows):
            rel = (ql[s:s + rows].astype(np.float32) @ al_t) > 0
            n_rel = rel.sum(axis=1)
            ok = n_rel > 0
            totals.counted += int(ok.sum())
            if not ok.any():
                continue
            dist, rel, n_rel = distance_block(qp[s:s + rows][ok], archive_t), rel[ok], n_rel[ok]
            totals.add(_ranked_keys(dist, rel, bits), n_rel, cut, kept)
    c = totals.counted
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ap = totals.ap_sum / c if c and want_map else float("nan")
        p_at = {int(k): float(totals.p_sum[kept.index(min(k, n))] / c) if c else float("nan") for k in ks}
        pr_precision = totals.prec_sum / totals.prec_cnt
        pr_recall = totals.rec_sum / c if c else np.full(totals.rec_sum.size, np.nan)
    return RetrievalReport(mean_ap, p_at, pr_precision, pr_recall, q, c, top_k)


def evaluate(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
             archive_labels: np.ndarray, *, ks: Sequence[int] = (10, 100, 1000), top_k: int | None = None,
             chunk_size: int | None = None) -> RetrievalReport:
    """mAP (over the top ``top_k`` ranks, all ranks when None), precision@k for ``ks`` and the PR curve.

    Args:
        query_codes: query codes, continuous or +-1.
        archive_codes: archive codes, same bit length.
        query_labels: multi-hot query labels.
        archive_labels: multi-hot archive labels.
        ks: cut-offs for precision@k (each >= 1; clamped to n).
        top_k: mAP cut-off (None: the full ranking).
        chunk_size: queries per block (None: automatic, about 4 M distances per block).

    Shape:
        - query_codes: (q, b); archive_codes: (n, b); query_labels: (q, C); archive_labels: (n, C)

    Raises:
        DataError: shapes disagree. ConfigError: a cut-off or chunk_size is below 1.
    """
    return _scan(query_codes, archive_codes, query_labels, archive_labels, ks=ks, top_k=top_k,
                 want_map=True, want_pr=True, chunk_size=chunk_size)


def mean_average_precision(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
                           archive_labels: np.ndarray, *, top_k: int | None = None) -> float:
    """mAP over the full Hamming ranking (or its top ``top_k`` ranks); NaN when no query has a relevant item.

    Shape:
        - query_codes: (q, b); archive_codes: (n, b); query_labels: (q, C); archive_labels: (n, C)
    """
    return _scan(query_codes, archive_codes, query_labels, archive_labels, ks=(), top_k=top_k,
                 want_map=True, want_pr=False, chunk_size=None).map


def precision_at_k(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
                   archive_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """precision@k for each k in ``ks`` (k clamped to n), averaged over counted queries.

    Shape:
        - query_codes: (q, b); archive_codes: (n, b); query_labels: (q, C); archive_labels: (n, C)
    """
    return _scan(query_codes, archive_codes, query_labels, archive_labels, ks=ks, top_k=None,
                 want_map=False, want_pr=False, chunk_size=None).precision_at


def precision_recall_curve(query_codes: np.ndarray, archive_codes: np.ndarray, query_labels: np.ndarray,
                           archive_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hamming-radius PR curve: (precision, recall) at radius 0..b (see the module docstring).

    Shape:
        - query_codes: (q, b); archive_codes: (n, b); query_labels: (q, C); archive_labels: (n, C)
        - output: two (b + 1,) float64 arrays
    """
    report = _scan(query_codes, archive_codes, query_labels, archive_labels, ks=(), top_k=None,
                   want_map=False, want_pr=True, chunk_size=None)
    return report.pr_precision, report.pr_recall
