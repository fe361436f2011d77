"""The PFMH hashing network: two modality branches, sigmoid gates, fusion, neck and tanh hash head.

Personal and shared models have this same architecture (PFMH.md "Network"). Differences from the
reference code: no input->input first layer in the branches (16.7M wasted parameters on MIRFlickr),
no unused classifier head, and every random draw (weight init, dropout masks) comes from a
``torch.Generator`` handed in, never from torch's global RNG.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from pfmh_model.errors import OptionError

__all__ = ["HashNet", "binarize", "make_dp_compatible"]


class _Dropout(nn.Module):
    """Inverted dropout whose mask comes from a caller-supplied generator (global RNG only as fallback).

    Speed: one 64-bit draw yields four 16-bit uniforms, so masks cost a quarter of the draws of
    ``bernoulli_`` (torch's CPU generator is the bottleneck, about 4 ns per draw). The drop
    probability is therefore quantised to a multiple of 1/65536, and kept units are scaled by
    1 / (1 - that probability), so the expectation is exact.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        drop_levels = round(p * 65536)
        self._threshold = -32768 + drop_levels  # keep when a uniform int16 is >= this
        self._scale = 1.0 / (1.0 - drop_levels / 65536) if drop_levels < 65536 else 0.0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if generator is None:
            return F.dropout(x, self.p, training=True)
        words = torch.empty(x.numel() // 4 + 1, dtype=torch.int64, device=x.device)
        words.random_(-(2**63), 2**63 - 1, generator=generator)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= self._threshold
        return x.mul(keep).mul_(self._scale)


class _Block(nn.Module):
    """Linear -> Tanh -> BatchNorm -> Dropout (one branch layer)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, device="meta")
        self.norm = nn.BatchNorm1d(out_dim)
        self.drop = _Dropout(dropout)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.drop(self.norm(torch.tanh(self.linear(x))), generator)


class _Branch(nn.Module):
    """One modality: input -> hidden -> width, each layer a :class:`_Block`."""

    def __init__(self, in_dim: int, hidden: int, width: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(in_dim, hidden, dropout), _Block(hidden, width, dropout)])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, generator)
        return x


def _gate(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 2 * width, device="meta"), nn.ReLU(),
                         nn.Linear(2 * width, width, device="meta"), nn.Sigmoid())


class HashNet(nn.Module):
    """Gated two-branch multi-modal hashing network (PFMH).

    Args:
        image_dim: image feature length (MIRFlickr 4096, Wiki 128).
        text_dim: text feature length (MIRFlickr 1386, Wiki 10).
        bits: hash code length b, at least 8.
        width: common width d of both branches, gates and neck.
        hidden: hidden width of each branch (the reference uses 2048).
        dropout: dropout probability in [0, 1).
        generator: source of the initial weights; ``None`` means a fresh generator seeded with 0,
            so two nets built with the same arguments are identical.

    Raises:
        OptionError: an option is out of range (the message names the flag). Also a ``ValueError``.

    References:
        Zuo et al., "Learning Together Securely: Prototype-Based Federated Multi-Modal Hashing",
        AAAI 2025, Sec. "Method" (network).
    """

    def __init__(self, *, image_dim: int, text_dim: int, bits: int, width: int = 128, hidden: int = 1024,
                 dropout: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        for flag, value, low in (("image_dim", image_dim, 1), ("text_dim", text_dim, 1), ("bits", bits, 8),
                                 ("width", width, 1), ("hidden", hidden, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(f"{flag}={value!r} is invalid: need an integer >= {low}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise OptionError(f"dropout={dropout!r} is invalid: need 0 <= dropout < 1")
        self.image_dim, self.text_dim, self.bits, self.width = image_dim, text_dim, bits, width
        self.image_branch = _Branch(image_dim, hidden, width, float(dropout))
        self.text_branch = _Branch(text_dim, hidden, width, float(dropout))
        self.image_gate = _gate(width)
        self.text_gate = _gate(width)
        self.fusion = nn.Sequential(nn.Linear(width, bits, device="meta"), nn.BatchNorm1d(bits), nn.Tanh())
        self.expand = nn.Linear(bits, width, device="meta")
        self.neck_in = nn.Linear(width, 4 * width, device="meta")
        self.neck_drop = _Dropout(float(dropout))
        self.neck_out = nn.Linear(4 * width, width, device="meta")
        self.head = nn.Linear(width, bits, device="meta")
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Re-draw every Linear layer (PyTorch's default scheme) from ``generator``; reset norms.

        Args:
            generator: random source; ``None`` means a fresh generator seeded with 0.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if module.weight.is_meta:
                    module.to_empty(device="cpu")
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=gen)
            elif isinstance(module, (nn.BatchNorm1d, nn.GroupNorm)):
                module.reset_parameters()

    def forward(self, image: torch.Tensor, text: torch.Tensor, *,
                generator: torch.Generator | None = None, present: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous hash codes of a batch of records.

        Args:
            image: image features.
            text: text features.
            generator: source of dropout masks in training mode. ``None`` falls back to torch's
                global RNG (only for external wrappers); :class:`~pfmh_model.training.SiteTrainer`
                always passes its own. Ignored in eval mode.
            present: optional 0/1 mask of the modalities each record has (column 0 image, column 1
                text); an absent modality's gate is closed, so its features do not reach the code.
                ``None``: both present.

        Returns:
            Codes h in (-1, 1); the binary code is ``binarize(h)``.

        Shape:
            - image: (n, image_dim) float32
            - text: (n, text_dim) float32
            - present: (n, 2) float32 in {0, 1}, or None
            - output: (n, bits) float32
            n >= 2 in training mode (BatchNorm); any n >= 1 in eval mode.
        """
        f_img = self.image_branch(image, generator)
        f_txt = self.text_branch(text, generator)
        g_img, g_txt = self.image_gate(f_img), self.text_gate(f_txt)
        if present is not None:  # a missing modality's gate is closed
            g_img, g_txt = g_img * present[:, :1], g_txt * present[:, 1:]
        fused = g_img * f_img + g_txt * f_txt
        z = F.relu(self.expand(self.fusion(fused)))
        z = F.relu(self.neck_out(self.neck_drop(F.relu(self.neck_in(z)), generator)))
        return torch.tanh(self.head(z))


def binarize(codes: torch.Tensor) -> torch.Tensor:
    """Binary hash codes: sign(h) with sign(0) taken as +1, so every bit is exactly +-1.

    Args:
        codes: continuous codes (any float dtype).

    Returns:
        int8 tensor of +1/-1 (1 byte per bit; pack with numpy for storage).

    Shape:
        - codes: (n, bits)
        - output: (n, bits) int8
    """
    return torch.where(codes >= 0, 1, -1).to(torch.int8)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every BatchNorm1d replaced by a per-record normalisation, for DP-SGD.

    BatchNorm mixes records of a batch, so per-sample gradients (Opacus) are undefined. Each
    BatchNorm1d(C) becomes ``GroupNorm(1, C)``: the LayerNorm-equivalent that normalises each
    record over its own C features, with a per-feature affine scale and shift (copied from the
    BatchNorm; running statistics are dropped). One group rather than Opacus' default
    ``gcd(32, C)`` groups because C can be as small as 8 bits, and 4-feature groups would
    normalise away most of the signal. Works with batch size 1. The input model is not modified.

    Args:
        model: usually a :class:`HashNet`.

    Returns:
        A new module without BatchNorm, with otherwise identical weights.
    """
    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm1d):
                norm = nn.GroupNorm(1, child.num_features, eps=child.eps, affine=child.affine)
                if child.affine:
                    with torch.no_grad():
                        norm.weight.copy_(child.weight)
                        norm.bias.copy_(child.bias)
                setattr(parent, name, norm)
    return clone
