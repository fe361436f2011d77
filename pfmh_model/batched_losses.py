"""The PFMH losses of :mod:`pfmh_model.losses` for a sites x records batch with padded rows.

Each function takes the codes of ``a`` sites at once, padded to ``B`` rows, and a row mask; it
returns one loss per site, equal (up to float rounding) to the unbatched function on that site's
valid rows alone. Padded rows contribute nothing to any value or gradient. ``tests/pfmh_model/
test_batched_losses.py`` checks each against its counterpart in ``losses.py``.

Shape (every function):
    - codes, teacher: (a, B, b) float; labels: (a, B, C) {0, 1}; prototypes: (a, C, b)
    - rows: (a, B) float, 1 for a valid record and 0 for padding; count: (a,) float, its row sums
    - output: (a,) float, one loss per site
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from pfmh_model.errors import OptionError
from pfmh_model.losses import _EPS, _NEG

__all__ = ["similarity_losses", "quantization_losses", "distillation_losses", "prototype_contrastive_losses"]


def similarity_losses(codes: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
    """L_sim per site: mean over its n x n valid pairs of (cos(h_i, h_j) - S_ij)^2."""
    hn = F.normalize(codes, dim=2, eps=_EPS)
    y = labels.to(codes.dtype)
    affinity = 2.0 * torch.sigmoid(torch.bmm(y, y.transpose(1, 2))) - 1.0
    pairs = rows.unsqueeze(2) * rows.unsqueeze(1)
    err = torch.bmm(hn, hn.transpose(1, 2)) - affinity
    return (err * err * pairs).sum(dim=(1, 2)) / (count * count)


def quantization_losses(codes: torch.Tensor, rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """L_q per site: mean over its valid entries of (h - sign(h))^2, sign(h) detached."""
    return _masked_mse(codes, torch.sign(codes).detach(), rows, count)


def distillation_losses(codes: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor,
                        count: torch.Tensor) -> torch.Tensor:
    """L_kd per site: mean over its valid entries of (h - teacher)^2, the teacher detached."""
    return _masked_mse(codes, teacher.detach(), rows, count)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    err = a - b
    return (err * err * rows.unsqueeze(2)).sum(dim=(1, 2)) / (count * a.shape[2])


def prototype_contrastive_losses(codes: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                                 rows: torch.Tensor, *, class_mask: torch.Tensor | None = None,
                                 temperature: float = 0.07) -> torch.Tensor:
    """L_con per site (``losses.prototype_contrastive_loss``); 0 for a site with no positive record.

    Args:
        class_mask: (a, C) bool candidate classes per site; ``None`` means all.
    """
    if not temperature > 0:
        raise OptionError(f"temperature={temperature!r} is invalid: need temperature > 0 (PFMH uses 0.07)")
    z = F.normalize(codes, dim=2, eps=_EPS)
    p = F.normalize(prototypes.detach().to(codes.dtype), dim=2, eps=_EPS)
    logits = torch.bmm(z, p.transpose(1, 2)) / temperature
    has_label = labels > 0
    if class_mask is None:
        positive, negative = has_label, ~has_label
    else:
        candidate = class_mask.to(torch.bool).unsqueeze(1)
        positive, negative = has_label & candidate, ~has_label & candidate
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, _NEG), dim=2, keepdim=True)
    per_pair = torch.logaddexp(logits, neg_lse) - logits
    pos = positive.to(codes.dtype)
    n_pos = pos.sum(dim=2)
    included = (n_pos > 0).to(codes.dtype) * rows
    per_record = (per_pair * pos).sum(dim=2) / n_pos.clamp(min=1.0)
    return (per_record * included).sum(dim=1) / included.sum(dim=1).clamp(min=1.0)
