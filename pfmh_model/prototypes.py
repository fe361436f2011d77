"""Class prototypes: per-site statistics, global aggregation with fallbacks, completion. numpy float64 only.

A site's statistics for class c are sum_c = sum over records with y_c = 1 of h/||h|| and
count_c = #{records with y_c = 1}; a record with two labels counts in both classes. The flat
vector [sums.ravel(), counts] (length C*b + C) is exactly what a site uploads under secure
aggregation, and sums of such vectors are sums of statistics, so the coordinator only ever sees
totals. Global prototype_c = total sum_c / total count_c, re-normalised to unit length.

References:
    Zuo et al., AAAI 2025, Sec. "Prototype" (steps 2, 3 and 6 of a round; PFMH.md).
    Yuan et al., "Central Similarity Quantization for Efficient Image and Video Retrieval",
    CVPR 2020, Sec. 3.1 (Hadamard hash centres).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfmh_model.errors import DataError

__all__ = ["PrototypeStats", "class_statistics", "hadamard_centres", "known_classes", "global_prototypes",
           "complete_prototypes"]

_EPS = 1e-12


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


@dataclass
class PrototypeStats:
    """Per-class sums of unit codes and record counts (one site's, or a total).

    Shape:
        - sums: (C, b) float64
        - counts: (C,) float64 (a float so that DP noise and fixed-point decoding fit)

    Raises:
        DataError: shapes disagree.
    """

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.sums = np.asarray(self.sums, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.float64)
        if self.sums.ndim != 2 or self.counts.shape != (self.sums.shape[0],):
            raise DataError(f"PrototypeStats needs sums (C, b) and counts (C,); got {self.sums.shape} and "
                            f"{self.counts.shape}")

    @property
    def num_classes(self) -> int:
        return int(self.sums.shape[0])

    @property
    def bits(self) -> int:
        return int(self.sums.shape[1])

    def __add__(self, other: PrototypeStats) -> PrototypeStats:
        if not isinstance(other, PrototypeStats):
            return NotImplemented
        if other.sums.shape != self.sums.shape:
            raise DataError(f"cannot add PrototypeStats of shape {other.sums.shape} to {self.sums.shape}")
        return PrototypeStats(self.sums + other.sums, self.counts + other.counts)

    def to_vector(self) -> np.ndarray:
        """The upload vector [sums.ravel() (row-major), counts]; shape (C*b + C,) float64."""
        return np.concatenate([self.sums.ravel(), self.counts])

    @classmethod
    def from_vector(cls, vec: np.ndarray, num_classes: int, bits: int) -> PrototypeStats:
        """Inverse of :meth:`to_vector`.

        Raises:
            DataError: ``vec`` does not have num_classes * (bits + 1) entries.
        """
        flat = np.asarray(vec, dtype=np.float64).ravel()
        expected = num_classes * (bits + 1)
        if flat.size != expected:
            raise DataError(f"prototype vector has {flat.size} entries, expected C*(b+1) = {num_classes}*"
                            f"({bits}+1) = {expected}; check num_classes and bits")
        split = num_classes * bits
        return cls(flat[:split].reshape(num_classes, bits).copy(), flat[split:].copy())


def class_statistics(codes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums of L2-normalised codes and label counts: sums = Y^T (H / ||H||), counts = Y^T 1.

    Shape:
        - codes: (n, b) float; labels: (n, C) {0, 1}
        - returns: sums (C, b) float64, counts (C,) float64

    Raises:
        DataError: row counts differ or arrays are not 2-D.
    """
    h = np.asarray(codes, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if h.ndim != 2 or y.ndim != 2 or h.shape[0] != y.shape[0]:
        raise DataError(f"need codes (n, b) and labels (n, C) with equal n; got {h.shape} and {y.shape}")
    return y.T @ _unit_rows(h), y.sum(axis=0)


def hadamard_centres(num_classes: int, bits: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Fixed +-1 class hash centres (central-similarity hashing).

    If ``bits`` is a power of two and num_classes <= 2*bits: the first num_classes rows of
    [H; -H], H the Sylvester Hadamard matrix of order ``bits`` (distinct rows are at Hamming
    distance bits/2, or bits for a row and its negation). Otherwise i.i.d. fair +-1 entries from
    ``rng``; ``None`` means ``np.random.default_rng(0)`` so every party derives the same centres.

    Shape:
        - output: (num_classes, bits) float64 of +-1

    Raises:
        DataError: num_classes < 1 or bits < 1.
    """
    if num_classes < 1 or bits < 1:
        raise DataError(f"need num_classes >= 1 and bits >= 1; got {num_classes} and {bits}")
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        h = np.ones((1, 1))
        while h.shape[0] < bits:
            h = np.block([[h, h], [h, -h]])
        return np.concatenate([h, -h])[:num_classes].astype(np.float64)
    gen = rng if rng is not None else np.random.default_rng(0)
    return np.where(gen.random((num_classes, bits)) < 0.5, -1.0, 1.0)


def known_classes(total: PrototypeStats, *, min_count: float = 0.5) -> np.ndarray:
    """Classes some site holds: total count_c > ``min_count``; shape (C,) bool.

    0.5 tolerates fixed-point rounding of integer counts; raise it when counts carry DP noise.
    """
    return total.counts > min_count


def global_prototypes(total: PrototypeStats, previous: np.ndarray | None, *, bits: int,
                      rng: np.random.Generator | None = None, seed: int | None = None,
                      min_count: float = 0.5) -> np.ndarray:
    """Global unit prototypes from aggregated statistics, with fallbacks for classes no site has.

    Known classes (:func:`known_classes`): sum_c / count_c, re-normalised. Unknown: the
    ``previous`` prototype if given, else the Hadamard centre of c.

    Args:
        total: summed statistics of all sites.
        previous: last round's global prototypes, or None at round 0.
        bits: code length (checked against ``total``).
        rng: passed to :func:`hadamard_centres`; if None and ``seed`` is given,
            ``np.random.default_rng(seed)``.
        seed: see ``rng``.
        min_count: smallest count that makes a class known.

    Returns:
        Prototypes (C, b) float64 with unit rows.

    Raises:
        DataError: shapes disagree with ``bits`` or ``previous``.
    """
    if total.bits != bits or (previous is not None and np.shape(previous) != total.sums.shape):
        raise DataError(f"statistics are {total.sums.shape}, previous is "
                        f"{None if previous is None else np.shape(previous)}, bits={bits}: they must agree")
    known = known_classes(total, min_count=min_count)
    if rng is None and seed is not None:
        rng = np.random.default_rng(seed)
    fallback = (np.asarray(previous, dtype=np.float64) if previous is not None
                else hadamard_centres(total.num_classes, bits, rng=rng))
    means = total.sums / np.maximum(total.counts, min_count)[:, None]
    return _unit_rows(np.where(known[:, None], means, fallback))


def complete_prototypes(local: PrototypeStats, global_protos: np.ndarray, *,
                        min_count: float = 0.5) -> np.ndarray:
    """A site's training prototypes: its own mean for classes it has, the global one otherwise.

    Shape:
        - local: sums (C, b), counts (C,); global_protos: (C, b)
        - output: (C, b) float64 with unit rows

    Raises:
        DataError: shapes disagree.
    """
    glob = np.asarray(global_protos, dtype=np.float64)
    if glob.shape != local.sums.shape:
        raise DataError(f"global prototypes are {glob.shape}, local statistics {local.sums.shape}: "
                        "they must agree")
    has = local.counts > min_count
    means = local.sums / np.maximum(local.counts, min_count)[:, None]
    return _unit_rows(np.where(has[:, None], means, glob))
