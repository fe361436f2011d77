"""Local PFMH training at one site: personal and shared models, snapshots, flat-state helpers.

Mini-batches are index slices of in-memory tensors (no DataLoader, no per-sample loop). Every
random draw (initial weights, batch order, dropout) comes from one ``torch.Generator`` seeded
from ``TrainConfig.seed``, so equal seeds and data give identical codes on the same machine and
thread count. A final batch of one record is merged into the previous one (BatchNorm needs two);
a split of fewer than two records is not trained on (logged as a warning, losses NaN).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pfmh_model.atomic_file import atomic_path
from pfmh_model.device import resolve_device
from pfmh_model.errors import DataError, OptionError, StateMismatch
from pfmh_model.losses import (
    distillation_loss,
    prototype_contrastive_loss,
    quantization_loss,
    similarity_loss,
)
from pfmh_model.network import HashNet
from pfmh_model.prototypes import PrototypeStats, class_statistics
from pfmh_model.train_config import LossWeights, TrainConfig

__all__ = ["LossWeights", "Records", "TrainConfig", "SiteTrainer", "flatten_state", "unflatten_state"]

logger = logging.getLogger(__name__)

# A loss term: (weight, fn(codes, batch indices, batch labels) -> scalar loss).
_Term = tuple[float, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]


class Records(Protocol):
    """What training reads from a data split (``pfmh_model.data.Split`` satisfies it; read-only)."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def text(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray: ...


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _weighted_sum(terms: dict[str, _Term], parts: dict[str, torch.Tensor]) -> torch.Tensor:
    items = iter(parts.items())
    key, value = next(items)
    total = terms[key][0] * value
    for key, value in items:
        total = total + terms[key][0] * value
    return total


