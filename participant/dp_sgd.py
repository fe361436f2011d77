"""DP-SGD (Opacus per-record clipping and noise) for every model whose outputs leave a site under DP.

Three models can feed an upload (docs/PRIVACY.md, "The DP chain"):

- PFMH's personal model, whose codes give the prototype statistics (``train_encoder_dp_sgd``);
- FedHAP's hashing network, whose sign codes give the class-code votes (``train_fedhap_dp_sgd``);
- PFMH's shared model when it is federated (``train_shared_dp_sgd``).

Why per-record losses: DP-SGD bounds each record's influence only when the loss is a sum of per-record
terms. PFMH's similarity loss couples pairs of records in a batch, distillation uses a teacher trained
without DP, and FedHAP's discriminator is fitted to all local codes, so none of them is used here. Each
objective is ``w_anchor * L_anchor(code_i, P) + w_q * L_q(code_i)`` with P the broadcast global prototypes
(PFMH) or class codes (FedHAP): outputs of earlier DP releases or public constants (the Hadamard round-0
centres), so choosing the loss from them is adaptive composition, not a leak.

Sampling: each step's batch is a Poisson sample (rate q = B / n) drawn from ``os.urandom``
(``security.dp_sampling``), never from the trainer's seeded generator, which the coordinator could
reproduce. An empty sample still takes a noise-only step, as the analysed mechanism does. The noise
generator is seeded from ``os.urandom`` too. Models use per-record GroupNorm instead of BatchNorm
(``pfmh_model.network.make_dp_compatible``).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from participant.privacy import DP_SGD_MECHANISM, ENCODER_MECHANISM, Release
from pfmh_model.data import Split
from pfmh_model.fedhap import FedHAPTrainer, prototype_loss
from pfmh_model.losses import prototype_contrastive_loss, quantization_loss_per_record
from pfmh_model.training import SiteTrainer
from security.dp_sampling import poisson_sample

# Opacus' hooks warn that the inputs need no gradient; features are data, so that is expected. Set once for
# the process (catch_warnings is not thread-safe, and tests run several sites' daemons in one process).
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

# (codes of the sampled records (n, b), their labels (n, C)) -> each record's own loss (n,)
PerRecordLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def planned_release(trainer: SiteTrainer, n_records: int, *, noise_multiplier: float, max_grad_norm: float,
                    epochs: int, mechanism: str = DP_SGD_MECHANISM) -> Release:
    """What a DP-SGD training run of ``epochs`` epochs will release (for the budget check before training)."""
    batch = min(trainer.config.batch_size, n_records)
    steps = epochs * math.ceil(n_records / batch)
    return Release(mechanism, noise_multiplier, max_grad_norm, batch / n_records, steps)


def _anchor_terms(codes: torch.Tensor, labels: torch.Tensor, p: torch.Tensor, *, contrastive: float,
                  quantization: float, temperature: float) -> torch.Tensor:
    return (contrastive * prototype_contrastive_loss(codes, labels, p, temperature=temperature, per_record=True)
            + quantization * quantization_loss_per_record(codes))


def _anchor_loss(trainer: SiteTrainer, prototypes: np.ndarray) -> PerRecordLoss:
    # A partial of a module-level function, so it can be sent to a site's other ranks (distributed_dp_sgd).
    cfg, p = trainer.config, torch.from_numpy(np.asarray(prototypes, dtype=np.float32)).to(trainer.device)
    return functools.partial(_anchor_terms, p=p, contrastive=cfg.weights.contrastive_weight,
                             quantization=cfg.weights.quantization, temperature=cfg.temperature)


def secret_generator(device: torch.device) -> torch.Generator:
    """A generator seeded from the OS CSPRNG: DP noise and dropout masks nobody can replay."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


def release_opacus_hooks(sampled: nn.Module, model: nn.Module) -> None:
    """Remove Opacus' hooks and per-sample attributes; the plain module stays where it was."""
    sampled._close()  # noqa: SLF001 - Opacus' own teardown
    for param in model.parameters():
        for attr in ("grad_sample", "_forward_counter", "summed_grad"):
            if hasattr(param, attr):
                delattr(param, attr)


