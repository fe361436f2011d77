"""K HashNets of one architecture as stacked weights, and their training-mode forward in batched matmuls.

The weights of K same-shaped :class:`~pfmh_model.network.HashNet` models are stacked per
parameter into (K, *shape) tensors, so gradient clipping is a few batched operations and the
Adam update of all K models one fused-Adam call. ``forward`` is :meth:`HashNet.forward` in training
mode written with ``baddbmm``: site k's batch is row block k of a (a, B, features) tensor,
padded to B rows, and BatchNorm takes its statistics over the site's valid rows only. Dropout
masks are drawn from each site's own generator, in the order ``HashNet.forward`` draws them, so
the batched step consumes every site's random stream exactly as training it alone does.
``tests/pfmh_model/test_site_batch.py`` checks equality with the one-site path.

Shape: a active sites (a prefix of the K stacked), B padded rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from pfmh_model.errors import OptionError
from pfmh_model.network import HashNet, _Dropout

__all__ = ["DROPOUT_ORDER", "StackedNets", "forward"]

# The dropout layers in the order HashNet.forward runs them (and so draws their masks), each with
# the Linear layer whose output it drops.
DROPOUT_ORDER = ("image_branch.blocks.0.drop", "image_branch.blocks.1.drop", "text_branch.blocks.0.drop",
                 "text_branch.blocks.1.drop", "neck_drop")
_DROPPED = ("image_branch.blocks.0.linear", "image_branch.blocks.1.linear", "text_branch.blocks.0.linear",
            "text_branch.blocks.1.linear", "neck_in")
_NORMS = ("image_branch.blocks.0.norm", "image_branch.blocks.1.norm", "text_branch.blocks.0.norm",
          "text_branch.blocks.1.norm", "fusion.1")


def _check_architecture(net: nn.Module) -> None:
    if type(net) is not HashNet:
        raise OptionError(f"sites can be trained together only with plain HashNet models, got "
                          f"{type(net).__name__}")
    for name in _NORMS:
        module = net.get_submodule(name)
        if not isinstance(module, nn.BatchNorm1d):
            raise OptionError(f"{name} is {type(module).__name__}, the batched path needs "
                              "BatchNorm1d (a DP-compatible model is trained one site at a time)")
        if module.momentum is None or not (module.affine and module.track_running_stats):
            raise OptionError(f"{name}: the batched path needs an affine BatchNorm1d with running statistics "
                              "and a momentum")


class StackedNets:
    """The weights, Adam moments, step counts and BatchNorm buffers of K models, stacked.

    Each parameter is one contiguous (K, *shape) tensor; Linear weights are kept transposed,
    (K, in, out), so the batched matmul reads them as they are and their gradients come out in
    the same layout (no copy per step). ``store`` writes everything back in the models' layout.

    Args:
        nets: K models of one architecture (the same options).
        optimizers: their Adam optimisers (state read for the moments and step counts).
    """

    def __init__(self, nets: Sequence[HashNet], optimizers: Sequence[torch.optim.Adam]) -> None:
        for net in nets:
            _check_architecture(net)
        first = nets[0]
        shapes = {name: p.shape for name, p in first.named_parameters()}
        for net in nets[1:]:
            if {name: p.shape for name, p in net.named_parameters()} != shapes:
                raise OptionError("the sites' models differ in shape; train them one at a time")
        for opt in optimizers:
            group = opt.param_groups[0]
            if len(opt.param_groups) != 1 or group["amsgrad"] or group["maximize"] or group["decoupled_weight_decay"]:
                raise OptionError("the batched path implements plain Adam (one group, no amsgrad/maximize/AdamW)")
        self.names = list(shapes)
        self.shapes = shapes
        self._transposed = {name for name, shape in shapes.items() if len(shape) == 2}
        self.device = next(first.parameters()).device
        params = [dict(net.named_parameters()) for net in nets]
        states = [[opt.state.get(p, {}) for p in net.parameters()] for net, opt in zip(nets, optimizers, strict=True)]
        self.params = {name: self._stack([site[name] for site in params], name) for name in self.names}
        self.exp_avg = {name: torch.zeros_like(value) for name, value in self.params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(value) for name, value in self.params.items()}
        self.steps = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in nets]
        for k, state in enumerate(states):
            if state[0]:
                for name, entry in zip(self.names, state, strict=True):
                    self.exp_avg[name][k] = self._layout(entry["exp_avg"], name)
                    self.exp_avg_sq[name][k] = self._layout(entry["exp_avg_sq"], name)
                self.steps[k].fill_(float(state[0]["step"]))
        # Per site, its parameters' and moments' views, in the order fused Adam takes them.
        self._site_params = [[self.params[name][k] for name in self.names] for k in range(len(nets))]
        self._site_m = [[self.exp_avg[name][k] for name in self.names] for k in range(len(nets))]
        self._site_v = [[self.exp_avg_sq[name][k] for name in self.names] for k in range(len(nets))]
        self.norms = {name: {key: torch.stack([getattr(net.get_submodule(name), key).detach().clone()
                                               for net in nets])
                             for key in ("running_mean", "running_var", "num_batches_tracked")}
                      for name in _NORMS}
        norm = cast(nn.BatchNorm1d, first.get_submodule(_NORMS[0]))
        self.eps, self.momentum = float(norm.eps), float(norm.momentum or 0.0)
        self.dropouts = [cast(_Dropout, first.get_submodule(name)) for name in DROPOUT_ORDER]
        self.dropout_widths = [shapes[f"{name}.weight"][0] for name in _DROPPED]

    def _layout(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """A model-layout tensor in the stack's layout (Linear weights transposed)."""
        return tensor.detach().mT if name in self._transposed else tensor.detach()

    def _stack(self, tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
        return torch.stack([self._layout(t, name) for t in tensors]).contiguous()

    def leaves(self, active: int) -> dict[str, torch.Tensor]:
        """The first ``active`` sites' parameters as autograd leaves (contiguous views of the stack)."""
        return {name: self.params[name][:active].detach().requires_grad_() for name in self.names}

    def store(self, nets: Sequence[HashNet], optimizers: Sequence[torch.optim.Adam]) -> None:
        """Write weights, buffers and Adam state back into the K models and optimisers."""
        for k, (net, opt) in enumerate(zip(nets, optimizers, strict=True)):
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.copy_(self._layout(self.params[name][k], name))
                for name, buffers in self.norms.items():
                    module = net.get_submodule(name)
                    for key, value in buffers.items():
                        getattr(module, key).copy_(value[k])
            if float(self.steps[k]) == 0.0:
                continue
            for name, p in net.named_parameters():
                opt.state[p] = {"step": self.steps[k].clone(),
                                "exp_avg": self._layout(self.exp_avg[name][k], name).contiguous(),
                                "exp_avg_sq": self._layout(self.exp_avg_sq[name][k], name).contiguous()}

    def adam_step(self, leaves: Mapping[str, torch.Tensor], *, lr: float, weight_decay: float,
                  betas: tuple[float, float], eps: float, grad_clip: float) -> None:
        """Clip each site's gradient to L2 norm ``grad_clip``, then one Adam step per site.

        ``clip_grad_norm_`` per site (the norm over all of a site's gradients), then torch's fused
        Adam kernel, which ``SiteTrainer``'s optimisers (``fused=True``) run too.
        """
        grads = []
        for name in self.names:
            grad = leaves[name].grad
            if grad is None:
                raise OptionError(f"{name} got no gradient; the loss does not reach every weight")
            grads.append(grad)
        active = grads[0].shape[0]
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(active, -1), dim=1) for g in grads])
        coef = torch.clamp(grad_clip / (torch.linalg.vector_norm(norms, dim=0) + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(active, *([1] * (g.dim() - 1))))
        per_site = list(zip(*(g.unbind(0) for g in grads), strict=True))
        steps = self.steps[:active]
        torch._foreach_add_(steps, 1.0)
        torch._fused_adam_([p for k in range(active) for p in self._site_params[k]],
                           [g for site in per_site for g in site],
                           [m for k in range(active) for m in self._site_m[k]],
                           [v for k in range(active) for v in self._site_v[k]],
                           [], [s for s in steps for _ in self.names],
                           amsgrad=False, lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=weight_decay,
                           eps=eps, maximize=False, grad_scale=None, found_inf=None)


def _linear(w: Mapping[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """x W^T + b per site; the stack holds W^T, (a, in, out)."""
    return torch.baddbmm(w[f"{name}.bias"].unsqueeze(1), x, w[f"{name}.weight"])


def _norm(nets: StackedNets, w: Mapping[str, torch.Tensor], name: str, x: torch.Tensor, rows: torch.Tensor,
          count: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d in training mode over each site's valid rows; updates that site's running stats.

    The masked sums are (a, 1, B) x (a, B, C) matmuls: fewer full-size passes than mask-and-sum.
    """
    rows_t = rows.transpose(1, 2)
    mean = torch.bmm(rows_t, x) / count
    centred = x - mean
    var = torch.bmm(rows_t, centred * centred) / count
    scale = torch.rsqrt(var + nets.eps) * w[f"{name}.weight"].unsqueeze(1)
    out = torch.addcmul(w[f"{name}.bias"].unsqueeze(1), centred, scale)
    a = x.shape[0]
    buffers = nets.norms[name]
    with torch.no_grad():
        unbiased = var.squeeze(1) * (count / (count - 1.0)).squeeze(1)
        buffers["running_mean"][:a].lerp_(mean.squeeze(1), nets.momentum)
        buffers["running_var"][:a].lerp_(unbiased, nets.momentum)
        buffers["num_batches_tracked"][:a] += 1
    return out


def forward(nets: StackedNets, w: Mapping[str, torch.Tensor], image: torch.Tensor, text: torch.Tensor,
            rows: torch.Tensor, count: torch.Tensor, keeps: Sequence[torch.Tensor | None],
            present: torch.Tensor | None = None) -> torch.Tensor:
    """``HashNet.forward`` in training mode for a sites, each with its own weights.

    Args:
        nets: the stack (BatchNorm buffers and constants).
        w: :meth:`StackedNets.leaves` of the a active sites.
        image, text: padded batches.
        rows: 1 for a valid row, 0 for padding.
        count: valid rows per site (>= 2).
        keeps: per layer of :data:`DROPOUT_ORDER`, the scaled keep mask, or None for no dropout.
        present: the modality mask of each row (``HashNet.forward``'s ``present``), or None: both.

    Shape:
        - image: (a, B, image_dim); text: (a, B, text_dim); rows: (a, B, 1); count: (a, 1, 1)
        - keeps[i]: (a, B, width of that layer); present: (a, B, 2) float32 in {0, 1}
        - output: (a, B, bits) float32; padded rows hold finite values of no meaning
    """
    def block(prefix: str, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = _norm(nets, w, f"{prefix}.norm", torch.tanh(_linear(w, f"{prefix}.linear", x)), rows, count)
        return x if keep is None else x * keep

    def gate(prefix: str, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_linear(w, f"{prefix}.2", torch.relu(_linear(w, f"{prefix}.0", x))))

    f_img = block("image_branch.blocks.1", block("image_branch.blocks.0", image, keeps[0]), keeps[1])
    f_txt = block("text_branch.blocks.1", block("text_branch.blocks.0", text, keeps[2]), keeps[3])
    g_img, g_txt = gate("image_gate", f_img), gate("text_gate", f_txt)
    if present is not None:  # a missing modality's gate is closed
        g_img, g_txt = g_img * present[:, :, :1], g_txt * present[:, :, 1:]
    fused = g_img * f_img + g_txt * f_txt
    z = torch.tanh(_norm(nets, w, "fusion.1", _linear(w, "fusion.0", fused), rows, count))
    z = torch.relu(_linear(w, "expand", z))
    hidden = torch.relu(_linear(w, "neck_in", z))
    z = torch.relu(_linear(w, "neck_out", hidden if keeps[4] is None else hidden * keeps[4]))
    return torch.tanh(_linear(w, "head", z))
