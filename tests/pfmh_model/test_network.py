"""Tests of pfmh_model.network: shapes, option checks, generator-driven randomness, DP conversion."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pfmh_model.errors import ConfigError, OptionError
from pfmh_model.network import HashNet, binarize, make_dp_compatible


def _net(bits: int = 16, *, seed: int = 0, dropout: float = 0.1) -> HashNet:
    return HashNet(image_dim=20, text_dim=7, bits=bits, width=16, hidden=32, dropout=dropout,
                   generator=torch.Generator().manual_seed(seed))


def _batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=gen), torch.randn(n, 7, generator=gen)


@pytest.mark.parametrize("bits", [8, 12, 16, 32, 64, 128])
def test_forward_shape_and_range_for_several_bit_lengths(bits: int) -> None:
    # Prepare
    torch.set_num_threads(1)
    net = _net(bits)
    image, text = _batch(6)
    # Execute
    codes = net(image, text, generator=torch.Generator().manual_seed(3))
    # Assert
    assert codes.shape == (6, bits)
    assert codes.dtype == torch.float32
    assert bool((codes.abs() < 1).all())


def test_eval_mode_accepts_batch_of_one() -> None:
    # Prepare
    net = _net().eval()
    image, text = _batch(1)
    # Execute
    codes = net(image, text)
    # Assert
    assert codes.shape == (1, 16)


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"bits": 4}, "bits"), ({"bits": 7}, "bits"), ({"width": 0}, "width"), ({"hidden": -1}, "hidden"),
    ({"image_dim": 0}, "image_dim"), ({"text_dim": True}, "text_dim"), ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"), ({"bits": 16.0}, "bits"),
])
def test_bad_options_raise_naming_the_flag(kwargs: dict, flag: str) -> None:
    # Prepare
    options = {"image_dim": 20, "text_dim": 7, "bits": 16, "width": 16, "hidden": 32} | kwargs
    # Execute / Assert
    with pytest.raises(OptionError, match=flag) as info:
        HashNet(**options)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)


def test_initialisation_follows_the_generator_and_not_the_global_rng() -> None:
    # Prepare
    before = torch.get_rng_state()
    # Execute
    a, b, c = _net(seed=5), _net(seed=5), _net(seed=6)
    image, text = _batch(4)
    out = a.train()(image, text, generator=torch.Generator().manual_seed(0))
    # Assert
    assert torch.equal(before, torch.get_rng_state()), "the global RNG was used"
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb) or name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert out.shape == (4, 16)


def test_dropout_masks_are_reproducible_from_the_generator() -> None:
    # Prepare
    net = _net(dropout=0.5).train()
    image, text = _batch(8)
    # Execute
    one = net(image, text, generator=torch.Generator().manual_seed(11))
    two = net(image, text, generator=torch.Generator().manual_seed(11))
    three = net(image, text, generator=torch.Generator().manual_seed(12))
    # Assert
    assert torch.equal(one, two)
    assert not torch.equal(one, three)


def test_dropout_keeps_the_expected_fraction_and_mean() -> None:
    # Prepare
    drop = _net(dropout=0.3).neck_drop.train()
    x = torch.ones(200, 500)
    # Execute
    y = drop(x, torch.Generator().manual_seed(0))
    # Assert
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.02


def test_binarize_maps_zero_to_plus_one() -> None:
    # Prepare
    codes = torch.tensor([[0.3, -0.2, 0.0, -0.0]])
    # Execute
    bits = binarize(codes)
    # Assert
    assert bits.dtype == torch.int8
    assert bits.tolist() == [[1, -1, 1, 1]]


def test_make_dp_compatible_removes_batchnorm_and_makes_records_independent() -> None:
    # Prepare
    net = _net(dropout=0.0)
    image, text = _batch(5)
    # Execute
    dp = make_dp_compatible(net).train()
    full = dp(image, text)
    alone = dp(image[:1], text[:1])
    # Assert
    assert not any(isinstance(m, nn.BatchNorm1d) for m in dp.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in dp.modules()) == 5
    assert any(isinstance(m, nn.BatchNorm1d) for m in net.modules()), "the input model was modified"
    torch.testing.assert_close(full[:1], alone)


def test_closed_gate_makes_the_code_independent_of_the_absent_modality() -> None:
    # Prepare
    net = _net().eval()
    image, text = _batch(5)
    other_image, other_text = _batch(5, seed=9)
    image_only = torch.tensor([[1.0, 0.0]]).repeat(5, 1)
    text_only = torch.tensor([[0.0, 1.0]]).repeat(5, 1)
    # Execute
    with torch.no_grad():
        a = net(image, text, present=image_only)
        b = net(image, other_text, present=image_only)
        c = net(image, text, present=text_only)
        d = net(other_image, text, present=text_only)
        both = net(image, text, present=torch.ones(5, 2))
    # Assert: the absent branch does not reach the code; with both present it is the plain forward
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, d)
    assert not torch.allclose(a, c)
    with torch.no_grad():
        torch.testing.assert_close(both, net(image, text))
