"""The aggregation step: what one site uploads, how uploads add up, and the global state they produce.

A site's upload is one flat float64 vector (``SiteUpload.to_vector``)::

    [ prototype sums (C*b) | prototype counts (C) | n_k * shared weights (P) | n_k (1) ]

with the model part present only when the shared model is federated. Uploads are *added*,
never inspected one by one: in-process the sum is a plain ``np.sum``; over the network the
same vectors are fixed-point encoded and summed under secure aggregation, and the coordinator
only ever sees the total. ``aggregate_global`` turns that total into the next global state
(prototypes with completion fallbacks, FedAvg of the shared model), so both paths share it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pfmh_model.errors import ModelError
from pfmh_model.prototypes import PrototypeStats, global_prototypes


@dataclass(frozen=True)
class UploadLayout:
    """Sizes of the parts of an upload vector.

    Args:
        num_classes: C.
        bits: b, the code length.
        model_size: P, number of federated shared-model values (0 when the model stays local).
    """

    num_classes: int
    bits: int
    model_size: int = 0

    @property
    def has_prototypes(self) -> bool:
        return self.num_classes > 0 and self.bits > 0

    @property
    def length(self) -> int:
        proto = self.num_classes * self.bits + self.num_classes if self.has_prototypes else 0
        model = self.model_size + 1 if self.model_size else 0
        return proto + model


@dataclass(frozen=True)
class SiteUpload:
    """Exactly what one site contributes to a round (before DP noise and masking).

    Shape:
        prototypes.sums (C, b), prototypes.counts (C,), weighted_model (P,) = n_k * w_k, num_records = n_k.
    """

    prototypes: PrototypeStats | None
    weighted_model: np.ndarray | None = None
    num_records: float = 0.0

    def to_vector(self, layout: UploadLayout) -> np.ndarray:
        """Flatten into the float64 vector a site hands to secure aggregation."""
        parts: list[np.ndarray] = []
        if layout.has_prototypes:
            if self.prototypes is None:
                raise ModelError("the round expects prototype statistics but the upload has none")
            parts.append(self.prototypes.to_vector())
        if layout.model_size:
            if self.weighted_model is None or self.weighted_model.size != layout.model_size:
                got = None if self.weighted_model is None else self.weighted_model.size
                raise ModelError(f"shared model has {got} values, the round expects {layout.model_size}")
            parts.append(np.asarray(self.weighted_model, dtype=np.float64).ravel())
            parts.append(np.array([self.num_records], dtype=np.float64))
        vector = np.concatenate(parts) if parts else np.zeros(0)
        if vector.size != layout.length:
            raise ModelError(f"upload has {vector.size} values, layout expects {layout.length}")
        return vector

    @classmethod
    def from_vector(cls, vector: np.ndarray, layout: UploadLayout) -> SiteUpload:
        """Inverse of ``to_vector``; also used on the *sum* of many uploads."""
        vector = np.asarray(vector, dtype=np.float64).ravel()
        if vector.size != layout.length:
            raise ModelError(f"aggregate has {vector.size} values, layout expects {layout.length}")
        offset = 0
        protos = None
        if layout.has_prototypes:
            size = layout.num_classes * layout.bits + layout.num_classes
            protos = PrototypeStats.from_vector(vector[:size], layout.num_classes, layout.bits)
            offset = size
        if layout.model_size:
            weighted = vector[offset:offset + layout.model_size].copy()
            return cls(protos, weighted, float(vector[offset + layout.model_size]))
        return cls(protos)


# An aggregation step: sums the site vectors. In-process this is `sum_vectors`; the daemons
# replace it with secure aggregation, which returns the same sum without revealing any addend.
SumStep = Callable[[Sequence[np.ndarray]], np.ndarray]


def sum_vectors(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Plain (in-process) sum of upload vectors."""
    if not vectors:
        raise ModelError("no uploads to aggregate")
    return np.sum(np.stack([np.asarray(v, dtype=np.float64) for v in vectors]), axis=0)


@dataclass(frozen=True)
class GlobalState:
    """What the coordinator broadcasts after a round.

    Shape:
        prototypes (C, b) unit rows or None; shared_model (P,) flat float64 or None.
    """

    round: int
    prototypes: np.ndarray | None
    shared_model: np.ndarray | None


def aggregate_global(total: SiteUpload, previous: GlobalState, *, bits: int, seed: int) -> GlobalState:
    """Turn the summed upload of a round into the next global state.

    Global prototype_c = sum_c / count_c over all sites; a class no site holds keeps the previous
    round's prototype, or at round 0 a fixed Hadamard class centre (PFMH.md step 6). The shared
    model is the record-weighted FedAvg sum(n_k w_k) / sum(n_k).
    """
    prototypes = None
    if total.prototypes is not None:
        prototypes = global_prototypes(total.prototypes, previous.prototypes, bits=bits, seed=seed)
    shared = previous.shared_model
    if total.weighted_model is not None:
        if total.num_records <= 0:
            raise ModelError(f"FedAvg weight total is {total.num_records}; every site must report n_k > 0")
        shared = total.weighted_model / total.num_records
    return GlobalState(previous.round + 1, prototypes, shared)
