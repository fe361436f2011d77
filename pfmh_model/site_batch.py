"""K sites' local training as one batched computation (the simulation's fast path).

``train_personal_together`` and ``train_shared_together`` do what ``SiteTrainer.train_personal``
and ``SiteTrainer.train_shared`` do at each site, for K sites at once, and leave every trainer
(weights, BatchNorm buffers, Adam state, generator) as training them one after another would.

How: every site keeps its own schedule, E epochs of its own shuffled batches (``SiteTrainer``'s
batching, so a site's generator is consumed in the same order). Site k runs S_k = E x its
batches per epoch steps. The sites are ordered by S_k, longest first, so at lockstep position t
the sites still training are a prefix of the stack: their batches are padded to one (a, B, .)
tensor, the forward and the losses are batched (``stacked_net``, ``batched_losses``), and one
backward and one clipped Adam step update their rows of the stacked weights. Sites therefore may
hold any number of records; batches of different sizes are padded and masked.

Equality with the one-site path holds up to float rounding (batched matmuls sum in another
order); ``tests/pfmh_model/test_site_batch.py`` pins the tolerance. Reported ``seconds`` is the
wall time of the whole batched phase, the same for every site.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pfmh_model.batched_losses import (
    distillation_losses,
    prototype_contrastive_losses,
    quantization_losses,
    similarity_losses,
)
from pfmh_model.errors import DataError, OptionError
from pfmh_model.stacked_net import StackedNets, forward
from pfmh_model.training import Records, SiteTrainer

__all__ = ["train_personal_together", "train_shared_together"]

logger = logging.getLogger(__name__)


def _schedule(trainer: SiteTrainer, n: int, epochs: int) -> Iterator[torch.Tensor]:
    for _ in range(epochs):
        yield from trainer._batches(n)  # noqa: SLF001 - the same batching as the one-site path


def _max_batch(n: int, batch: int) -> int:
    return batch + 1 if n > batch and n % batch == 1 else min(n, batch)


def _batches_per_epoch(n: int, batch: int) -> int:
    return -(-n // batch) - (1 if n > batch and n % batch == 1 else 0)


class _Stacked:
    """Per-site inputs in the lockstep order: features and labels, teachers, stacked prototypes and masks."""

    def __init__(self, order: list[int], tensors: list[tuple[torch.Tensor, ...]], extras: dict[str, list]) -> None:
        self.data = [tensors[k] for k in order]
        teachers = extras.get("teacher")
        self.teachers = None if teachers is None else [teachers[k] for k in order]
        self.extras = {key: torch.stack([values[k] for k in order]) for key, values in extras.items()
                       if key != "teacher"}


def _train(trainers: Sequence[SiteTrainer], splits: Sequence[Records], model: str, epochs: int,
           weights: dict[str, float], extras: dict[str, list]) -> list[dict[str, float]]:
    """The lockstep loop; ``extras`` holds per-site tensors the terms need (teacher, prototypes, masks)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise OptionError(f"epochs={epochs!r} is invalid: need an integer >= 0")
    cfg = trainers[0].config
    tensors = [t._tensors(s) for t, s in zip(trainers, splits, strict=True)]  # noqa: SLF001 - same checks
    sizes = [img.shape[0] for img, _, _ in tensors]
    results = [{"loss": float("nan"), **dict.fromkeys(weights, float("nan")), "epochs": 0.0, "seconds": 0.0}
               for _ in trainers]
    for k, n in enumerate(sizes):
        if n < 2:
            logger.warning("%s model of site %d not trained: the split has %d record(s), BatchNorm needs 2",
                           model, k, n)
    steps = [epochs * _batches_per_epoch(n, cfg.batch_size) if n >= 2 else 0 for n in sizes]
    order = sorted((k for k in range(len(trainers)) if steps[k] > 0), key=lambda k: -steps[k])
    if not order:
        return results
    start = time.perf_counter()
    nets = [getattr(trainers[k], model) for k in order]
    opts = [getattr(trainers[k], f"{model}_opt") for k in order]
    group = opts[0].param_groups[0]
    for net in nets:
        net.train()
    stack = StackedNets(nets, opts)
    sites = _Stacked(order, [tuple(t) for t in tensors], extras)
    device = stack.device
    schedules = [_schedule(trainers[k], sizes[k], epochs) for k in order]
    pad = max(_max_batch(sizes[k], cfg.batch_size) for k in order)
    a_max = len(order)
    img_buf = torch.zeros(a_max, pad, tensors[order[0]][0].shape[1], device=device)
    txt_buf = torch.zeros(a_max, pad, tensors[order[0]][1].shape[1], device=device)
    lab_buf = torch.zeros(a_max, pad, tensors[order[0]][2].shape[1], device=device)
    teacher_buf = None if sites.teachers is None else torch.zeros(a_max, pad, cfg.bits, device=device)
    keep_bufs = [torch.zeros(a_max, pad, w, dtype=torch.bool, device=device) for w in stack.dropout_widths]
    generators = [trainers[k].generator for k in order]
    present_buf = torch.ones(a_max, pad, 2, device=device) if cfg.modality_dropout else None
    history = torch.full((steps[order[0]], a_max, len(weights)), float("nan"), device=device)
    positions = torch.arange(pad, device=device)
    for t in range(steps[order[0]]):
        a = sum(1 for k in order if steps[k] > t)
        lengths = []
        for j in range(a):
            idx = next(schedules[j]).to(device)
            length = idx.numel()
            lengths.append(length)
            img, txt, lab = sites.data[j]
            torch.index_select(img, 0, idx, out=img_buf[j, :length])
            torch.index_select(txt, 0, idx, out=txt_buf[j, :length])
            torch.index_select(lab, 0, idx, out=lab_buf[j, :length])
            if teacher_buf is not None and sites.teachers is not None:
                torch.index_select(sites.teachers[j], 0, idx, out=teacher_buf[j, :length])
            mask = trainers[order[j]]._modality_mask(length)  # noqa: SLF001 - before the dropout masks, as alone
            if present_buf is not None and mask is not None:
                present_buf[j, :length] = mask
        rows_t = max(lengths)  # pad this step's batches only as far as its longest
        count = torch.tensor(lengths, dtype=torch.float32, device=device)
        rows = (positions[:rows_t].unsqueeze(0) < count.unsqueeze(1)).to(torch.float32)
        keeps: list[torch.Tensor | None] = []
        for drop, buf in zip(stack.dropouts, keep_bufs, strict=True):
            if drop.p == 0.0:
                keeps.append(None)
                continue
            for j in range(a):
                drop.keep_mask((lengths[j], buf.shape[2]), generators[j], out=buf[j, :lengths[j]])
            keeps.append(buf[:a, :rows_t].to(torch.float32).mul_(drop.scale))
        leaves = stack.leaves(a)
        codes = forward(stack, leaves, img_buf[:a, :rows_t], txt_buf[:a, :rows_t], rows.unsqueeze(2),
                        count.view(a, 1, 1), keeps, None if present_buf is None else present_buf[:a, :rows_t])
        teacher = None if teacher_buf is None else teacher_buf[:a, :rows_t]
        parts = _terms(weights, codes, lab_buf[:a, :rows_t], rows, count, sites.extras, teacher, a, cfg.temperature)
        torch.stack([weights[key] * value for key, value in parts.items()]).sum().backward()
        history[t, :a] = torch.stack(list(parts.values()), dim=1).detach()
        stack.adam_step(leaves, lr=group["lr"], weight_decay=group["weight_decay"], betas=group["betas"],
                        eps=group["eps"], grad_clip=cfg.grad_clip)
    stack.store(nets, opts)
    seconds = time.perf_counter() - start
    history_np = history.cpu().numpy()
    for j, k in enumerate(order):
        per_epoch = steps[k] // epochs
        last = history_np[steps[k] - per_epoch:steps[k], j].mean(axis=0)
        means = {key: float(v) for key, v in zip(weights, last, strict=True)}
        results[k] = {"loss": float(sum(weights[key] * v for key, v in means.items())), **means,
                      "epochs": float(epochs), "seconds": seconds}
    return results


