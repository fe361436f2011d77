"""Tests of pfmh_model.losses on hand-made inputs."""
from __future__ import annotations

import math

import pytest
import torch

from pfmh_model.errors import OptionError
from pfmh_model.losses import (
    LossWeights,
    distillation_loss,
    label_affinity,
    prototype_contrastive_loss,
    quantization_loss,
    similarity_loss,
)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_label_affinity_counts_shared_labels() -> None:
    # Prepare
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Execute
    s = label_affinity(labels)
    # Assert
    one, two = 2 * _sig(1) - 1, 2 * _sig(2) - 1
    expected = torch.tensor([[one, 0.0, one], [0.0, one, one], [one, one, two]])
    torch.testing.assert_close(s, expected)


def test_similarity_loss_of_identical_codes_and_labels_has_known_value() -> None:
    # Prepare: all codes point the same way (cosine 1), all share one label (S = 2 sigmoid(1) - 1).
    codes = torch.tensor([[0.5, -0.5, 0.5], [1.0, -1.0, 1.0], [0.2, -0.2, 0.2]])
    labels = torch.tensor([[1.0, 0.0]] * 3)
    # Execute
    loss = similarity_loss(codes, labels)
    # Assert
    assert loss.item() == pytest.approx((2 - 2 * _sig(1)) ** 2, rel=1e-5)


def test_similarity_loss_is_finite_for_zero_codes() -> None:
    # Prepare
    codes = torch.zeros(3, 4, requires_grad=True)
    labels = torch.eye(3)
    # Execute
    loss = similarity_loss(codes, labels)
    loss.backward()
    # Assert: cosines are all 0; only the diagonal targets 2 sigmoid(1) - 1 are missed.
    assert loss.item() == pytest.approx(3 * (2 * _sig(1) - 1) ** 2 / 9, rel=1e-5)
    assert codes.grad is not None and bool(torch.isfinite(codes.grad).all())


def test_quantization_loss_zero_for_binary_codes_and_quarter_at_half() -> None:
    # Prepare
    binary = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    half = torch.full((2, 2), 0.5)
    # Execute / Assert
    assert float(quantization_loss(binary)) == 0.0
    assert float(quantization_loss(half)) == pytest.approx(0.25)


def test_distillation_loss_does_not_reach_the_teacher() -> None:
    # Prepare
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.ones(2, 3, requires_grad=True)
    # Execute
    loss = distillation_loss(student, teacher)
    loss.backward()
    # Assert
    assert loss.item() == pytest.approx(1.0)
    assert teacher.grad is None
    assert student.grad is not None and bool((student.grad < 0).all())


def test_contrastive_loss_lower_when_codes_sit_on_their_prototypes_than_when_swapped() -> None:
    # Prepare
    prototypes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
    labels = torch.eye(3)
    # Execute
    matched = prototype_contrastive_loss(prototypes.clone(), labels, prototypes)
    swapped = prototype_contrastive_loss(prototypes[[1, 2, 0]].clone(), labels, prototypes)
    # Assert
    assert float(matched) < 0.01
    assert float(swapped) > 10.0


def test_contrastive_loss_hand_computed_value_and_gradient_reaches_codes() -> None:
    # Prepare: one record with label 0; logits are cos / tau = [1, 0] / 0.5 = [2, 0].
    codes = torch.tensor([[2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0]])
    prototypes = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # Execute
    loss = prototype_contrastive_loss(codes, labels, prototypes, temperature=0.5)
    loss.backward()
    # Assert
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-5)
    assert codes.grad is not None and float(codes.grad.abs().sum()) > 0
    assert prototypes.grad is None


def test_contrastive_loss_positive_classes_do_not_compete() -> None:
    # Prepare: a two-label record exactly between its two prototypes, the third class far away.
    prototypes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    codes = torch.tensor([[1.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    # Execute
    loss = prototype_contrastive_loss(codes, labels, prototypes, temperature=0.07)
    # Assert: -log(e^a / (e^a + e^-a)), a = (1/sqrt 3)/0.07: about 0, no penalty from the other positive
    assert loss.item() < 1e-6


def test_contrastive_loss_class_mask_excludes_candidates() -> None:
    # Prepare
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    codes = torch.tensor([[0.0, 1.0], [0.0, -1.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([True, False, True])
    # Execute
    masked = prototype_contrastive_loss(codes, labels, prototypes, class_mask=mask)
    only_one = torch.tensor([False, True, False])
    none_left = prototype_contrastive_loss(codes, labels, prototypes, class_mask=only_one)
    none_left.backward()
    # Assert: only class 0 and 2 compete; each record's logits are equal for both -> log 2.
    assert masked.item() == pytest.approx(math.log(2), rel=1e-5)
    assert none_left.item() == 0.0
    assert codes.grad is not None and float(codes.grad.abs().sum()) == 0.0


def test_contrastive_loss_vectorised_matches_per_record_loop() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(7, 8, generator=gen)
    labels = (torch.rand(7, 4, generator=gen) < 0.4).float()
    prototypes = torch.randn(4, 8, generator=gen)
    tau = 0.2
    # Execute
    loss = prototype_contrastive_loss(codes, labels, prototypes, temperature=tau)
    # Assert: the formula of the docstring, one record and one positive at a time.
    z = torch.nn.functional.normalize(codes, dim=1)
    p = torch.nn.functional.normalize(prototypes, dim=1)
    per_record = []
    for i in range(7):
        pos = [c for c in range(4) if labels[i, c] > 0]
        neg = [c for c in range(4) if labels[i, c] == 0]
        if not pos:
            continue
        terms = []
        for c in pos:
            s = [float(z[i] @ p[k]) / tau for k in [c, *neg]]
            terms.append(-s[0] + math.log(sum(math.exp(v) for v in s)))
        per_record.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(per_record) / len(per_record), rel=1e-4)


def test_contrastive_loss_rejects_bad_temperature() -> None:
    # Execute / Assert
    with pytest.raises(OptionError, match="temperature"):
        prototype_contrastive_loss(torch.ones(1, 2), torch.ones(1, 1), torch.ones(1, 2), temperature=0.0)


def test_loss_weights_reject_negative_values() -> None:
    # Execute / Assert
    with pytest.raises(OptionError, match="quantization"):
        LossWeights(quantization=-1.0)
    with pytest.raises(OptionError, match="contrastive"):
        LossWeights(contrastive=float("nan"))
