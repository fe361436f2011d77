"""Queries with a missing modality: mAP of both / image-only / text-only queries against the same archive.

Run: ``python bench/bench_missing_modality.py --data wiki=../shared/data/wiki.h5 synthetic:small [--bits 64]
[--seeds 0 1 2] [--epochs 30] [--dropout 0 0.3 0.5]``.

Every network is the site's ``HashNet`` (same size everywhere), trained centrally on the train split
with the site's own loss (L_sim + L_q, ``SiteTrainer.train_shared`` without prototypes), one torch
thread. The archive is the database split with both modalities (for the one-modality networks:
that modality, the only one they know). A query without a modality gets that branch's gate closed
(``present`` mask). Rows:

- ``fused, modality_dropout p``: trained with a fraction p of the records having one modality
  hidden (``TrainConfig.modality_dropout``);
- ``image-only network`` / ``text-only network``: the same network trained with the other gate
  always closed, queried and archived with that modality alone.

Each cell is mean +- std over the seeds; every figure is measured in this run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pfmh_model.data import load_h5  # noqa: E402
from pfmh_model.evaluation import mean_average_precision  # noqa: E402
from pfmh_model.synthetic import generate  # noqa: E402
from pfmh_model.training import SiteTrainer, TrainConfig  # noqa: E402

MASKS = {"both": (True, True), "image-only": (True, False), "text-only": (False, True)}


class OneModalityTrainer(SiteTrainer):
    """The same network trained with one gate always closed: a single-modality network of the same size."""

    def __init__(self, *args, keep: tuple[bool, bool], **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.keep = torch.tensor([float(keep[0]), float(keep[1])])

    def _modality_mask(self, n: int) -> torch.Tensor:
        return self.keep.repeat(n, 1)


def _mask(n: int, which: tuple[bool, bool]) -> np.ndarray:
    return np.tile(np.array(which, bool), (n, 1))


def _run(data, config: TrainConfig, keep: tuple[bool, bool] | None) -> dict[str, float]:  # noqa: ANN001
    dims = {"image_dim": data.image_dim, "text_dim": data.text_dim, "num_classes": data.num_classes}
    trainer = SiteTrainer(config, **dims) if keep is None else OneModalityTrainer(config, keep=keep, **dims)
    trainer.train_shared(data.train, prototypes=None, global_prototypes=None, distill=False)
    db, q = data.database, data.query
    archive = trainer.encode(db, present=None if keep is None else _mask(len(db), keep))
    out = {}
    for name, which in MASKS.items():
        if keep is not None and which != keep:
            continue
        codes = trainer.encode(q, present=_mask(len(q), which))
        out[name] = mean_average_precision(codes, archive, q.labels, db.labels)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="name=file.h5 or synthetic:PRESET")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"mAP (mean +- std over seeds {args.seeds}), {args.bits} bits, {args.epochs} epochs, centralised "
          "training with the site loss; archive = database split")
    for spec in args.data:
        name, _, path = spec.partition("=")
        started = time.perf_counter()
        variants = [(f"fused, modality_dropout {p:g}", p, None) for p in args.dropout]
        variants += [("image-only network", 0.0, (True, False)), ("text-only network", 0.0, (False, True))]
        print(f"\n{name}")
        print(f"| network | {' | '.join(MASKS)} |\n|---|---|---|---|")
        for label, p, keep in variants:
            scores: dict[str, list[float]] = {}
            for seed in args.seeds:
                data = generate(name.split(":", 1)[1], seed=seed) if name.startswith("synthetic:") else load_h5(path)
                config = dataclasses.replace(TrainConfig(), bits=args.bits, seed=seed, shared_epochs=args.epochs,
                                             modality_dropout=p)
                for key, value in _run(data, config, keep).items():
                    scores.setdefault(key, []).append(value)
            cells = [f"{np.mean(scores[m]):.3f} ± {np.std(scores[m]):.3f}" if m in scores else "-" for m in MASKS]
            print(f"| {label} | {' | '.join(cells)} |", flush=True)
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