def _terms(weights: dict[str, float], codes: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
           count: torch.Tensor, extras: dict[str, torch.Tensor], teacher: torch.Tensor | None, a: int,
           temperature: float) -> dict[str, torch.Tensor]:
    mask = extras["class_mask"][:a] if "class_mask" in extras else None
    out = {}
    for key in weights:
        if key == "similarity":
            out[key] = similarity_losses(codes, labels, rows, count)
        elif key == "quantization":
            out[key] = quantization_losses(codes, rows, count)
        elif key == "distillation":
            assert teacher is not None  # noqa: S101 - set whenever the term is
            out[key] = distillation_losses(codes, teacher, rows, count)
        else:
            out[key] = prototype_contrastive_losses(codes, labels, extras[key][:a], rows, class_mask=mask,
                                                    temperature=temperature)
    return out


def _check_group(trainers: Sequence[SiteTrainer], splits: Sequence[Records]) -> None:
    if not trainers or len(trainers) != len(splits):
        raise OptionError(f"need one split per trainer, got {len(trainers)} trainers and {len(splits)} splits")
    for t in trainers[1:]:
        if t.config != trainers[0].config:
            raise OptionError("sites trained together need one TrainConfig; train them one at a time")


def train_personal_together(trainers: Sequence[SiteTrainer], splits: Sequence[Records], *,
                            epochs: int | None = None, anchors: np.ndarray | None = None) -> list[dict[str, float]]:
    """``SiteTrainer.train_personal`` at every site at once; one result dict per site."""
    _check_group(trainers, splits)
    cfg = trainers[0].config
    w = cfg.weights
    n = cfg.personal_epochs if epochs is None else epochs
    weights = {"similarity": w.similarity, "quantization": w.quantization}
    extras: dict[str, list] = {}
    if anchors is not None and w.personal_contrastive > 0:
        device = next(trainers[0].personal.parameters()).device
        value = torch.as_tensor(np.asarray(anchors), dtype=torch.float32, device=device)
        if value.shape != (splits[0].labels.shape[1], cfg.bits):
            raise DataError(f"personal anchors are {tuple(value.shape)}, expected "
                            f"({splits[0].labels.shape[1]}, {cfg.bits})")
        weights["anchor"] = w.personal_contrastive
        extras["anchor"] = [value] * len(trainers)
    return _train(trainers, splits, "personal", n, weights, extras)