def _contrastive_term(prototypes: torch.Tensor, mask: torch.Tensor | None,
                      temperature: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def term(codes: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return prototype_contrastive_loss(codes, labels, prototypes, class_mask=mask, temperature=temperature)
    return term


class SiteTrainer:
    """One site's personal and shared :class:`HashNet` with their Adam optimisers.

    Args:
        config: training hyper-parameters.
        image_dim: image feature length.
        text_dim: text feature length.
        num_classes: C, checked against labels and prototypes; ``None`` takes it from the data.
        init_seed: seed of the initial weights (default ``config.seed``). Give every site the same
            one: personal prototypes of different sites are only summable if their models start
            in one code space.
        batch_seed: seed of batch order and dropout masks (default ``config.seed``); give each
            site its own.
        device: where models, data and optimisers live: "cpu" (default), "cuda", "cuda:N" or
            "auto" (``pfmh_model.device``). Initial weights are drawn on the CPU either way.

    Attributes:
        personal: the site's private model (never leaves the site).
        shared: the model whose codes are published and, optionally, federated.
        round: rounds completed; callers advance it, snapshots keep it.
    """

    def __init__(self, config: TrainConfig, *, image_dim: int, text_dim: int, num_classes: int | None = None,
                 init_seed: int | None = None, batch_seed: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(config, TrainConfig):
            raise OptionError(f"config is {type(config).__name__}: need a TrainConfig")
        # A plan resolves its "auto" weights knowing whether it runs DP; a trainer built without one has none.
        self.config = config = config.resolved(dp=False)
        self.num_classes = num_classes
        self.device = resolve_device(device)
        init = torch.Generator().manual_seed(config.seed if init_seed is None else init_seed)
        self.generator = torch.Generator(device=self.device).manual_seed(
            config.seed if batch_seed is None else batch_seed)
        self.shared = HashNet(image_dim=image_dim, text_dim=text_dim, bits=config.bits, width=config.width,
                              hidden=config.hidden, dropout=config.dropout, generator=init).to(self.device)
        self.personal = HashNet(image_dim=image_dim, text_dim=text_dim, bits=config.bits, width=config.width,
                                hidden=config.hidden, dropout=config.dropout, generator=init).to(self.device)
        # fused=True: one kernel per step instead of ~10 ops per tensor (4x faster on CPU).
        self.shared_opt = torch.optim.Adam(self.shared.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, fused=True)
        self.personal_opt = torch.optim.Adam(self.personal.parameters(), lr=config.lr,
                                             weight_decay=config.weight_decay, fused=True)
        self.round = 0
        # Set by whoever knows the federation (``methods.shared_lr_is_constant``): the shared model then
        # trains at ``lr`` every round, whatever ``shared_lr_decay`` says.
        self.constant_shared_lr = False

    # ----------------------------------------------------------------- data plumbing
    def _tensors(self, split: Records) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, txt, lab = (_as_tensor(x).to(self.device) for x in (split.image, split.text, split.labels))
        n = img.shape[0]
        if (img.ndim, txt.ndim, lab.ndim) != (2, 2, 2) or txt.shape[0] != n or lab.shape[0] != n:
            raise DataError(f"split arrays must be 2-D with equal rows; got image {tuple(img.shape)}, text "
                            f"{tuple(txt.shape)}, labels {tuple(lab.shape)}")
        if img.shape[1] != self.shared.image_dim or txt.shape[1] != self.shared.text_dim:
            raise DataError(f"features are {img.shape[1]}-d image / {txt.shape[1]}-d text, the model expects "
                            f"{self.shared.image_dim} / {self.shared.text_dim}")
        if self.num_classes is not None and lab.shape[1] != self.num_classes:
            raise DataError(f"labels have {lab.shape[1]} classes, the trainer was built for "
                            f"{self.num_classes}")
        return img, txt, lab

    def _batches(self, n: int) -> Iterator[torch.Tensor]:
        chunks = list(torch.randperm(n, generator=self.generator, device=self.device).split(self.config.batch_size))
        if chunks[-1].numel() == 1:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return iter(chunks)

    def _modality_mask(self, n: int) -> torch.Tensor | None:
        """(n, 2) present-modality mask for one batch under ``config.modality_dropout`` (None when 0)."""
        p = self.config.modality_dropout
        if p == 0:
            return None
        draw = torch.rand(n, 2, generator=self.generator, device=self.device)
        hidden, image_side = draw[:, 0] < p, draw[:, 1] < 0.5
        mask = torch.ones(n, 2, device=self.device)
        mask[hidden & image_side, 0] = 0.0
        mask[hidden & ~image_side, 1] = 0.0
        return mask

    def _step(self, model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip, foreach=True)
        opt.step()

    def _batch_codes(self, model: HashNet, img: torch.Tensor, txt: torch.Tensor
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training forward of one mini-batch (row indices -> codes); a sharded trainer splits it."""
        return lambda idx: model(img[idx], txt[idx], generator=self.generator, present=self._modality_mask(len(idx)))

    def _run(self, name: str, model: HashNet, opt: torch.optim.Optimizer, split: Records, epochs: int,
             progress: bool, terms: dict[str, _Term]) -> dict[str, float]:
        """Epoch loop over shuffled mini-batches; returns the last epoch's mean of every term."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise OptionError(f"epochs={epochs!r} is invalid: need an integer >= 0")
        img, txt, lab = self._tensors(split)
        start, last = time.perf_counter(), {k: float("nan") for k in terms}
        if img.shape[0] < 2:
            logger.warning("%s model not trained: the split has %d record(s), BatchNorm needs 2", name,
                           img.shape[0])
            epochs = 0
        model.train()
        batch_codes = self._batch_codes(model, img, txt)
        for _ in tqdm(range(epochs), desc=f"{name} model", disable=not progress, leave=False):
            totals = dict.fromkeys(terms, 0.0)
            steps = 0
            for idx in self._batches(img.shape[0]):
                codes = batch_codes(idx)
                parts = {k: fn(codes, idx, lab[idx]) for k, (_, fn) in terms.items()}
                self._step(model, opt, _weighted_sum(terms, parts))
                for k, v in parts.items():
                    totals[k] += float(v.detach())
                steps += 1
            last = {k: v / steps for k, v in totals.items()}
        loss = sum(terms[k][0] * v for k, v in last.items()) if last else float("nan")
        seconds = time.perf_counter() - start
        logger.debug("%s model: %d epochs on %d records in %.2f s, loss %.4f", name, epochs, img.shape[0],
                     seconds, loss)
        return {"loss": float(loss), **last, "epochs": float(epochs), "seconds": seconds}

    # ----------------------------------------------------------------- training
    def start_shared_round(self) -> float:
        """Set the shared model's learning rate for its next round of training and count that round.

        Round r (0-based, counted in the optimiser's state, so snapshots keep it) trains at
        ``lr * shared_lr_decay ** r`` (``lr`` with ``constant_shared_lr``). ``train_shared`` calls it; code
        that trains the shared model by other means (``site_batch``) calls it once per round first. Returns
        the rate set.
        """
        group = self.shared_opt.param_groups[0]
        done = int(group.get("shared_rounds", 0))
        decay = 1.0 if self.constant_shared_lr else self.config.shared_lr_decay
        group["lr"] = self.config.lr * decay ** done
        group["shared_rounds"] = done + 1
        return float(group["lr"])

    def train_personal(self, split: Records, *, epochs: int | None = None, anchors: np.ndarray | None = None,
                       progress: bool = False) -> dict[str, float]:
        """PFMH step 1: train the personal model with L_sim + L_q
        [+ w_anchor L_con(anchors) when ``anchors`` are given and ``weights.personal_contrastive`` > 0].

        Args:
            anchors: (C, b) fixed class centres to pull the codes towards (``local_round.personal_anchors``).

        Returns:
            Mean loss terms over the last epoch (NaN when ``epochs`` is 0), epochs and seconds.
        """
        w = self.config.weights
        terms: dict[str, _Term] = {"similarity": (w.similarity, lambda h, i, y: similarity_loss(h, y)),
                                   "quantization": (w.quantization, lambda h, i, y: quantization_loss(h))}
        if anchors is not None and w.personal_contrastive > 0:
            p = _as_tensor(anchors).to(self.device)
            if p.shape != (split.labels.shape[1], self.config.bits):
                raise DataError(f"personal anchors are {tuple(p.shape)}, expected "
                                f"({split.labels.shape[1]}, {self.config.bits})")
            terms["anchor"] = (w.personal_contrastive, _contrastive_term(p, None, self.config.temperature))
        n = self.config.personal_epochs if epochs is None else epochs
        return self._run("personal", self.personal, self.personal_opt, split, n, progress, terms)

    def train_shared(self, split: Records, *, prototypes: np.ndarray | None,
                     global_prototypes: np.ndarray | None, class_mask: np.ndarray | None = None,
                     epochs: int | None = None, distill: bool = True,
                     progress: bool = False) -> dict[str, float]:
        """PFMH step 4: train the shared model.

        Loss = w_sim L_sim + w_q L_q [+ w_kd L_kd(shared, frozen personal) if ``distill``]
        + w_con (L_con(local completed prototypes) + L_con(global prototypes)) for each prototype
        set given; with both None (FedAvg / local-only baselines) there is no contrastive term.

        Args:
            split: local training records.
            prototypes: the site's completed prototypes (C, b), or None.
            global_prototypes: the broadcast global prototypes (C, b), or None.
            class_mask: (C,) bool, classes usable as contrastive candidates; None means all.
            epochs: overrides ``config.shared_epochs``.
            distill: add the distillation term from the personal model.
            progress: show a tqdm bar.

        Returns:
            Mean loss terms over the last epoch, epochs and seconds.
        """
        w, tau = self.config.weights, self.config.temperature
        terms: dict[str, _Term] = {"similarity": (w.similarity, lambda h, i, y: similarity_loss(h, y)),
                       "quantization": (w.quantization, lambda h, i, y: quantization_loss(h))}
        if distill:
            teacher = torch.from_numpy(self.encode(split, model="personal")).to(self.device)
            terms["distillation"] = (w.distillation, lambda h, i, y: distillation_loss(h, teacher[i]))
        num_classes = split.labels.shape[1]
        mask = None if class_mask is None else torch.as_tensor(np.asarray(class_mask, dtype=bool), device=self.device)
        if mask is not None and mask.shape != (num_classes,):
            raise DataError(f"class_mask has shape {tuple(mask.shape)}, expected ({num_classes},)")
        for key, protos in (("contrastive_local", prototypes), ("contrastive_global", global_prototypes)):
            if protos is not None:
                p = _as_tensor(protos).to(self.device)
                if p.shape != (num_classes, self.config.bits):
                    raise DataError(f"{key} prototypes are {tuple(p.shape)}, expected "
                                    f"({num_classes}, {self.config.bits})")
                terms[key] = (w.contrastive_weight, _contrastive_term(p, mask, tau))
        n = self.config.shared_epochs if epochs is None else epochs
        self.start_shared_round()
        return self._run("shared", self.shared, self.shared_opt, split, n, progress, terms)

    # ----------------------------------------------------------------- codes
    def encode(self, data: Records | tuple[np.ndarray, np.ndarray], *,
               model: Literal["shared", "personal"] = "shared", batch_size: int = 4096,
               present: np.ndarray | None = None) -> np.ndarray:
        """Continuous codes in eval mode without gradients.

        ``present`` marks the modalities each record has (see ``HashNet.forward``); None: both.

        Shape:
            - data: a split (image (n, image_dim), text (n, text_dim)) or the tuple (image, text)
            - present: (n, 2) bool (image, text), or None
            - output: (n, bits) float32
        """
        img, txt = data if isinstance(data, tuple) else (data.image, data.text)
        net = {"shared": self.shared, "personal": self.personal}.get(model)
        if net is None:
            raise OptionError(f"model={model!r} is invalid: use 'shared' or 'personal'")
        image, text = _as_tensor(img), _as_tensor(txt)
        mask = None if present is None else _as_tensor(present)
        if mask is not None and tuple(mask.shape) != (image.shape[0], 2):
            raise DataError(f"present has shape {tuple(mask.shape)}, expected ({image.shape[0]}, 2)")
        net.eval()
        with torch.no_grad():
            out = [net(image[s:s + batch_size].to(self.device), text[s:s + batch_size].to(self.device),
                       present=None if mask is None else mask[s:s + batch_size].to(self.device))
                   for s in range(0, image.shape[0], batch_size)]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.config.bits), np.float32)

    def binary_codes(self, data: Records | tuple[np.ndarray, np.ndarray], *,
                     model: Literal["shared", "personal"] = "shared", batch_size: int = 4096) -> np.ndarray:
        """sign(codes) with sign(0) = +1; shape (n, bits) int8 of +-1."""
        return np.where(self.encode(data, model=model, batch_size=batch_size) >= 0, 1, -1).astype(np.int8)

    def prototype_statistics(self, split: Records) -> PrototypeStats:
        """PFMH step 2: per-class sums of the PERSONAL model's unit codes, and label counts."""
        return PrototypeStats(*class_statistics(self.encode(split, model="personal"), split.labels))

    # ----------------------------------------------------------------- state
    def shared_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the shared model's state dict (for FedAvg)."""
        return {k: v.detach().clone() for k, v in self.shared.state_dict().items()}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the shared model's weights (e.g. by the FedAvg result); its Adam moments are kept.

        Raises:
            StateMismatch: keys or shapes differ.
        """
        try:
            self.shared.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise StateMismatch(f"shared state does not fit this model (bits={self.config.bits}): "
                                f"{exc}") from exc

    def state_dict(self) -> dict:
        """Both models, both optimisers, the round counter and the generator state."""
        return {"format": "pfmh-site-trainer/1", "round": self.round, "rng": self.generator.get_state(),
                "config": asdict(self.config), "personal": self.personal.state_dict(),
                "shared": self.shared.state_dict(), "personal_opt": self.personal_opt.state_dict(),
                "shared_opt": self.shared_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            StateMismatch: wrong format, or the snapshot was made with another config.
        """
        if state.get("format") != "pfmh-site-trainer/1":
            raise StateMismatch(f"snapshot format {state.get('format')!r} is not 'pfmh-site-trainer/1'")
        # A snapshot from before modality_dropout / shared_lr_decay / weights.personal_contrastive existed
        # trained without them (0 / 1 / 0).
        saved = {"modality_dropout": 0.0, "shared_lr_decay": 1.0, **(state.get("config") or {})}
        if isinstance(saved.get("weights"), dict):
            saved["weights"] = {"personal_contrastive": 0.0, **saved["weights"]}
        if saved != asdict(self.config):
            raise StateMismatch(f"snapshot config {state.get('config')} differs from {asdict(self.config)}; "
                                "build the trainer with the snapshot's TrainConfig")
        try:
            self.personal.load_state_dict(state["personal"])
            self.shared.load_state_dict(state["shared"])
        except RuntimeError as exc:
            raise StateMismatch(f"snapshot weights do not fit this model: {exc}") from exc
        self.personal_opt.load_state_dict(state["personal_opt"])
        self.shared_opt.load_state_dict(state["shared_opt"])
        self.generator.set_state(state["rng"])
        self.round = int(state["round"])

    def save_snapshot(self, path: str | os.PathLike[str], extra: dict | None = None) -> None:
        """Write :meth:`state_dict` atomically (see :mod:`pfmh_model.atomic_file`).

        ``extra`` (plain values and tensors) is stored in the same file, so a caller's own
        progress can never disagree with the weights after a crash.
        """
        with atomic_path(path) as tmp:
            torch.save({**self.state_dict(), "extra": extra or {}}, tmp)

    def load_snapshot(self, path: str | os.PathLike[str]) -> dict:
        """Load a snapshot written by :meth:`save_snapshot` (``torch.load(weights_only=True)``).

        Returns:
            the ``extra`` dict it was saved with (empty if none).
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        return dict(state.get("extra") or {})


def flatten_state(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Concatenate the floating-point entries of a state dict, in key order, as float64.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are skipped: they stay local, which is
    harmless because BatchNorm with a momentum never reads them.

    Shape:
        - output: (P,) float64, P = total size of the floating-point entries
    """
    parts = [v.detach().reshape(-1).double().cpu() for v in state.values() if v.is_floating_point()]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def unflatten_state(vec: np.ndarray, like_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state`: floats from ``vec``, other entries copied from ``like_state``.

    Raises:
        StateMismatch: ``vec`` has the wrong length.
    """
    flat = np.asarray(vec, dtype=np.float64).ravel()
    need = sum(v.numel() for v in like_state.values() if v.is_floating_point())
    if flat.size != need:
        raise StateMismatch(f"flat state has {flat.size} values, the model needs {need}; same bits/width?")
    out, pos = {}, 0
    for key, like in like_state.items():
        if like.is_floating_point():
            chunk = torch.from_numpy(flat[pos:pos + like.numel()].copy())
            out[key] = chunk.reshape(like.shape).to(device=like.device, dtype=like.dtype)
            pos += like.numel()
        else:
            out[key] = like.detach().clone()
    return out
