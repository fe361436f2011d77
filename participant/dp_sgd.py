"""DP-SGD for the shared model when it is federated under DP (Opacus per-record clipping and noise).

Why a separate loss: DP-SGD bounds each record's influence only when the loss is a sum of
per-record terms. PFMH's similarity loss couples pairs of records in a batch, and distillation
uses a teacher trained on all local data without DP, so neither is allowed here. The DP-SGD
objective per record is ``w_con * L_con(code, global prototypes) + w_q * L_q(code)``: the global
prototypes are themselves outputs of the DP prototype mechanism (post-processing), so the shared
model's update is covered by DP-SGD's guarantee. Batches use Poisson sampling (rate q = B/n), the
sampling that Opacus' accountant assumes; the shared model uses per-record GroupNorm instead of
BatchNorm (``pfmh_model.network.make_dp_compatible``).
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch

from participant.privacy import DP_SGD_MECHANISM, Release
from pfmh_model.data import Split
from pfmh_model.losses import prototype_contrastive_loss, quantization_loss
from pfmh_model.training import SiteTrainer


def planned_release(trainer: SiteTrainer, n_records: int, *, noise_multiplier: float, max_grad_norm: float,
                    epochs: int) -> Release:
    """What ``train_shared_dp_sgd`` will release (for the budget check before training)."""
    batch = min(trainer.config.batch_size, n_records)
    steps = epochs * math.ceil(n_records / batch)
    return Release(DP_SGD_MECHANISM, noise_multiplier, max_grad_norm, batch / n_records, steps)


def train_shared_dp_sgd(trainer: SiteTrainer, split: Split, *, global_prototypes: np.ndarray,
                        noise_multiplier: float, max_grad_norm: float, epochs: int) -> Release:
    """Train ``trainer.shared`` with DP-SGD; returns the release to account.

    Shape:
        global_prototypes: (C, b) unit rows.
    """
    from opacus import GradSampleModule  # heavy import, only on sites that federate the model under DP
    from opacus.optimizers import DPOptimizer

    release = planned_release(trainer, len(split), noise_multiplier=noise_multiplier,
                              max_grad_norm=max_grad_norm, epochs=epochs)
    cfg = trainer.config
    batch = min(cfg.batch_size, len(split))
    device = trainer.device
    image = torch.from_numpy(np.ascontiguousarray(split.image, dtype=np.float32)).to(device)
    text = torch.from_numpy(np.ascontiguousarray(split.text, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32)).to(device)
    prototypes = torch.from_numpy(np.asarray(global_prototypes, dtype=np.float32)).to(device)
    noise_generator = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))
    model = GradSampleModule(trainer.shared)
    optimizer = DPOptimizer(torch.optim.Adam(trainer.shared.parameters(), lr=cfg.lr),
                            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                            expected_batch_size=batch, loss_reduction="mean", generator=noise_generator)
    model.train()
    # Opacus hooks warn that inputs need no gradient; features are data, so that is expected.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    try:
        for _ in range(release.steps):
            chosen = torch.nonzero(torch.rand(len(split), generator=trainer.generator, device=device)
                                   < release.sample_rate)
            idx = chosen.squeeze(1)
            if idx.numel() < 2:  # the step is still accounted (conservative); nothing to learn from
                continue
            codes = model(image[idx], text[idx], generator=trainer.generator)
            loss = (cfg.weights.contrastive * prototype_contrastive_loss(codes, labels[idx], prototypes,
                                                                         temperature=cfg.temperature)
                    + cfg.weights.quantization * quantization_loss(codes))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        model._close()  # remove Opacus hooks; the plain module stays in trainer.shared
        for param in trainer.shared.parameters():
            for attr in ("grad_sample", "_forward_counter"):
                if hasattr(param, attr):
                    delattr(param, attr)
    trainer.shared.eval()
    return release
