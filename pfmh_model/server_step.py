"""The coordinator's side of a round, shared with the in-process federation: the round-0 global
prototypes and each method's aggregation step. Numpy only, so the coordinator runs without torch.

``initial_prototypes`` is the round-0 global prototype set every party derives from the seed
(Hadamard class centres, PFMH.md step 6), so sites and coordinator agree without a message.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pfmh_model.aggregation import GlobalState, aggregate_global
from pfmh_model.errors import ConfigError
from pfmh_model.fedhap_votes import aggregate_fedhap, initial_hash_codes
from pfmh_model.prototypes import hadamard_centres

# total upload, previous state, bits, seed -> new global state
Aggregator = Callable[..., GlobalState]


def initial_prototypes(num_classes: int, bits: int, *, seed: int, method: str = "pfmh") -> np.ndarray:
    """Round-0 global prototypes (C, b), deterministic from ``seed``.

    PFMH: unit-norm Hadamard class centres. FedHAP: the same centres as +-1 codes.
    """
    if method == "fedhap":
        return initial_hash_codes(num_classes, bits, seed=seed)
    centres = hadamard_centres(num_classes, bits, rng=np.random.default_rng(seed))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def aggregator(method: str) -> Aggregator:
    """The server step of ``method``: FedHAP's majority vote, otherwise PFMH's mean (+ FedAvg)."""
    if method == "fedhap":
        return aggregate_fedhap
    if method in ("pfmh", "fedavg", "centralized"):
        return aggregate_global
    raise ConfigError(f"method {method!r} has no aggregation step")
