"""FedHAP's class-code votes: a site's per-class sign sums, and the server's bitwise majority.

Numpy only: the coordinator runs ``aggregate_fedhap`` without loading torch.
"""
from __future__ import annotations

import numpy as np

from pfmh_model.aggregation import GlobalState, SiteUpload, aggregate_global
from pfmh_model.errors import DataError
from pfmh_model.prototypes import PrototypeStats, hadamard_centres, known_classes


def code_statistics(codes: np.ndarray, labels: np.ndarray) -> PrototypeStats:
    """Per-class votes sums = Y^T sign(H) (sign(0) = +1) and counts = Y^T 1, in the PFMH upload layout.

    Shape:
        - codes: (n, b) float; labels: (n, C) {0, 1}; returns sums (C, b), counts (C,) float64

    Raises:
        DataError: arrays are not 2-D or row counts differ.
    """
    h, y = np.asarray(codes, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if h.ndim != 2 or y.ndim != 2 or h.shape[0] != y.shape[0]:
        raise DataError(f"need codes (n, b) and labels (n, C) with equal n; got {h.shape} and {y.shape}")
    return PrototypeStats(y.T @ np.where(h >= 0, 1.0, -1.0), y.sum(axis=0))


def initial_hash_codes(num_classes: int, bits: int, *, seed: int) -> np.ndarray:
    """Round-0 global codes: the +-1 Hadamard class centres (C, b) float64, deterministic from ``seed``."""
    return hadamard_centres(num_classes, bits, rng=np.random.default_rng(seed))


def global_hash_codes(total: PrototypeStats, previous: np.ndarray | None, *, bits: int, seed: int,
                      min_count: float = 0.5) -> np.ndarray:
    """Global prototypical codes P_c = sign(sum of votes_c), bitwise majority over all records of class c.

    A tied bit, or every bit of a class with total count <= ``min_count``, takes the fallback:
    sign(``previous``) or, when ``previous`` is None, :func:`initial_hash_codes`.

    Shape:
        - total: sums (C, b), counts (C,); previous: (C, b) or None; output: (C, b) float64 of +-1

    Raises:
        DataError: ``bits`` or ``previous`` disagrees with ``total``.
    """
    if total.bits != bits or (previous is not None and np.shape(previous) != total.sums.shape):
        raise DataError(f"votes are {total.sums.shape}, previous is {None if previous is None else np.shape(previous)},"
                        f" bits={bits}: they must agree")
    fallback = (np.where(np.asarray(previous) >= 0, 1.0, -1.0) if previous is not None
                else initial_hash_codes(total.num_classes, bits, seed=seed))
    vote = np.where(total.sums > 0, 1.0, np.where(total.sums < 0, -1.0, fallback))
    return np.where(known_classes(total, min_count=min_count)[:, None], vote, fallback)


def aggregate_fedhap(total: SiteUpload, previous: GlobalState, *, bits: int, seed: int) -> GlobalState:
    """FedHAP's server step: majority-vote codes (:func:`global_hash_codes`) and the FedAvg model if shared."""
    state = aggregate_global(SiteUpload(None, total.weighted_model, total.num_records), previous, bits=bits,
                             seed=seed)
    codes = previous.prototypes
    if total.prototypes is not None:
        codes = global_hash_codes(total.prototypes, previous.prototypes, bits=bits, seed=seed)
    return GlobalState(state.round, codes, state.shared_model)
