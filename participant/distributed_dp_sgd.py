"""DP-SGD for a site trained on several processes: Opacus' DPDDP and DistributedDPOptimizer.

The same mechanism as ``participant.dp_sgd.train_dp_sgd`` (what the ledger accounts), spread
over W ranks the way Opacus' distributed support does it:

- the training records are split into W disjoint shards (``shard_bounds``); each step every
  rank draws a secret Poisson sample of its shard at the same rate q, so the union of the ranks'
  lots is a Poisson sample of all records at rate q, the analysed sampling;
- each rank clips its records' gradients (Opacus' per-sample hooks on the model wrapped in
  ``DifferentiallyPrivateDistributedDataParallel``, which starts every rank from rank 0's
  weights); ``DistributedDPOptimizer`` adds the Gaussian noise N(0, (sigma C)^2) on rank 0
  only, sums the ranks' clipped sums and divides by the expected lot size: one noise draw per
  step, as in one process;
- a step whose lot is empty on every rank is the mechanism's noise-only step; a rank with an
  empty share of a non-empty lot contributes zero.

Each rank seeds its own dropout-mask generator from ``os.urandom``; the noise generator is rank
0's, seeded the same way. With noise off and the same lots, the result equals the one-process
run (``tests/participant/test_distributed_dp_sgd.py``).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from participant.dp_sgd import PerRecordLoss, release_opacus_hooks, secret_generator
from participant.privacy import Release
from pfmh_model.data import Split
from pfmh_model.distributed_training import ShardedSiteTrainer, shard_bounds
from pfmh_model.training import Records
from security.dp_sampling import poisson_sample

__all__ = ["install_dp_sgd", "train_dp_sgd_sharded"]


def train_dp_sgd_sharded(trainer: ShardedSiteTrainer, model: nn.Module, split: Records, loss_fn: PerRecordLoss,
                         release: Release, *, max_grad_norm: float) -> Release:
    """This rank's part of ``release.steps`` DP-SGD steps on ``model`` (every rank calls it); returns ``release``."""
    from opacus import GradSampleModule
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
    from opacus.optimizers import DistributedDPOptimizer

    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        raise ValueError("DP-SGD needs a model without BatchNorm: build the trainer with dp_compatible / "
                         "dp_personal")
    device, n = trainer.device, len(split.labels)
    lo, hi = shard_bounds(n, trainer.rank, trainer.world)

    def shard(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x[lo:hi], dtype=np.float32)).to(device)

    image, text, labels = shard(split.image), shard(split.text), shard(split.labels)
    noise, masks = secret_generator(device), secret_generator(device)
    expected_batch = max(1, round(release.sample_rate * n))  # of the whole lot, as in one process
    sampled = GradSampleModule(DifferentiallyPrivateDistributedDataParallel(model))
    optimizer = DistributedDPOptimizer(torch.optim.Adam(model.parameters(), lr=trainer.config.lr),
                                       noise_multiplier=release.noise_multiplier, max_grad_norm=max_grad_norm,
                                       expected_batch_size=expected_batch / trainer.world,  # type: ignore[arg-type]
                                       loss_reduction="mean", generator=noise)
    sampled.train()
    try:
        for _ in range(release.steps):
            idx = torch.from_numpy(poisson_sample(hi - lo, release.sample_rate)).to(device)
            optimizer.zero_grad(set_to_none=True)
            if idx.numel() > 0:
                codes = sampled(image[idx], text[idx], generator=masks)
                loss_fn(codes, labels[idx]).mean().backward()
                optimizer.step()
            else:  # nothing of this rank's shard in the lot (or an empty lot: noise only, from rank 0)
                _zero_share_step(optimizer, model)
    finally:
        release_opacus_hooks(sampled, model)
    model.eval()
    return release


def _zero_share_step(optimizer: Any, model: nn.Module) -> None:  # noqa: ANN401
    """The optimiser step of a rank that sampled no record: a zero clipped sum, then noise, sum, Adam."""
    for param in model.parameters():
        if param.requires_grad:
            setattr(param, "summed_grad", torch.zeros_like(param))  # noqa: B010 - Opacus' attribute
    optimizer.add_noise()  # rank 0: noise; the others: the zero sum
    for param in model.parameters():
        if param.requires_grad:  # Opacus' scale_grad for one lot (it reads grad samples this rank has not)
            param.grad /= optimizer.expected_batch_size
    optimizer.reduce_gradients()
    optimizer.original_optimizer.step()


def _portable(loss_fn: PerRecordLoss) -> PerRecordLoss:
    """``loss_fn`` with its tensors on the CPU, to be pickled to the other ranks."""
    if isinstance(loss_fn, functools.partial):
        keywords = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in loss_fn.keywords.items()}
        return functools.partial(loss_fn.func, *loss_fn.args, **keywords)
    return loss_fn


def install_dp_sgd(trainer: ShardedSiteTrainer) -> dict[str, Any]:
    """Route ``dp_sgd.train_dp_sgd`` on this rank through the ranks; returns the follower's handler.

    On the leader, ``train_dp_sgd`` first sends the call to the followers; each follower runs the
    handler (``ShardedSiteTrainer.follow(handlers=...)``).
    """
    def models(t: ShardedSiteTrainer) -> dict[str, nn.Module]:
        return {"personal": t.personal, "shared": t.shared}

    def lead(model: nn.Module, split: Split, loss_fn: PerRecordLoss, release: Release, *,
             max_grad_norm: float) -> Release:
        trainer._check_split(split)  # noqa: SLF001
        name = next(k for k, m in models(trainer).items() if m is model)
        trainer.command("dp_sgd", {"model": name, "loss_fn": _portable(loss_fn), "release": release,
                                   "max_grad_norm": max_grad_norm})
        return train_dp_sgd_sharded(trainer, model, split, loss_fn, release, max_grad_norm=max_grad_norm)

    def follow(t: ShardedSiteTrainer, payload: dict[str, Any]) -> None:
        loss_fn = payload["loss_fn"]
        if isinstance(loss_fn, functools.partial):  # its tensors back onto this rank's device
            loss_fn = functools.partial(loss_fn.func, *loss_fn.args, **{
                k: v.to(t.device) if isinstance(v, torch.Tensor) else v for k, v in loss_fn.keywords.items()})
        train_dp_sgd_sharded(t, models(t)[payload["model"]], t.split, loss_fn, payload["release"],
                             max_grad_norm=payload["max_grad_norm"])

    if trainer.rank == 0:
        trainer.dp_sgd_runner = lead  # type: ignore[attr-defined]
    return {"dp_sgd": follow}
