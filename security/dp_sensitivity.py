"""L2 sensitivity of a site's prototype statistics, and the per-record weighting that bounds it.

A site uploads ``v = [sums.ravel(), counts]`` (length C*b + C) with, for a record i with embedding h_i,
label row y_i in {0,1}^C, m_i = sum_c y_ic labels and weight w_i::

    sums_c   = sum_i w_i * y_ic * u_i,   u_i = h_i / ||h_i||_2   (a unit vector, or 0 when h_i = 0)
    counts_c = sum_i w_i * y_ic

Derivation (add/remove-one-record neighbours, the relation Opacus' accountants assume). Removing record i
changes ``v`` by ``d_i = [w_i y_i1 u_i, ..., w_i y_iC u_i, w_i y_i1, ..., w_i y_iC]``. Its m_i class blocks
of the sums part each hold ``w_i u_i`` with norm ``w_i`` (``||u_i|| <= 1``), and its count part holds m_i
entries equal to ``w_i``, so::

    ||d_i||^2 = m_i w_i^2 ||u_i||^2 + m_i w_i^2 <= 2 m_i w_i^2.

With ``w_i = 1/sqrt(m_i)`` (the default, ``label_cap=None``) each part has norm exactly 1 and
``||d_i|| <= sqrt(2)``: ``L2_SENSITIVITY``. With a cap L, ``w_i = min(1, sqrt(L / m_i))``: records with at
most L labels count fully and longer label sets are scaled down to L labels' worth, so
``m_i w_i^2 = min(m_i, L)`` and ``||d_i|| <= sqrt(2 L)`` (``L = 1`` is the default). The bound is attained
by any record with at least L labels and a non-zero embedding. Records without labels get weight 0.
Replace-one neighbours would need twice the sensitivity (remove, then add; triangle inequality).

With weights the "counts" become weighted counts and ``sums_c / counts_c`` is a weighted mean of the unit
codes of class c. The coordinator re-normalises prototypes, so only the relative weights matter: the
direction is unchanged in expectation whenever a record's label count is independent of its code given the
class; otherwise multi-label records simply weigh less.

References:
    Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014, Def. 3.8 (l2 sensitivity)
    and Thm. A.1 (Gaussian mechanism). DESIGN.md section 3.
"""
from __future__ import annotations

import math
from typing import Final

import numpy as np

from security.errors import UnsafeConfiguration

__all__ = ["L2_SENSITIVITY", "l2_sensitivity", "record_weights", "clipped_class_statistics"]

L2_SENSITIVITY: Final[float] = math.sqrt(2.0)
"""Sensitivity of ``[sums, counts]`` with the default weights ``1/sqrt(#labels)``."""


def _cap(label_cap: int | None) -> int:
    if label_cap is None:
        return 1
    if isinstance(label_cap, bool) or not isinstance(label_cap, int) or label_cap < 1:
        raise UnsafeConfiguration(f"label_cap {label_cap!r} must be an integer >= 1 (or None for 1); "
                                  "pass a positive label count")
    return label_cap


def l2_sensitivity(*, label_cap: int | None = None) -> float:
    """L2 sensitivity ``sqrt(2 L)`` of ``[sums, counts]`` under add/remove of one record (L = label_cap or 1).

    Raises:
        UnsafeConfiguration: ``label_cap`` is not an integer >= 1.
    """
    return math.sqrt(2.0 * _cap(label_cap))


def record_weights(labels: np.ndarray, *, label_cap: int | None) -> np.ndarray:
    """Per-record weights ``min(1, sqrt(L / m_i))`` (``1/sqrt(m_i)`` if ``label_cap`` is None), 0 if m_i = 0.

    Shape:
        - labels: (n, C) binary (bool or 0/1 numbers)
        - return: (n,) float64

    Raises:
        UnsafeConfiguration: ``labels`` is not 2-D or holds values other than 0 and 1 (the bound would fail).
    """
    cap = _cap(label_cap)
    y = np.asarray(labels)
    if y.ndim != 2:
        raise UnsafeConfiguration(f"labels must be a 2-D (n, C) array, got shape {y.shape}; "
                                  "pass one row per record")
    y = y.astype(np.float64)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise UnsafeConfiguration("labels hold values other than 0 and 1, which voids the sensitivity bound; "
                                  "binarise the label matrix first")
    m: np.ndarray = y.sum(axis=1)
    weights = np.zeros(m.shape, dtype=np.float64)
    has = m > 0
    weights[has] = np.minimum(1.0, np.sqrt(cap / m[has]))
    return weights


def clipped_class_statistics(embeddings: np.ndarray, labels: np.ndarray, *,
                             label_cap: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted per-class sums of unit-normalised embeddings and weighted counts, with their sensitivity.

    Each embedding row is normalised here (zero rows stay zero), so the bound never relies on the caller.

    Args:
        embeddings: real codes h(x), one row per record.
        labels: binary label matrix, one row per record.
        label_cap: L in the module docstring; None means weights ``1/sqrt(#labels)``.

    Returns:
        ``(sums, counts, sensitivity)``; ``np.concatenate([sums.ravel(), counts])`` changes by at most
        ``sensitivity`` in L2 norm when one record is added or removed.

    Shape:
        - embeddings: (n, b) float
        - labels: (n, C) binary
        - sums: (C, b) float64; counts: (C,) float64

    Raises:
        UnsafeConfiguration: shapes disagree, embeddings are not finite, or labels are not binary.
    """
    h = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if h.ndim != 2 or y.ndim != 2 or h.shape[0] != y.shape[0]:
        raise UnsafeConfiguration(f"embeddings (n, b) and labels (n, C) must share n; got {h.shape} and "
                                  f"{y.shape}; pass one embedding row per label row")
    if not np.all(np.isfinite(h)):
        raise UnsafeConfiguration("embeddings hold NaN or inf, which voids the sensitivity bound; "
                                  "fix the encoder output before computing statistics")
    weights = record_weights(y, label_cap=label_cap)
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    unit = np.divide(h, norms, out=np.zeros_like(h), where=norms > 0.0)
    weighted = y.astype(np.float64) * weights[:, None]  # (n, C)
    sums = weighted.T @ unit
    counts = weighted.sum(axis=0)
    return sums, counts, l2_sensitivity(label_cap=label_cap)