def train_shared_together(trainers: Sequence[SiteTrainer], splits: Sequence[Records], *,
                          prototypes: Sequence[np.ndarray] | None, global_prototypes: np.ndarray | None,
                          class_masks: Sequence[np.ndarray] | None = None, epochs: int | None = None,
                          distill: bool = True) -> list[dict[str, float]]:
    """``SiteTrainer.train_shared`` at every site at once; one result dict per site.

    Args:
        prototypes: each site's completed prototypes (C, b), or None for none.
        global_prototypes: the broadcast global prototypes (C, b), or None.
        class_masks: each site's (C,) bool candidate classes, or None for all.
        Others as in :meth:`SiteTrainer.train_shared`.
    """
    _check_group(trainers, splits)
    cfg = trainers[0].config
    w, device = cfg.weights, next(trainers[0].shared.parameters()).device
    num_classes = splits[0].labels.shape[1]
    weights = {"similarity": w.similarity, "quantization": w.quantization}
    extras: dict[str, list] = {}
    if distill:
        weights["distillation"] = w.distillation
        extras["teacher"] = [torch.from_numpy(t.encode(s, model="personal")).to(device)
                             for t, s in zip(trainers, splits, strict=True)]

    def per_site(key: str, arrays: Sequence[np.ndarray], shape: tuple[int, ...], dtype: torch.dtype) -> list:
        out = []
        for array in arrays:
            value = torch.as_tensor(np.asarray(array), dtype=dtype, device=device)
            if value.shape != shape:
                raise DataError(f"{key} is {tuple(value.shape)}, expected {shape}")
            out.append(value)
        return out

    protos = {"contrastive_local": prototypes,
              "contrastive_global": None if global_prototypes is None else [global_prototypes] * len(trainers)}
    for key, arrays in protos.items():
        if arrays is not None:
            weights[key] = w.contrastive_weight
            extras[key] = per_site(f"{key} prototypes", arrays, (num_classes, cfg.bits), torch.float32)
    if class_masks is not None:
        extras["class_mask"] = per_site("class_mask", class_masks, (num_classes,), torch.bool)
    n = cfg.shared_epochs if epochs is None else epochs
    return _train(trainers, splits, "shared", n, weights, extras)
