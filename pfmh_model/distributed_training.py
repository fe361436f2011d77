"""One site's training spread over W processes with ``torch.distributed`` DistributedDataParallel.

Every rank holds the site's whole training split and a replica of its :class:`SiteTrainer`; the
ranks draw the same batch order and dropout masks (one seeded generator, replicated), and each
runs the forward pass on its own slice of every mini-batch (rows ``shard_bounds``). What keeps
the result equal to the one-process step, up to float rounding:

- BatchNorm takes its statistics over the whole batch: the per-feature sums are all-reduced
  (``_AllReduceSum``, differentiable), i.e. a synchronised BatchNorm that also works on gloo.
- Dropout and modality masks are drawn for the whole batch on every rank and sliced, so each
  record gets the mask it gets in one process.
- The losses couple records (L_sim is over all pairs of the batch): the codes are gathered
  (``_GatherRows``, differentiable) and every rank evaluates the full-batch loss L. Backward
  then gives rank r the gradient of W * L through its own rows; DDP's all-reduce averages
  over the W ranks, which is exactly dL/dtheta. Clipping and Adam then run identically on
  every rank, so the replicas stay equal.

Our collectives run on a group of their own, apart from DDP's gradient buckets. Evaluation
(``encode``, the teacher codes, prototype statistics) is local: every rank has the data.
``tests/pfmh_model/test_distributed_training.py`` checks 2 gloo processes against one.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from pfmh_model.errors import OptionError
from pfmh_model.network import HashNet, _Dropout
from pfmh_model.training import Records, SiteTrainer

__all__ = ["ShardedSiteTrainer", "broadcast_message", "shard_bounds", "stop_followers"]

logger = logging.getLogger(__name__)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that rank ``rank`` of ``world`` takes (``torch.tensor_split`` sizes)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # noqa: ANN401
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN401
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order (padded for the transport, unpadded after)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:  # noqa: ANN401
        ctx.group, ctx.lo, ctx.hi = group, sum(sizes[:rank]), sum(sizes[:rank + 1])
        pad = max(sizes)
        padded = x.new_zeros((pad, *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # noqa: ANN401
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.lo:ctx.hi], None, None, None


class _ShardedForward(nn.Module):
    """``HashNet.forward`` in training mode on rows [lo, hi) of a batch of ``total`` records.

    Shape:
        - image: (hi - lo, image_dim); text: (hi - lo, text_dim); present: (total, 2) or None
        - output: (hi - lo, bits) float32
    """

    def __init__(self, net: HashNet, group: Any) -> None:  # noqa: ANN401
        super().__init__()
        self.net, self.group = net, group

    def _norm(self, module: nn.Module, x: torch.Tensor, total: int) -> torch.Tensor:
        if not isinstance(module, nn.BatchNorm1d):
            return module(x)  # per-record norms (GroupNorm) need no other rank
        mean = _AllReduceSum.apply(x.sum(dim=0), self.group) / total
        centred = x - mean
        var = _AllReduceSum.apply((centred * centred).sum(dim=0), self.group) / total
        if module.track_running_stats and module.running_mean is not None and module.running_var is not None:
            with torch.no_grad():
                momentum = module.momentum if module.momentum is not None else 0.1
                module.running_mean.lerp_(mean.detach(), momentum)
                module.running_var.lerp_(var.detach() * (total / max(total - 1, 1)), momentum)
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked += 1
        out = centred * torch.rsqrt(var + module.eps)
        return out * module.weight + module.bias if module.affine else out

    @staticmethod
    def _drop(drop: _Dropout, x: torch.Tensor, rows: slice, total: int,
              generator: torch.Generator) -> torch.Tensor:
        if drop.p == 0.0:
            return x
        return x.mul(drop.keep_mask((total, x.shape[1]), generator)[rows]).mul_(drop.scale)

    def forward(self, image: torch.Tensor, text: torch.Tensor, present: torch.Tensor | None, *,
                rows: slice, total: int, generator: torch.Generator) -> torch.Tensor:
        net = self.net

        def branch(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            for block in module.blocks:  # type: ignore[union-attr]
                x = self._norm(block.norm, torch.tanh(block.linear(x)), total)
                x = self._drop(block.drop, x, rows, total, generator)
            return x

        f_img, f_txt = branch(net.image_branch, image), branch(net.text_branch, text)
        g_img, g_txt = net.image_gate(f_img), net.text_gate(f_txt)
        if present is not None:
            local = present[rows]
            g_img, g_txt = g_img * local[:, :1], g_txt * local[:, 1:]
        fused = g_img * f_img + g_txt * f_txt
        z = torch.tanh(self._norm(net.fusion[1], net.fusion[0](fused), total))
        z = F.relu(net.expand(z))
        hidden = self._drop(net.neck_drop, F.relu(net.neck_in(z)), rows, total, generator)
        return torch.tanh(net.head(F.relu(net.neck_out(hidden))))


def _cpu(value: Any) -> Any:  # noqa: ANN401
    """``value`` with every tensor moved to the CPU (for pickling between ranks)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def broadcast_message(group: Any, message: Any = None) -> Any:  # noqa: ANN401
    """Rank 0 sends ``message`` (any picklable value) to every rank of ``group``; all return it."""
    box = [message]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def stop_followers(group: Any) -> None:  # noqa: ANN401
    """Leader: tell the followers to leave :meth:`ShardedSiteTrainer.follow` (or not to start)."""
    broadcast_message(group, ("stop", {}, None))


