"""FedHAP (Yang et al., TPDS 2024), the comparison method: one global +-1 hash code per class plus a discriminator.

Notation: n records, b bits, C classes; h (n, b) continuous codes in (-1, 1); Y (n, C) multi-hot
labels; P (C, b) global prototypical hash codes in {-1, +1}. One round (our reading; docs/FEDHAP.md):

1. Each site trains its shared :class:`~pfmh_model.network.HashNet` against the broadcast P with
   L = w_p L_proto + w_sim L_sim + w_q L_q + w_adv L_adv, while a local discriminator D (b -> 1)
   learns to tell prototype codes (real) from the site's codes (fake).
   - L_proto (central-similarity form): record i's target is t_i = mean of P_c over its labels (P_c
     itself for one label; a bit where its labels' codes disagree gets target 0), and
     L_proto = mean_{i, k} BCE((1 + h_ik) / 2, (1 + t_ik) / 2). It only pulls: the classes are
     kept apart by P itself (distinct Hadamard codes at round 0). A likelihood form that also pushed
     codes away from other classes' codes did worse on Wiki (docs/FEDHAP.md).
   - L_adv = BCE(D(h), real): the hash net tries to fool D (non-saturating GAN loss).
   - L_sim, L_q: the shared PFMH terms (:mod:`pfmh_model.losses`).
2. Upload, through the same vector as PFMH's prototype statistics: sums_c = sum_{Y_ic=1} sign(h_i)
   (a per-bit vote), count_c = #{Y_ic = 1}; plus n_k * weights and n_k (FedAvg) when the model is shared.
3. Server: P_c = sign(total sums_c) (bitwise majority vote); a tied bit or a class no site holds
   keeps last round's code, or at round 0 the Hadamard centre (``fedhap_votes.initial_hash_codes``).

Options are in ``fedhap_config``; the vote arithmetic (site and server) in ``fedhap_votes``.

References:
    Yang, Xu, Liu, Ding, "FedHAP: Federated Hashing with Global Prototypes for Cross-silo Retrieval",
    arXiv 2207.05525 / IEEE TPDS 35(4), 2024. Goodfellow et al., "Generative Adversarial Nets",
    NeurIPS 2014 (non-saturating generator loss). Yuan et al., "Central Similarity Quantization for
    Efficient Image and Video Retrieval", CVPR 2020, Eq. 3-4 (the form of L_proto).
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pfmh_model.errors import DataError, OptionError, StateMismatch
from pfmh_model.fedhap_config import FedHAPConfig
from pfmh_model.fedhap_votes import code_statistics
from pfmh_model.losses import quantization_loss, similarity_loss
from pfmh_model.prototypes import PrototypeStats
from pfmh_model.training import Records, SiteTrainer, TrainConfig

__all__ = ["Discriminator", "prototype_loss", "discriminator_loss", "adversarial_loss", "real_codes",
           "FedHAPTrainer"]

logger = logging.getLogger(__name__)

_EPS = 1e-6


class Discriminator(nn.Module):
    """D: b -> 1, a two-layer MLP (Linear, LeakyReLU 0.2, Linear) giving the logit that a code is a prototype.

    Args:
        bits: code length b (>= 1).
        hidden: hidden width (>= 1).
        generator: source of the initial weights; ``None`` means a fresh generator seeded with 0.

    Raises:
        OptionError: ``bits`` or ``hidden`` is not a positive integer.
    """

    def __init__(self, bits: int, *, hidden: int = 64, generator: torch.Generator | None = None) -> None:
        super().__init__()
        for flag, value in (("bits", bits), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"Discriminator {flag}={value!r} is invalid: need an integer >= 1")
        self.bits = bits
        first, last = nn.Linear(bits, hidden, device="meta"), nn.Linear(hidden, 1, device="meta")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for layer in (first, last):  # built on "meta": no draw from torch's global RNG
            layer.to_empty(device="cpu")
            bound = 1.0 / float(np.sqrt(layer.in_features))
            nn.init.uniform_(layer.weight, -bound, bound, generator=gen)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        self.net = nn.Sequential(first, nn.LeakyReLU(0.2), last)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits (real = prototype). Shape: codes (m, b) float -> (m,) float."""
        return self.net(codes).squeeze(-1)


def prototype_loss(codes: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, *,
                   per_record: bool = False) -> torch.Tensor:
    """L_proto: bitwise BCE between (1 + h) / 2 and the record's target (1 + t) / 2 (module docstring).

    (1 + h) / 2 is clamped to [1e-6, 1 - 1e-6]. Records without labels are left out; if none has
    one the loss is 0 (still attached to the graph). Prototypes are constants.

    ``per_record`` returns each record's mean over its bits (0 for a record without labels) instead of
    the mean over labelled records: DP-SGD needs it, since that mean couples the records of a batch.

    Shape:
        - codes: (n, b) float in (-1, 1); labels: (n, C) {0, 1}; prototypes: (C, b) +-1
        - output: () scalar, or (n,) with ``per_record``
    """
    pos = (labels > 0).to(codes.dtype)
    n_pos = pos.sum(dim=1, keepdim=True)
    has = n_pos.squeeze(1) > 0
    target = (1.0 + (pos @ prototypes.detach().to(codes.dtype)) / n_pos.clamp(min=1.0)) / 2.0
    q = ((1.0 + codes) / 2.0).clamp(_EPS, 1.0 - _EPS)
    bce = -(target * torch.log(q) + (1.0 - target) * torch.log1p(-q))
    if per_record:
        return bce.mean(dim=1) * has.to(codes.dtype)
    if not bool(has.any()):
        return codes.sum() * 0.0
    return bce[has].mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss BCE(D(real), 1) + BCE(D(fake), 0), each a mean; an empty side contributes 0.

    Shape:
        - real_logits: (m,) float; fake_logits: (n,) float; output: () scalar
    """
    total = fake_logits.sum() * 0.0
    if real_logits.numel():
        total = total + F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    if fake_logits.numel():
        total = total + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return total


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The hash net's non-saturating loss BCE(D(h), 1) = mean softplus(-D(h)).

    Shape:
        - fake_logits: (n,) float; output: () scalar
    """
    return F.softplus(-fake_logits).mean()


