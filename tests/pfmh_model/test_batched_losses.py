"""Each batched, padded loss equals its ``losses.py`` counterpart on every site's valid rows alone."""
from __future__ import annotations

import torch

from pfmh_model import batched_losses as batched
from pfmh_model import losses

SIZES = (5, 2, 7)  # valid rows per site; padded to 7


def _batch(seed: int):  # noqa: ANN202
    gen = torch.Generator().manual_seed(seed)
    a, pad, bits, classes = len(SIZES), max(SIZES), 8, 4
    codes = (torch.rand(a, pad, bits, generator=gen) * 2 - 1).requires_grad_()
    teacher = torch.rand(a, pad, bits, generator=gen) * 2 - 1
    labels = (torch.rand(a, pad, classes, generator=gen) > 0.6).float()
    labels[1, 0] = 0.0  # a record with no label (left out of L_con)
    protos = torch.randn(a, classes, bits, generator=gen)
    mask = torch.tensor([[True, True, False, True], [True] * 4, [False, True, True, True]])
    count = torch.tensor(SIZES, dtype=torch.float32)
    rows = (torch.arange(pad).unsqueeze(0) < count.unsqueeze(1)).float()
    return codes, teacher, labels, protos, mask, rows, count


def test_batched_losses_equal_per_site_losses_and_gradients() -> None:
    codes, teacher, labels, protos, mask, rows, count = _batch(0)
    together = {
        "sim": batched.similarity_losses(codes, labels, rows, count),
        "q": batched.quantization_losses(codes, rows, count),
        "kd": batched.distillation_losses(codes, teacher, rows, count),
        "con": batched.prototype_contrastive_losses(codes, labels, protos, rows, class_mask=mask, temperature=0.1),
    }
    grads = torch.autograd.grad(sum(v.sum() for v in together.values()), codes)[0]
    for k, n in enumerate(SIZES):
        h = codes[k, :n].detach().requires_grad_()
        alone = {
            "sim": losses.similarity_loss(h, labels[k, :n]),
            "q": losses.quantization_loss(h),
            "kd": losses.distillation_loss(h, teacher[k, :n]),
            "con": losses.prototype_contrastive_loss(h, labels[k, :n], protos[k], class_mask=mask[k],
                                                     temperature=0.1),
        }
        for key, value in alone.items():
            torch.testing.assert_close(together[key][k], value, rtol=1e-5, atol=1e-6, msg=key)
        (grad,) = torch.autograd.grad(sum(alone.values()), h)
        torch.testing.assert_close(grads[k, :n], grad, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(grads[k, n:]) == 0  # padding gets no gradient


def test_contrastive_is_zero_for_a_site_without_positive_records() -> None:
    codes, _, labels, protos, _, rows, _ = _batch(1)
    labels[0] = 0.0
    out = batched.prototype_contrastive_losses(codes, labels, protos, rows)
    assert out[0] == 0.0 and out[1] > 0.0
