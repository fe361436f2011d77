"""``pfmh-participant join`` launched by ``torchrun``: one site trained on several processes.

Rank 0 is the site's daemon (``SiteDaemon``): it alone joins, speaks to the coordinator, keeps the
ledger, the snapshot and the archive. The other ranks (followers) load the same ``site.toml`` and
data, build the same trainer, and mirror rank 0's training calls (``pfmh_model.
distributed_training``, DP-SGD through ``participant.distributed_dp_sgd``); they hold no keys in
use and send nothing anywhere but to rank 0's process group.

Backend: gloo on the CPU; with ``device = "cuda"`` or ``"auto"`` (and CUDA present), NCCL with
rank r on ``cuda:LOCAL_RANK``. FedHAP is trained on one process only (refused at join).

Messages between ranks, in order: rank 0 sends ("settings", {settings JSON}) after
joining, or ("stop") if it cannot; then one message per training call; then ("stop").
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from federation.plan import FederationSettings
from participant.config import SiteConfig
from participant.distributed_dp_sgd import install_dp_sgd
from participant.local_release import LocalRelease
from participant.site import SiteDaemon, SiteMismatch, split_validation
from pfmh_model.data import load_h5
from pfmh_model.distributed_training import ShardedSiteTrainer, broadcast_message, stop_followers
from pfmh_model.methods import shared_lr_is_constant
from pfmh_model.trainer_factory import make_trainer

__all__ = ["DistributedSiteDaemon", "launched_by_torchrun", "start_ranks"]

logger = logging.getLogger(__name__)

# Followers wait for rank 0 between rounds, while the other sites train: far longer than gloo's default 30 min.
WAIT = datetime.timedelta(days=7)


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str) -> tuple[str, str]:
    """(backend, device) of this rank for the site's ``device`` setting.

    Raises:
        SiteMismatch: ``cuda:N`` (each rank takes ``cuda:LOCAL_RANK``; write ``cuda``).
    """
    if device.startswith("cuda:"):
        raise SiteMismatch(f"device = {device!r} with several processes: write device = \"cuda\" (rank r of a node "
                           "uses cuda:LOCAL_RANK)")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "gloo", "cpu"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return "nccl", f"cuda:{local}"


def _trainer(cfg: SiteConfig, settings: FederationSettings) -> Any:  # noqa: ANN401
    """A follower's trainer: the architecture ``SiteDaemon._setup`` builds. Its weights, optimiser state and
    generator (batch seed) do not matter: every training call brings rank 0's."""
    trainer = make_trainer(settings.train, image_dim=settings.image_dim, text_dim=settings.text_dim,
                           num_classes=settings.num_classes, **LocalRelease.dp_models(settings),
                           method=settings.method, fedhap=settings.fedhap, device=cfg.device)
    trainer.constant_shared_lr = shared_lr_is_constant(settings.method, settings.share_mode)
    return trainer


class DistributedSiteDaemon(SiteDaemon):
    """Rank 0: the site daemon, with its trainer sharded over the process group (module docstring)."""

    def __init__(self, cfg: SiteConfig, *, group: Any, **kwargs: Any) -> None:  # noqa: ANN401
        self.group, self._followers_waiting = group, True
        try:
            super().__init__(cfg, **kwargs)
        except BaseException:
            self._release_followers()
            raise

    def _release_followers(self) -> None:
        if self._followers_waiting:
            self._followers_waiting = False
            stop_followers(self.group)

    def join(self) -> FederationSettings:
        settings = super().join()
        if settings.method == "fedhap":
            raise SiteMismatch("the federation trains fedhap, which a site trains on one process only: run "
                               "pfmh-participant join without torchrun")
        broadcast_message(self.group, ("settings", {"settings": (self.state_dir / "settings.json").read_text(),
                                                    "site_index": self.site_index}, None))
        return settings

    def _setup(self, settings: FederationSettings) -> None:
        super()._setup(settings)
        self.trainer = ShardedSiteTrainer.adopt(self.trainer, self.data.train, group=self.group)
        install_dp_sgd(self.trainer)
        self.release.trainer = self.trainer

    def run(self) -> int:
        try:
            return super().run()
        finally:
            self._release_followers()
            dist.destroy_process_group()


def _follow(cfg: SiteConfig, base: Path, group: Any) -> int:  # noqa: ANN401
    """A follower's life: wait for the settings, build the trainer, mirror rank 0 until it stops."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # rank 0 decides when the site stops; it then releases us
        signal.signal(sig, signal.SIG_IGN)
    op, payload, _ = broadcast_message(group)
    if op == "stop":
        return 0
    settings = FederationSettings.from_json(payload["settings"])
    torch.set_num_threads(cfg.threads)
    data, _ = split_validation(load_h5(base / cfg.data), settings, payload["site_index"])  # rank 0's records
    trainer = ShardedSiteTrainer.adopt(_trainer(cfg, settings), data.train, group=group)
    calls = trainer.follow(install_dp_sgd(trainer))
    logger.info("rank %d of %s: released by rank 0 after mirroring %d training call(s)", trainer.rank, cfg.site,
                calls)
    return 0


def start_ranks(cfg: SiteConfig, base: Path) -> tuple[SiteConfig, Any] | None:  # noqa: ANN401
    """Join torchrun's process group; on a follower, follow and return None.

    Returns:
        On rank 0: (the site config with this rank's device, the daemon class to build with it).
    """
    backend, device = rank_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=device)
    dist.init_process_group(backend, timeout=WAIT)
    group = dist.new_group(backend=backend, timeout=WAIT)
    if dist.get_rank() != 0:
        try:
            _follow(cfg, base, group)
        finally:
            dist.destroy_process_group()
        return None
    logger.info("%s: rank 0 of %d (%s, %s)", cfg.site, dist.get_world_size(), backend, device)

    def daemon(cfg: SiteConfig, **kwargs: Any) -> DistributedSiteDaemon:  # noqa: ANN401
        return DistributedSiteDaemon(cfg, group=group, **kwargs)

    return cfg, daemon
