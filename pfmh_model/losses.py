"""PFMH training losses: pure, vectorised, multi-label aware functions of a mini-batch.

Notation: n records, b bits, C classes; h (n, b) continuous codes in (-1, 1); Y (n, C) multi-hot
labels; P (C, b) class prototypes. MSE is the mean over all entries.

- Label affinity  S = 2 sigmoid(Y Y^T) - 1   (0 shared labels -> 0, k shared labels -> 2 sigmoid(k) - 1).
- Similarity      L_sim = MSE(Hn Hn^T, S), Hn = rows of h scaled to unit L2 norm.
- Quantisation    L_q = MSE(h, sign(h)), sign(h) a constant.
- Distillation    L_kd = MSE(h_student, h_teacher), teacher a constant.
- Prototype contrastive L_con: see :func:`prototype_contrastive_loss`.

Unlike the reference code, L_con is computed on the shared model's own codes, so its gradient
reaches the shared model (the reference fed it the personal model's neck features).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from pfmh_model.errors import OptionError
from pfmh_model.train_config import LossWeights

__all__ = ["LossWeights", "label_affinity", "similarity_loss", "quantization_loss", "distillation_loss",
           "prototype_contrastive_loss"]

_EPS = 1e-8
_NEG = -1e9  # finite "minus infinity" for masked logits: keeps gradients free of NaN


def label_affinity(labels: torch.Tensor) -> torch.Tensor:
    """Pairwise label affinity S = 2 sigmoid(Y Y^T) - 1.

    Shape:
        - labels: (n, C) {0, 1}, any float dtype
        - output: (n, n) in [0, 1)
    """
    y = labels.float()
    return 2.0 * torch.sigmoid(y @ y.T) - 1.0


def similarity_loss(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_sim = MSE(Hn Hn^T, S): cosine similarity of codes should match the label affinity.

    Rows are normalised with an epsilon, so an all-zero code gives cosine 0, not NaN.

    Shape:
        - codes: (n, b) float
        - labels: (n, C) {0, 1}
        - output: () scalar
    """
    hn = F.normalize(codes, dim=1, eps=_EPS)
    return F.mse_loss(hn @ hn.T, label_affinity(labels).to(codes.dtype))


def quantization_loss_per_record(codes: torch.Tensor) -> torch.Tensor:
    """Each record's L_q: mean over its b bits of (h - sign(h))^2; shape (n, b) -> (n,)."""
    return ((codes - torch.sign(codes).detach()) ** 2).mean(dim=1)


def quantization_loss(codes: torch.Tensor) -> torch.Tensor:
    """L_q = MSE(h, sign(h)) with sign(h) detached: 0 exactly when every entry is +-1.

    Shape:
        - codes: (n, b) float
        - output: () scalar
    """
    return F.mse_loss(codes, torch.sign(codes).detach())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_kd = MSE(student, teacher) with the teacher detached (the personal model stays frozen).

    Shape:
        - student, teacher: (n, b) float
        - output: () scalar
    """
    return F.mse_loss(student, teacher.detach())


def prototype_contrastive_loss(codes: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, *,
                               class_mask: torch.Tensor | None = None,
                               temperature: float = 0.07, per_record: bool = False) -> torch.Tensor:
    """Multi-label supervised-contrastive loss between codes and class prototypes.

    With z_i = h_i / ||h_i||, p_c = P_c / ||P_c||, s_ic = z_i . p_c / tau, the candidate classes
    A = {c : class_mask_c}, positives Pos(i) = {c in A : Y_ic = 1}, negatives Neg(i) = A \\ Pos(i),
    and I = {i : |Pos(i)| > 0}::

        L_con = 1/|I| sum_{i in I} 1/|Pos(i)| sum_{c in Pos(i)}
                    -log( exp(s_ic) / (exp(s_ic) + sum_{k in Neg(i)} exp(s_ik)) )

    Each code is pulled towards the prototypes of all its labels and pushed from the prototypes of
    the classes it lacks; a record's positive classes do not compete with each other. Records with
    no positive candidate are left out; if there are none the loss is 0 (still attached to the
    graph). Gradients flow to ``codes`` only; prototypes are constants.

    Args:
        codes: the trained model's own continuous codes.
        labels: multi-hot labels.
        prototypes: class prototypes (any scale; normalised here).
        class_mask: classes allowed as candidates; ``None`` means all.
        temperature: tau > 0.
        per_record: return each record's term (0 for records without a positive candidate) instead of
            the mean over I; DP-SGD needs it, since dividing by |I| couples the records of a batch.

    Shape:
        - codes: (n, b) float; labels: (n, C) {0, 1}; prototypes: (C, b); class_mask: (C,) bool
        - output: () scalar, or (n,) with ``per_record``

    Raises:
        OptionError: temperature <= 0.

    References:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (Eq. 2, L_out);
        Zuo et al., AAAI 2025 (prototype contrastive term).
    """
    if not temperature > 0:
        raise OptionError(f"temperature={temperature!r} is invalid: need temperature > 0 (PFMH uses 0.07)")
    z = F.normalize(codes, dim=1, eps=_EPS)
    p = F.normalize(prototypes.detach().to(codes.dtype), dim=1, eps=_EPS)
    logits = (z @ p.T) / temperature
    candidate = torch.ones(p.shape[0], dtype=torch.bool, device=codes.device)
    if class_mask is not None:
        candidate = class_mask.to(torch.bool, copy=False)
    positive = (labels > 0) & candidate
    negative = ~(labels > 0) & candidate
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, _NEG), dim=1, keepdim=True)
    per_pair = torch.logaddexp(logits, neg_lse) - logits  # -log softmax over {c} U Neg(i)
    pos = positive.to(codes.dtype)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    terms = (per_pair * pos).sum(dim=1) / n_pos.clamp(min=1.0)
    if per_record:
        return terms * has_pos.to(codes.dtype)
    if not bool(has_pos.any()):
        return codes.sum() * 0.0
    return terms[has_pos].mean()
