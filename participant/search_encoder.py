"""Query codes without torch's per-call overhead: the shared ``HashNet``'s eval-mode forward pass in numpy.

A search encodes a handful of records per request. Through torch's modules one record cost about
0.45 ms of CPU, most of it Python-side module dispatch; the same arithmetic in numpy, with every
BatchNorm folded into a scale and a shift, costs a fraction of that. :func:`fast_encoder` copies
the weights once per model (a new model gets a new encoder) and checks its codes against torch's
on random records before it is used; for any other network, or a mismatch, it returns None and
the caller keeps torch's ``SiteModel.encode_packed``. Archive records are still encoded by torch,
in large batches, where its overhead does not matter.

Float32 both ways, so a pre-activation within rounding of 0 can take the other sign than under
torch (the same happens between two torch batch sizes); the check below allows no code difference
on its sample.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from pfmh_model.packed_codes import pack_codes

logger = logging.getLogger(__name__)

Encoder = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_CHECK_ROWS = 64


def _linear(module) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    weight = module.weight.detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(weight.T), module.bias.detach().cpu().numpy().astype(np.float32)


class _Norm:
    """An eval-mode BatchNorm1d (a per-feature scale and shift) or GroupNorm(1, C) (per-record)."""

    def __init__(self, module) -> None:  # noqa: ANN001
        from torch import nn

        weight = module.weight.detach().cpu().numpy().astype(np.float64) if module.affine else 1.0
        bias = module.bias.detach().cpu().numpy().astype(np.float64) if module.affine else 0.0
        self.eps = float(module.eps)
        if isinstance(module, nn.BatchNorm1d):
            if module.running_mean is None or module.running_var is None:
                raise TypeError("BatchNorm1d without running statistics")
            mean = module.running_mean.detach().cpu().numpy().astype(np.float64)
            scale = weight / np.sqrt(module.running_var.detach().cpu().numpy().astype(np.float64) + self.eps)
            self.per_record = False
            self.scale = np.asarray(scale, np.float32)
            self.shift = np.asarray(bias - mean * scale, np.float32)
        elif isinstance(module, nn.GroupNorm) and module.num_groups == 1:
            self.per_record = True
            self.scale = np.broadcast_to(np.asarray(weight, np.float32), (module.num_channels,))
            self.shift = np.broadcast_to(np.asarray(bias, np.float32), (module.num_channels,))
        else:
            raise TypeError(f"no numpy form for {type(module).__name__}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.per_record:
            mean = x.mean(axis=1, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
            x = (x - mean) / np.sqrt(var + np.float32(self.eps))
        return x * self.scale + self.shift


class NumpyHashNet:
    """The eval-mode forward pass of a ``pfmh_model.network.HashNet``, up to the code's signs.

    Raises:
        TypeError: ``net`` is not a HashNet of the layout this mirrors.
    """

    def __init__(self, net) -> None:  # noqa: ANN001
        from pfmh_model.network import HashNet

        if type(net) is not HashNet:
            raise TypeError(f"no numpy form for {type(net).__name__}")
        self.branches = [[(_linear(block.linear), _Norm(block.norm)) for block in branch.blocks]
                         for branch in (net.image_branch, net.text_branch)]
        self.gates = [(_linear(gate[0]), _linear(gate[2])) for gate in (net.image_gate, net.text_gate)]
        self.fusion, self.fusion_norm = _linear(net.fusion[0]), _Norm(net.fusion[1])
        self.expand, self.neck_in = _linear(net.expand), _linear(net.neck_in)
        self.neck_out, self.head = _linear(net.neck_out), _linear(net.head)

    def pre_codes(self, image: np.ndarray, text: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The hash head's pre-activations; the code's bit is ``>= 0`` (tanh keeps the sign).

        Shape:
            - image: (n, image_dim); text: (n, text_dim); present: (n, 2) bool
            - output: (n, bits) float32
        """
        fused = None
        for col, (x, branch, gate) in enumerate(zip((image, text), self.branches, self.gates, strict=True)):
            x = np.asarray(x, np.float32)
            for (weight, bias), norm in branch:
                x = norm(np.tanh(x @ weight + bias))
            (w1, b1), (w2, b2) = gate
            g = 1.0 / (1.0 + np.exp(-(np.maximum(x @ w1 + b1, 0) @ w2 + b2)))
            part = (g * present[:, col:col + 1].astype(np.float32)) * x
            fused = part if fused is None else fused + part
        z = np.tanh(self.fusion_norm(fused @ self.fusion[0] + self.fusion[1]))
        z = np.maximum(z @ self.expand[0] + self.expand[1], 0)
        z = np.maximum(np.maximum(z @ self.neck_in[0] + self.neck_in[1], 0) @ self.neck_out[0] + self.neck_out[1], 0)
        return z @ self.head[0] + self.head[1]

    def encode_packed(self, image: np.ndarray, text: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Packed codes, as ``SiteModel.encode_packed``. Shape: (n, ceil(bits / 64)) uint64."""
        return pack_codes(self.pre_codes(image, text, present))


def fast_encoder(model) -> Encoder | None:  # noqa: ANN001
    """A numpy encoder for ``model`` (a ``SiteModel``) whose codes equal torch's on a random sample, or None."""
    try:
        numpy_net = NumpyHashNet(model.trainer.shared)
    except (TypeError, AttributeError) as exc:
        logger.info("query encoding stays in torch: %s", exc)
        return None
    rng = np.random.default_rng(0)
    n = _CHECK_ROWS
    image = rng.standard_normal((n, model.image_dim)).astype(np.float32)
    text = rng.standard_normal((n, model.text_dim)).astype(np.float32)
    present = np.ones((n, 2), bool)
    present[: n // 4, 0] = False
    present[n // 4: n // 2, 1] = False
    if not np.array_equal(numpy_net.encode_packed(image, text, present), model.encode_packed(image, text, present)):
        logger.warning("numpy query codes differ from torch's on a random sample; query encoding stays in torch")
        return None
    return numpy_net.encode_packed
