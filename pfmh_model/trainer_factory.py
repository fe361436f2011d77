"""Build a ``SiteTrainer`` from plain options, the same way on every site and at the coordinator.

Every party of a federation must build the *same* network (the coordinator needs its size for
the upload layout, sites need identical initial weights), so they all go through ``make_trainer``.
``dp_compatible`` swaps BatchNorm for a per-record norm in the shared model and ``dp_personal`` in the
personal model (DP-SGD needs per-record gradients; see ``network.make_dp_compatible``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from pfmh_model.errors import ConfigError
from pfmh_model.fedhap import FedHAPTrainer
from pfmh_model.fedhap_config import FedHAPConfig, fedhap_config
from pfmh_model.network import make_dp_compatible
from pfmh_model.training import LossWeights, SiteTrainer, TrainConfig, flatten_state


def train_config(options: Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """TrainConfig from a plain mapping (e.g. TOML/JSON); unknown keys raise ConfigError. A TrainConfig passes."""
    if isinstance(options, TrainConfig):  # already typed (the federation plan's ``train``)
        return options
    options = dict(options)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; valid: {sorted(names)}")
    if isinstance(options.get("weights"), Mapping):
        options["weights"] = LossWeights(**options["weights"])
    return dataclasses.replace(TrainConfig(), **options)


def make_trainer(options: Mapping[str, Any] | TrainConfig, *, image_dim: int, text_dim: int, num_classes: int,
                 dp_compatible: bool = False, dp_personal: bool = False, batch_seed: int | None = None,
                 method: str = "pfmh", fedhap: Mapping[str, Any] | FedHAPConfig | None = None,
                 device: str = "cpu") -> SiteTrainer:
    """A trainer whose initial weights depend only on ``options['seed']`` (common to all sites).

    ``method`` "fedhap" gives a :class:`~pfmh_model.fedhap.FedHAPTrainer` with the ``fedhap`` knobs;
    every other method a :class:`SiteTrainer`. The shared network is the same either way.
    ``device`` is where it trains (``pfmh_model.device``); the initial weights do not depend on it.
    """
    config = train_config(options)
    if method == "fedhap":
        trainer: SiteTrainer = FedHAPTrainer(config, fedhap=fedhap_config(fedhap), image_dim=image_dim,
                                             text_dim=text_dim, num_classes=num_classes, init_seed=config.seed,
                                             batch_seed=batch_seed, device=device)
    else:
        trainer = SiteTrainer(config, image_dim=image_dim, text_dim=text_dim, num_classes=num_classes,
                              init_seed=config.seed, batch_seed=batch_seed, device=device)
    use_dp_norms(trainer, shared=dp_compatible, personal=dp_personal)
    return trainer


def use_dp_norms(trainer: SiteTrainer, *, shared: bool, personal: bool) -> None:
    """Swap BatchNorm for per-record norms in the chosen models (DP-SGD), each with a fresh Adam."""
    config = trainer.config
    if shared:
        trainer.shared = make_dp_compatible(trainer.shared)  # type: ignore[assignment]  # same forward, other norm
        trainer.shared_opt = torch.optim.Adam(trainer.shared.parameters(), lr=config.lr,
                                              weight_decay=config.weight_decay)
    if personal:
        trainer.personal = make_dp_compatible(trainer.personal)  # type: ignore[assignment]
        trainer.personal_opt = torch.optim.Adam(trainer.personal.parameters(), lr=config.lr,
                                                weight_decay=config.weight_decay)


def shared_model_size(options: Mapping[str, Any] | TrainConfig, *, image_dim: int, text_dim: int, num_classes: int,
                      dp_compatible: bool = False) -> int:
    """Number of float values ``flatten_state`` yields for the shared model."""
    trainer = make_trainer(options, image_dim=image_dim, text_dim=text_dim, num_classes=num_classes,
                           dp_compatible=dp_compatible)
    return int(flatten_state(trainer.shared_state()).size)
