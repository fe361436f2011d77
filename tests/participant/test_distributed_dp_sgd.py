"""DP-SGD on 2 gloo processes (``participant.distributed_dp_sgd``) equals the one-process DP-SGD.

Compared with noise off (sigma = 0) and the same lots: both runs take their Poisson lots from
one seeded list (each rank keeps the part in its shard), including a lot that falls wholly in
rank 0's shard and an empty one. Dropout is off (the mask generators are secret, per rank).
Checked: the personal model's codes within 1e-5 and the prototype statistics within 1e-4 after
12 steps; the replicas on both ranks are identical. With noise on, the gradient Adam receives at
the empty lot is the noise alone: its spread must be sigma C / expected lot, the same on both ranks.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from participant import dp_sgd
from pfmh_model.data import Split
from pfmh_model.distributed_training import shard_bounds
from pfmh_model.server_step import initial_prototypes
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import make_trainer
from tests.pfmh_model.test_distributed_training import free_port

OPTIONS = {"bits": 16, "hidden": 32, "width": 16, "dropout": 0.0, "seed": 2, "batch_size": 16}
N, STEPS = 90, 12


def _lots() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    lots = [np.flatnonzero(rng.random(N) < 16 / N) for _ in range(STEPS)]
    lots[3] = np.array([1, 4, 7])  # only in rank 0's shard [0, 45)
    lots[6] = np.array([], dtype=np.int64)  # empty: the noise-only step
    return lots


class _Lots:
    """Stand-in for ``poisson_sample``: the next fixed lot, restricted to rows [lo, hi) and shifted."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lots, self.lo, self.hi = iter(_lots()), lo, hi

    def __call__(self, n: int, rate: float) -> np.ndarray:
        full = next(self.lots)
        return full[(full >= self.lo) & (full < self.hi)] - self.lo


def _setup(noise: float) -> tuple:
    d = generate("tiny", seed=4)
    split = Split(d.train.image[:N], d.train.text[:N], d.train.labels[:N])
    trainer = make_trainer(OPTIONS, image_dim=d.image_dim, text_dim=d.text_dim, num_classes=d.num_classes,
                           dp_personal=True, batch_seed=3)
    glob = initial_prototypes(d.num_classes, 16, seed=2, method="pfmh")
    return split, d.query, trainer, glob, {"noise_multiplier": noise, "max_grad_norm": 1.0, "epochs": 2}


def _result(trainer, split: Split, query: Split) -> dict[str, np.ndarray]:  # noqa: ANN001
    stats = trainer.prototype_statistics(split)
    return {"codes": trainer.encode(query, model="personal"), "sums": stats.sums,
            "weights": torch.cat([p.detach().reshape(-1) for p in trainer.personal.parameters()]).numpy()}


def _rank(rank: int, world: int, port: int, out: str, noise: float) -> None:
    from participant import distributed_dp_sgd
    from pfmh_model.distributed_training import ShardedSiteTrainer

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    grad_std: list[float] = []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the gradient Adam sees
        grads = [q.grad.reshape(-1) for group in self.param_groups for q in group["params"] if q.grad is not None]
        grad_std.append(float(torch.cat(grads).std()))
        return adam_step(self, *args, **kwargs)

    torch.optim.Adam.step = recording_step
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        split, query, trainer, glob, kwargs = _setup(noise)
        distributed_dp_sgd.poisson_sample = _Lots(*shard_bounds(N, rank, world))
        trainer = ShardedSiteTrainer.adopt(trainer, split)
        handlers = distributed_dp_sgd.install_dp_sgd(trainer)
        rate = 0.0
        if rank == 0:
            rate = dp_sgd.train_encoder_dp_sgd(trainer, split, global_prototypes=glob, **kwargs).sample_rate
            trainer.stop()
        else:
            trainer.follow(handlers)
        np.savez(Path(out) / f"rank{rank}.npz", **_result(trainer, split, query), grad_std=np.array(grad_std),
                 sample_rate=rate)
    finally:
        dist.destroy_process_group()


def _spawn(out: Path, noise: float) -> tuple[dict, dict]:
    tmp.spawn(_rank, args=(2, free_port(), str(out), noise), nprocs=2, join=True)
    return dict(np.load(out / "rank0.npz")), dict(np.load(out / "rank1.npz"))


def test_two_processes_equal_one_without_noise(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    split, query, trainer, glob, kwargs = _setup(0.0)
    monkeypatch.setattr(dp_sgd, "poisson_sample", _Lots(0, N))
    release = dp_sgd.train_encoder_dp_sgd(trainer, split, global_prototypes=glob, **kwargs)
    assert release.steps == STEPS
    alone = _result(trainer, split, query)
    leader, follower = _spawn(tmp_path, 0.0)
    assert not np.allclose(leader["weights"], _result(_setup(0.0)[2], split, query)["weights"])  # it trained
    np.testing.assert_allclose(leader["codes"], alone["codes"], atol=1e-5)
    np.testing.assert_allclose(leader["sums"], alone["sums"], atol=1e-4)
    np.testing.assert_array_equal(follower["weights"], leader["weights"])




def test_two_processes_add_the_full_noise_once(tmp_path) -> None:  # noqa: ANN001
    # Execute: sigma 2, C 1, the same fixed lots; step 6 is the empty lot (noise only, from rank 0).
    leader, follower = _spawn(tmp_path, 2.0)
    # Assert: the gradient there is N(0, (sigma C)^2) / expected lot, summed once over the ranks, and
    # both ranks step with the same gradient (removing the noise, halving sigma or adding it on both ranks
    # moves the spread by a factor of 2 or more).
    expected_lot = max(1, round(float(leader["sample_rate"]) * N))
    want = 2.0 * 1.0 / expected_lot
    assert len(leader["grad_std"]) == STEPS
    assert abs(leader["grad_std"][6] / want - 1) < 0.15, (leader["grad_std"][6], want)
    np.testing.assert_allclose(follower["grad_std"], leader["grad_std"], rtol=1e-6)