def train_dp_sgd(trainer: SiteTrainer, model: nn.Module, split: Split, loss_fn: PerRecordLoss, release: Release,
                 *, max_grad_norm: float) -> Release:
    """Train ``model`` (in place) for ``release.steps`` Poisson-sampled DP-SGD steps; returns ``release``.

    Raises:
        ValueError: ``model`` still has BatchNorm (Opacus refuses per-sample gradients through it).
    """
    from opacus import GradSampleModule  # heavy import, only on sites that train under DP
    from opacus.optimizers import DPOptimizer

    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        raise ValueError("DP-SGD needs a model without BatchNorm: build the trainer with dp_compatible / "
                         "dp_personal")
    runner = getattr(trainer, "dp_sgd_runner", None)
    if runner is not None:  # a site trained on several processes (participant.distributed_dp_sgd)
        return runner(model, split, loss_fn, release, max_grad_norm=max_grad_norm)
    cfg, n = trainer.config, len(split)
    device = trainer.device
    image = torch.from_numpy(np.ascontiguousarray(split.image, dtype=np.float32)).to(device)
    text = torch.from_numpy(np.ascontiguousarray(split.text, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32)).to(device)
    noise_generator = secret_generator(device)
    # Dropout masks are handed out by position in the lot, so adding a record shifts the masks of the records
    # after it; secret i.i.d. masks keep that shift invisible (the public trainer generator would not).
    mask_generator = secret_generator(device)
    expected_batch = max(1, round(release.sample_rate * n))
    sampled = GradSampleModule(model)
    optimizer = DPOptimizer(torch.optim.Adam(model.parameters(), lr=cfg.lr),
                            noise_multiplier=release.noise_multiplier, max_grad_norm=max_grad_norm,
                            expected_batch_size=expected_batch, loss_reduction="mean", generator=noise_generator)
    sampled.train()
    try:
        for _ in range(release.steps):
            _step(optimizer, sampled, model, image, text, labels, loss_fn, release, n=n, mask=mask_generator,
                  noise=noise_generator, expected_batch=expected_batch, max_grad_norm=max_grad_norm)
    finally:
        release_opacus_hooks(sampled, model)
    model.eval()
    return release


def _step(optimizer, sampled: nn.Module, model: nn.Module, image: torch.Tensor, text: torch.Tensor,  # noqa: ANN001
          labels: torch.Tensor, loss_fn: PerRecordLoss, release: Release, *, n: int, mask: torch.Generator,
          noise: torch.Generator, expected_batch: int, max_grad_norm: float) -> None:
    """One DP-SGD step on a fresh secret Poisson lot."""
    idx = torch.from_numpy(poisson_sample(n, release.sample_rate)).to(image.device)
    optimizer.zero_grad(set_to_none=True)
    if idx.numel() == 0:  # the mechanism's step on an empty lot: noise only
        _noise_only_step(optimizer, model, std=release.noise_multiplier * max_grad_norm,
                         expected_batch=expected_batch, generator=noise)
        return
    codes = sampled(image[idx], text[idx], generator=mask)
    # The mean over the whole lot: Opacus' "mean" reduction then gives each record its own gradient.
    loss_fn(codes, labels[idx]).mean().backward()
    optimizer.step()


def _noise_only_step(optimizer, model: nn.Module, *, std: float, expected_batch: int,  # noqa: ANN001
                     generator: torch.Generator) -> None:
    """DP-SGD's update for an empty lot: Gaussian noise N(0, (sigma C)^2) / B as the gradient."""
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.normal(0.0, std, param.shape, generator=generator,
                                      device=param.device) / expected_batch
    optimizer.original_optimizer.step()


def train_encoder_dp_sgd(trainer: SiteTrainer, split: Split, *, global_prototypes: np.ndarray,
                         noise_multiplier: float, max_grad_norm: float, epochs: int) -> Release:
    """PFMH under DP: the personal model (the encoder of the released statistics) trained with DP-SGD.

    Shape:
        global_prototypes: (C, b).
    """
    release = planned_release(trainer, len(split), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              epochs=epochs, mechanism=ENCODER_MECHANISM)
    return train_dp_sgd(trainer, trainer.personal, split, _anchor_loss(trainer, global_prototypes), release,
                        max_grad_norm=max_grad_norm)


def train_shared_dp_sgd(trainer: SiteTrainer, split: Split, *, global_prototypes: np.ndarray,
                        noise_multiplier: float, max_grad_norm: float, epochs: int) -> Release:
    """PFMH with the model federated under DP: the shared model trained with DP-SGD."""
    release = planned_release(trainer, len(split), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              epochs=epochs)
    return train_dp_sgd(trainer, trainer.shared, split, _anchor_loss(trainer, global_prototypes), release,
                        max_grad_norm=max_grad_norm)


def train_fedhap_dp_sgd(trainer: FedHAPTrainer, split: Split, *, global_codes: np.ndarray,
                        noise_multiplier: float, max_grad_norm: float, epochs: int) -> Release:
    """FedHAP under DP: its hashing network (whose sign codes are the votes) trained with DP-SGD.

    The per-record objective is ``w_p L_proto + w_q L_q`` against the broadcast class codes; the
    discriminator and L_sim are left out (both depend on other records; module docstring).
    """
    release = planned_release(trainer, len(split), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              epochs=epochs, mechanism=ENCODER_MECHANISM)
    w, codes_p = trainer.fedhap, torch.from_numpy(np.asarray(global_codes, dtype=np.float32)).to(trainer.device)

    def loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (w.prototype * prototype_loss(h, y, codes_p, per_record=True)
                + w.quantization * quantization_loss_per_record(h))

    return train_dp_sgd(trainer, trainer.shared, split, loss, release, max_grad_norm=max_grad_norm)