class ShardedSiteTrainer(SiteTrainer):
    """A :class:`SiteTrainer` whose ``train_personal`` / ``train_shared`` run on every rank at once.

    Rank 0 (the leader) is used like a plain trainer: each training call first sends the call and
    the leader's whole trainer state to the other ranks (so a restored snapshot or a newly loaded
    global model reaches them), then trains together with them. The other ranks (followers) sit
    in :meth:`follow` and mirror the calls. Only the site's own training split may be trained on.

    Build one with :meth:`adopt` from a trainer made as usual (``make_trainer``), after
    ``torch.distributed.init_process_group``.
    """

    group: Any
    rank: int
    world: int
    split: Records

    @classmethod
    def adopt(cls, trainer: SiteTrainer, split: Records, *, group: Any = None) -> ShardedSiteTrainer:  # noqa: ANN401
        """This process's trainer, with its models, optimisers and generator, as a sharded one.

        ``group``: the process group of our messages and collectives (every rank); None makes one
        (a collective call: every rank must adopt at the same point).
        """
        if not dist.is_initialized():
            raise OptionError("distributed training needs torch.distributed.init_process_group first "
                              "(launch with torchrun)")
        if type(trainer) is not SiteTrainer:
            raise OptionError(f"distributed training supports SiteTrainer (pfmh, fedavg), not "
                              f"{type(trainer).__name__}")
        out = cls.__new__(cls)
        out.__dict__.update(trainer.__dict__)
        out.group = dist.new_group(backend=dist.get_backend()) if group is None else group  # apart from DDP's
        out.rank, out.world, out.split = dist.get_rank(), dist.get_world_size(), split
        return out

    # ----------------------------------------------------------------- leader / follower protocol
    def command(self, op: str, payload: dict[str, Any]) -> None:
        """Leader: send ``op`` with ``payload`` and the trainer state to every follower."""
        broadcast_message(self.group, (op, _cpu(payload), _cpu(self.state_dict()) if op != "stop" else None))

    def receive(self) -> tuple[str, dict[str, Any]]:
        """Follower: the next call from the leader; the leader's trainer state is loaded first."""
        op, payload, state = broadcast_message(self.group)
        if state is not None:
            self.load_state_dict(state)
        return op, payload

    def follow(self, handlers: dict[str, Any] | None = None) -> int:
        """Follower: mirror the leader's training calls until it sends "stop"; returns how many it mirrored.

        ``handlers`` adds calls beyond the two training ones: op -> fn(trainer, payload).
        """
        ops = {"train_personal": lambda t, p: SiteTrainer.train_personal(t, t.split, **p),
               "train_shared": lambda t, p: SiteTrainer.train_shared(t, t.split, **p), **(handlers or {})}
        calls = 0
        while True:
            op, payload = self.receive()
            if op == "stop":
                return calls
            if op not in ops:
                raise OptionError(f"the leader asked for {op!r}, which this rank does not know")
            ops[op](self, payload)
            calls += 1

    def stop(self) -> None:
        """Leader: release the followers (they return from :meth:`follow`)."""
        stop_followers(self.group)

    def _check_split(self, split: Records) -> None:
        if split is not self.split:
            raise OptionError("a site trained on several processes trains only on its own training split")

    def train_personal(self, split: Records, *, epochs: int | None = None, anchors: np.ndarray | None = None,
                       progress: bool = False) -> dict[str, float]:
        self._check_split(split)
        if self.rank == 0:
            self.command("train_personal", {"epochs": epochs, "anchors": anchors})
        return super().train_personal(split, epochs=epochs, anchors=anchors, progress=progress)

    def train_shared(self, split: Records, **kwargs: Any) -> dict[str, float]:  # noqa: ANN401
        self._check_split(split)
        if self.rank == 0:
            self.command("train_shared", {k: v for k, v in kwargs.items() if k != "progress"})
        return super().train_shared(split, **kwargs)

    # ----------------------------------------------------------------- the sharded batch forward
    def _batch_codes(self, model: HashNet, img: torch.Tensor, txt: torch.Tensor
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Each batch's forward split over the ranks, the codes of all its rows gathered (module docstring)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(_ShardedForward(model, self.group), device_ids=ids, broadcast_buffers=False)

        def codes(idx: torch.Tensor) -> torch.Tensor:
            total = idx.numel()
            present = self._modality_mask(total)  # drawn before the dropout masks, as in one process
            sizes = [hi - lo for lo, hi in (shard_bounds(total, r, self.world) for r in range(self.world))]
            lo, hi = shard_bounds(total, self.rank, self.world)
            mine = idx[lo:hi]
            local = ddp(img[mine], txt[mine], None if present is None else present.to(self.device),
                        rows=slice(lo, hi), total=total, generator=self.generator)
            return _GatherRows.apply(local, sizes, self.rank, self.group)
        return codes
