"""One site's local work in a round, shared by the in-process federation and the site daemon.

The coordinator's side (round-0 prototypes, each method's aggregation) is in ``server_step``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pfmh_model.aggregation import SiteUpload, UploadLayout
from pfmh_model.data import Split
from pfmh_model.fedhap import FedHAPTrainer
from pfmh_model.prototypes import PrototypeStats, complete_prototypes
from pfmh_model.server_step import initial_prototypes
from pfmh_model.site_batch import train_personal_together, train_shared_together
from pfmh_model.training import SiteTrainer, flatten_state


def site_batch_seed(seed: int, site_index: int) -> int:
    """Seed of a site's batch order and dropout: the k-th site (sorted ids) of a run seeded ``seed``."""
    return seed * 1000 + site_index


def personal_anchors(trainer: SiteTrainer, num_classes: int) -> np.ndarray | None:
    """The fixed class centres a site's personal model is pulled towards, or None (weight 0).

    They are the round-0 global prototypes (``server_step.initial_prototypes``, public constants
    from the common seed), so every site's personal code space, whose codes make the uploaded
    prototype statistics, is anchored to one frame. Fixed, not the broadcast prototypes: those are
    means of the personal codes themselves, and pulling the codes towards them each round fed back on
    multi-label data (per-site and global mAP fell after round 10; docs/BENCHMARKS.md).
    """
    if trainer.config.weights.personal_contrastive <= 0:
        return None
    return initial_prototypes(num_classes, trainer.config.bits, seed=trainer.config.seed)


def train_pfmh_site(trainer: SiteTrainer, train: Split, global_prototypes: np.ndarray, *,
                    train_shared: bool = True) -> tuple[PrototypeStats, dict[str, float]]:
    """PFMH steps 1-4 at one site: personal model, personal prototypes, completion, shared model.

    Args:
        trainer: the site's trainer.
        train: its training records.
        global_prototypes: (C, b) broadcast global prototypes.
        train_shared: False when the caller trains the shared model itself (e.g. with DP-SGD).

    Returns:
        The site's exact prototype statistics (from the personal model) and the mean losses.
    """
    losses = dict(trainer.train_personal(train, anchors=personal_anchors(trainer, train.labels.shape[1])))
    stats = trainer.prototype_statistics(train)
    if train_shared:
        completed = complete_prototypes(stats, global_prototypes)
        shared = trainer.train_shared(train, prototypes=completed, global_prototypes=global_prototypes)
        losses.update({f"shared_{k}": v for k, v in shared.items()})
    return stats, losses


def train_fedavg_site(trainer: SiteTrainer, train: Split) -> dict[str, float]:
    """FedAvg / local baseline: the shared model alone, for personal + shared epochs (equal compute)."""
    epochs = trainer.config.personal_epochs + trainer.config.shared_epochs
    return trainer.train_shared(train, prototypes=None, global_prototypes=None, epochs=epochs, distill=False)


def train_fedhap_site(trainer: FedHAPTrainer, train: Split,
                      global_codes: np.ndarray) -> tuple[PrototypeStats, dict[str, float]]:
    """FedHAP at one site: train against the global codes; returns the class-code votes and the losses."""
    losses = trainer.train_fedhap(train, prototypes=global_codes)
    return trainer.code_statistics(train), losses


def make_upload(trainer: SiteTrainer, n_records: int, stats: PrototypeStats | None,
                layout: UploadLayout) -> SiteUpload:
    """What the site contributes: prototype statistics and/or n_k * shared weights, and n_k."""
    weighted = float(n_records) * flatten_state(trainer.shared_state()) if layout.model_size else None
    return SiteUpload(stats if layout.has_prototypes else None, weighted, float(n_records))


def train_pfmh_sites(trainers: Sequence[SiteTrainer], trains: Sequence[Split],
                     global_prototypes: np.ndarray) -> list[tuple[PrototypeStats, dict[str, float]]]:
    """:func:`train_pfmh_site` at every site, the sites' models trained together (``site_batch``)."""
    anchors = personal_anchors(trainers[0], trains[0].labels.shape[1])
    personal = train_personal_together(trainers, trains, anchors=anchors)
    stats = [t.prototype_statistics(s) for t, s in zip(trainers, trains, strict=True)]
    completed = [complete_prototypes(s, global_prototypes) for s in stats]
    for trainer in trainers:
        trainer.start_shared_round()
    shared = train_shared_together(trainers, trains, prototypes=completed, global_prototypes=global_prototypes)
    return [(st, {**p, **{f"shared_{k}": v for k, v in sh.items()}})
            for st, p, sh in zip(stats, personal, shared, strict=True)]


def train_fedavg_sites(trainers: Sequence[SiteTrainer], trains: Sequence[Split]) -> list[dict[str, float]]:
    """:func:`train_fedavg_site` at every site, the sites' models trained together."""
    epochs = trainers[0].config.personal_epochs + trainers[0].config.shared_epochs
    for trainer in trainers:
        trainer.start_shared_round()
    return train_shared_together(trainers, trains, prototypes=None, global_prototypes=None, epochs=epochs,
                                 distill=False)
