"""The hyper-parameters of local training, typed and checked without torch.

The coordinator validates a federation's ``[train]`` table with these classes before it would
ever train, so this module imports only the standard library and ``pfmh_model.errors``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from pfmh_model.errors import OptionError

__all__ = ["AUTO_WEIGHT", "CONTRASTIVE_WITH_DP", "CONTRASTIVE_WITHOUT_DP", "LossWeights", "TrainConfig"]

# A plan value for ``LossWeights.contrastive``, replaced by ``TrainConfig.resolved`` once it is known whether
# the federation runs DP: nothing that trains sees it.
AUTO_WEIGHT = "auto"
# What ``auto`` stands for (issue #14, fourth pass; docs/BENCHMARKS.md "A stronger pull towards the
# prototypes"). Without DP 3 lifted global mAP on 16 of 18 Wiki runs. With DP the global prototypes the pull
# aims at carry the noise, and 3 cost 0.025-0.045 per-site at epsilon 1 and 0.024-0.035 global at epsilon 4
# against 1 (bench/bench_dp_utility.py, two seeds).
CONTRASTIVE_WITHOUT_DP = 3.0
CONTRASTIVE_WITH_DP = 1.0


@dataclass(frozen=True)
class LossWeights:
    """Weights of the PFMH loss terms (the total is their weighted sum).

    Reference: similarity 0.01, quantization 0.001, distillation 0.001, contrastive 1, Adam lr
    1e-5. Ours (tuned on Wiki, 32 bits, Adam lr 1e-3): similarity 1 (it carries the pairwise
    label structure; at 0.01 it was swamped by L_con: 0.615 vs 0.643 query mAP after one
    centralised round), quantization 0.1 (1 gave the same mAP, 0.01 slightly less), distillation
    0.01 (1 drags the shared model towards each site's personal code space: federated global mAP
    fell from 0.74 to 0.58), contrastive 3 per prototype set, and personal_contrastive 0.3 (the
    reference trains the personal model with L_sim + L_q only).

    contrastive was 1 until the fourth issue-14 pass. At 3, over 3 seeds of six Wiki settings, global mAP
    rose on 16 of 18 runs, by about 0.03 on the skewed ones (Dirichlet alpha 0.1: 0.766 -> 0.800; tf-idf:
    0.813 -> 0.843; tf-idf at 128 bits: 0.830 -> 0.856, falling by 0.002 after round 10, not 0.024); per-site mAP
    fell by at most 0.003 except at alpha 0.5 (0.010-0.012 lower on every seed). Under DP the prototypes
    are noisy and 1 did better (per-site -0.025 to -0.045 at epsilon 1 with 3, two seeds). So the default
    is ``"auto"``: 3 without DP, 1 with DP (``CONTRASTIVE_WITHOUT_DP`` / ``CONTRASTIVE_WITH_DP``), chosen by
    ``TrainConfig.resolved`` where the plan is loaded. docs/BENCHMARKS.md, "A stronger pull towards the
    prototypes".

    Raises:
        OptionError: a weight is negative or not finite.
    """

    similarity: float = 1.0
    quantization: float = 0.1
    distillation: float = 0.01
    contrastive: float | str = AUTO_WEIGHT
    # The personal model's pull towards fixed class centres, the round-0 Hadamard prototypes (0: L_sim +
    # L_q only, as the paper). It anchors every site's personal code space, whose codes make the
    # uploaded prototypes, to one frame (``local_round.personal_anchors``; docs/BENCHMARKS.md
    # "personal anchoring").
    personal_contrastive: float = 0.3

    def __post_init__(self) -> None:
        for name in ("similarity", "quantization", "distillation", "contrastive", "personal_contrastive"):
            value = getattr(self, name)
            if name == "contrastive" and value == AUTO_WEIGHT:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < float("inf"):
                also = f' or "{AUTO_WEIGHT}"' if name == "contrastive" else ""
                raise OptionError(f"LossWeights.{name}={value!r} is invalid: need a finite number >= 0{also}")

    @property
    def contrastive_weight(self) -> float:
        """``contrastive`` as the number training uses; ``"auto"`` must have been resolved (``resolved``)."""
        if isinstance(self.contrastive, str):
            raise OptionError('LossWeights.contrastive is still "auto": resolve the config first '
                              "(TrainConfig.resolved(dp=...))")
        return float(self.contrastive)

    def resolved(self, *, dp: bool) -> LossWeights:
        """These weights with ``contrastive = "auto"`` replaced by the weight for a federation with or without DP."""
        if self.contrastive != AUTO_WEIGHT:
            return self
        return replace(self, contrastive=CONTRASTIVE_WITH_DP if dp else CONTRASTIVE_WITHOUT_DP)



@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of local training (defaults tuned on Wiki; PFMH.md lists the reference's).

    Changed from the reference (Adam lr 1e-5, branch width 2048, loss weights 0.01/0.001/0.001/1;
    see :class:`LossWeights` for ours): lr 1e-3, since at 1e-5 the codes barely move within a
    20-round budget (3e-4 and 3e-3 both scored lower on Wiki); hidden 256, which matched 1024 in
    mAP on Wiki (0.699 vs 0.698 after three centralised rounds) at about 1.4x the speed.
    Epochs, batch 64, weight decay 1e-6, grad clip 1.0 and temperature 0.07 are the reference's.

    Raises:
        OptionError: a field is out of range (the message names it). Also a ``ValueError``.
    """

    bits: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 64
    personal_epochs: int = 10
    shared_epochs: int = 10
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.07
    grad_clip: float = 1.0
    width: int = 128
    hidden: int = 256
    dropout: float = 0.1
    seed: int = 0
    # Fraction of training records that have one modality (image or text, evenly) hidden by closing
    # its gate, so codes stay usable when a query lacks one. 0 draws nothing (training unchanged).
    modality_dropout: float = 0.0
    # The shared model's learning rate in its r-th round of training at a site (r = 0, 1, ...) is
    # lr * shared_lr_decay ** r (``SiteTrainer.start_shared_round``); 1 keeps it constant. Only the shared
    # model: the personal model, whose codes make the uploaded statistics, is not affected, so under DP
    # with prototype sharing it changes nothing that is uploaded. It applies where the shared model is
    # trained by ``train_shared`` or the batched path (PFMH, FedAvg, local); FedHAP's own loop, DP-SGD of
    # a federated shared model and PFMH's federated shared model (``methods.shared_lr_is_constant``) keep a
    # constant rate. 0.8 (issue #14): with a constant rate
    # the per-site mAP on Wiki's reference partition fell from 0.806 at round 10 to 0.797 at round 20 and
    # peaked in the first rounds; with 0.8 it is flat from round 10 on (docs/BENCHMARKS.md).
    shared_lr_decay: float = 0.8

    def __post_init__(self) -> None:
        ints = (("bits", 8), ("batch_size", 2), ("personal_epochs", 0), ("shared_epochs", 0), ("width", 1),
                ("hidden", 1), ("seed", 0))
        for name, low in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(f"TrainConfig.{name}={value!r} is invalid: need an integer >= {low}")
        for name in ("lr", "temperature", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) < float("inf"):
                raise OptionError(f"TrainConfig.{name}={value!r} is invalid: need a finite number > 0")
        if not isinstance(self.weight_decay, (int, float)) or not 0.0 <= self.weight_decay < float("inf"):
            raise OptionError(f"TrainConfig.weight_decay={self.weight_decay!r} is invalid: need a finite "
                              "number >= 0")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise OptionError(f"TrainConfig.dropout={self.dropout!r} is invalid: need 0 <= dropout < 1")
        if not isinstance(self.modality_dropout, (int, float)) or not 0.0 <= self.modality_dropout <= 1.0:
            raise OptionError(f"TrainConfig.modality_dropout={self.modality_dropout!r} is invalid: need 0..1")
        if isinstance(self.shared_lr_decay, bool) or not isinstance(self.shared_lr_decay, (int, float)) \
                or not 0.0 < self.shared_lr_decay <= 1.0:
            raise OptionError(f"TrainConfig.shared_lr_decay={self.shared_lr_decay!r} is invalid: need 0 < decay <= 1")
        if not isinstance(self.weights, LossWeights):
            raise OptionError(f"TrainConfig.weights is {type(self.weights).__name__}: need LossWeights")

    def resolved(self, *, dp: bool) -> TrainConfig:
        """This config with its ``auto`` values replaced for a federation with (``dp``) or without DP.

        The plan loaders call it (``federation.plan.FederationSettings``, ``pfmh_model.federation.FederationConfig``,
        ``simulate_cli``); a ``SiteTrainer`` built from an unresolved config resolves it without DP.
        """
        weights = self.weights.resolved(dp=dp)
        return self if weights is self.weights else replace(self, weights=weights)