def real_codes(labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """D's real samples: the prototype of every (record, label) pair, so classes weigh as in the batch.

    Shape:
        - labels: (n, C) {0, 1}; prototypes: (C, b); output: (m, b), m = number of ones in ``labels``
    """
    return prototypes[torch.nonzero(labels > 0, as_tuple=True)[1]]


class FedHAPTrainer(SiteTrainer):
    """A :class:`SiteTrainer` whose shared model trains the FedHAP way, with a local discriminator.

    The discriminator and its Adam optimiser never leave the site; snapshots include them. The
    inherited personal model is unused.

    Args:
        config: the common training options (bits, lr, batch size, epochs, seed).
        fedhap: FedHAP's knobs.
        **kwargs: passed to :class:`SiteTrainer` (image_dim, text_dim, num_classes, init_seed, batch_seed).
    """

    def __init__(self, config: TrainConfig, *, fedhap: FedHAPConfig | None = None, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.fedhap = fedhap if fedhap is not None else FedHAPConfig()
        init = kwargs.get("init_seed")
        gen = torch.Generator().manual_seed((config.seed if init is None else init) + 1)
        self.discriminator = Discriminator(config.bits, hidden=self.fedhap.disc_hidden, generator=gen)
        self.disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.fedhap.disc_lr, betas=(0.5, 0.999))

    def train_fedhap(self, split: Records, *, prototypes: np.ndarray, epochs: int | None = None) -> dict[str, float]:
        """Local FedHAP training: per batch one D step, then one hash-net step (module docstring, step 1).

        Args:
            split: local training records.
            prototypes: the broadcast global codes P, (C, b) of +-1.
            epochs: default personal_epochs + shared_epochs (the compute of the other methods).

        Returns:
            Mean loss terms over the last epoch (NaN if not trained), epochs and seconds.

        Raises:
            DataError: ``prototypes`` is not (C, b).
        """
        img, txt, lab = self._tensors(split)
        protos = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
        if protos.shape != (lab.shape[1], self.config.bits):
            raise DataError(f"global codes are {tuple(protos.shape)}, expected ({lab.shape[1]}, {self.config.bits})")
        n_epochs = self.config.personal_epochs + self.config.shared_epochs if epochs is None else epochs
        if img.shape[0] < 2:
            logger.warning("fedhap model not trained: the split has %d record(s), BatchNorm needs 2", img.shape[0])
            n_epochs = 0
        w = self.fedhap
        names = ("prototype", "similarity", "quantization", "adversarial", "discriminator")
        last = dict.fromkeys(names, float("nan"))
        self.shared.train()
        for _ in range(n_epochs):
            totals, steps = dict.fromkeys(names, 0.0), 0
            for idx in self._batches(img.shape[0]):
                h, y = self.shared(img[idx], txt[idx], generator=self.generator), lab[idx]
                d_loss = discriminator_loss(self.discriminator(real_codes(y, protos)), self.discriminator(h.detach()))
                self._step(self.discriminator, self.disc_opt, d_loss)
                parts = {"prototype": prototype_loss(h, y, protos),
                         "similarity": similarity_loss(h, y), "quantization": quantization_loss(h),
                         "adversarial": adversarial_loss(self.discriminator(h))}
                self._step(self.shared, self.shared_opt, sum(getattr(w, k) * v for k, v in parts.items()))
                for k, v in {**parts, "discriminator": d_loss}.items():
                    totals[k] += float(v.detach())
                steps += 1
            last = {k: v / steps for k, v in totals.items()}
        loss = sum(getattr(w, k) * last[k] for k in names[:4])
        return {"loss": float(loss), **last, "epochs": float(n_epochs)}

    def code_statistics(self, split: Records) -> PrototypeStats:
        """Step 2: per-class votes of the shared model's binary codes, and label counts."""
        return code_statistics(self.encode(split, model="shared"), split.labels)

    def state_dict(self) -> dict:
        """:meth:`SiteTrainer.state_dict` plus the discriminator, its optimiser and the FedHAP knobs."""
        return {**super().state_dict(), "fedhap": asdict(self.fedhap),
                "discriminator": self.discriminator.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            StateMismatch: not a FedHAP snapshot, or made with other FedHAP knobs (or as in the base class).
        """
        if state.get("fedhap") != asdict(self.fedhap):
            raise StateMismatch(f"snapshot FedHAP options {state.get('fedhap')} differ from {asdict(self.fedhap)}; "
                                "build the trainer with the snapshot's FedHAPConfig")
        super().load_state_dict(state)
        self.discriminator.load_state_dict(state["discriminator"])
        self.disc_opt.load_state_dict(state["disc_opt"])
