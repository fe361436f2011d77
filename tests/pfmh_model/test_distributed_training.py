"""A site trained on 2 gloo processes (``distributed_training``) equals the one-process run.

Tolerance: codes within 1e-4, prototype statistics within 1e-3 (sums of up to 129 unit codes)
and losses within 1e-5 relative, after 2 + 2 epochs with dropout and modality dropout on. The
ranks sum BatchNorm statistics and gradients in another order than one process does (about
1e-7 relative per step); that is the only difference.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from pfmh_model.data import Split
from pfmh_model.errors import OptionError
from pfmh_model.prototypes import complete_prototypes
from pfmh_model.server_step import initial_prototypes
from pfmh_model.synthetic import generate
from pfmh_model.training import SiteTrainer, TrainConfig

# 129 records: batches of 64 and 65 (a last batch of one is merged), split 33/32 over the ranks.
CFG = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=2, shared_epochs=2, seed=1, modality_dropout=0.3)
N = 129


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> tuple[Split, Split, int, int, int]:
    d = generate("tiny", seed=3)
    t = d.train
    return Split(t.image[:N], t.text[:N], t.labels[:N]), d.query, d.image_dim, d.text_dim, d.num_classes


def _round(trainer: SiteTrainer, split: Split, query: Split, num_classes: int) -> dict[str, np.ndarray]:
    """One PFMH round's local work; what it released and what the models now encode."""
    glob = initial_prototypes(num_classes, CFG.bits, seed=CFG.seed, method="pfmh")
    personal = trainer.train_personal(split)
    stats = trainer.prototype_statistics(split)
    shared = trainer.train_shared(split, prototypes=complete_prototypes(stats, glob), global_prototypes=glob)
    trainer.train_personal(split, epochs=1)  # a model wrapped a second time, Adam resumed
    return {"sums": stats.sums, "counts": stats.counts, "personal_loss": np.array(personal["loss"]),
            "shared_loss": np.array(shared["loss"]), "codes": trainer.encode(query),
            "personal_codes": trainer.encode(query, model="personal")}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from pfmh_model.distributed_training import ShardedSiteTrainer

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        split, query, image_dim, text_dim, num_classes = _data()
        trainer = ShardedSiteTrainer.adopt(SiteTrainer(CFG, image_dim=image_dim, text_dim=text_dim,
                                                       num_classes=num_classes, batch_seed=7), split)
        if rank == 0:
            result = _round(trainer, split, query, num_classes)
            trainer.stop()
        else:
            trainer.follow()
            result = {"codes": trainer.encode(query), "personal_codes": trainer.encode(query, model="personal")}
        np.savez(Path(out) / f"rank{rank}.npz", **result)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, dict]:  # noqa: ANN001
    torch.set_num_threads(1)
    split, query, image_dim, text_dim, num_classes = _data()
    alone = _round(SiteTrainer(CFG, image_dim=image_dim, text_dim=text_dim, num_classes=num_classes, batch_seed=7),
                   split, query, num_classes)
    out = tmp_path_factory.mktemp("ddp")
    tmp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return alone, dict(np.load(out / "rank0.npz")), dict(np.load(out / "rank1.npz"))


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP on 127.0.0.1")
def test_two_processes_equal_one(runs) -> None:  # noqa: ANN001
    alone, leader, _ = runs
    np.testing.assert_allclose(leader["codes"], alone["codes"], atol=1e-4)
    np.testing.assert_allclose(leader["personal_codes"], alone["personal_codes"], atol=1e-4)
    np.testing.assert_allclose(leader["sums"], alone["sums"], atol=1e-3)
    np.testing.assert_array_equal(leader["counts"], alone["counts"])
    for key in ("personal_loss", "shared_loss"):
        np.testing.assert_allclose(leader[key], alone[key], rtol=1e-5)


def test_replicas_stay_equal(runs) -> None:  # noqa: ANN001
    _, leader, follower = runs
    np.testing.assert_array_equal(follower["codes"], leader["codes"])
    np.testing.assert_array_equal(follower["personal_codes"], leader["personal_codes"])


def test_adopt_needs_a_process_group() -> None:
    from pfmh_model.distributed_training import ShardedSiteTrainer

    split, _, image_dim, text_dim, num_classes = _data()
    with pytest.raises(OptionError, match="init_process_group"):
        ShardedSiteTrainer.adopt(SiteTrainer(CFG, image_dim=image_dim, text_dim=text_dim,
                                             num_classes=num_classes), split)


def test_shard_bounds_cover_the_batch() -> None:
    from pfmh_model.distributed_training import shard_bounds

    for n in (0, 1, 2, 65, 64):
        bounds = [shard_bounds(n, r, 3) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert [hi - lo for lo, hi in bounds] == [len(c) for c in torch.arange(n).tensor_split(3)]
