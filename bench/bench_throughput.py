"""Training throughput (records/s per site) of our trainer vs a plain-torch loop of the same network.

Both train the same :class:`~pfmh_model.network.HashNet` with the same losses (L_sim + w_q L_q,
the personal-model step), batch size, learning rate and number of torch threads, in one run,
alternating so that background load hits both alike. The difference is the loop:

- ours (``SiteTrainer.train_personal``): mini-batches index tensors already in memory, dropout masks
  come from 16-bit draws of a per-site generator, fused Adam, foreach gradient clipping;
- plain torch: ``TensorDataset`` + ``DataLoader(shuffle=True)``, ``nn.functional.dropout`` on the
  global RNG, default Adam, per-parameter clipping; the textbook loop.

The shared-model step (all four PFMH losses incl. distillation and contrastive) is timed for ours
only, as it has no plain counterpart. Default data: the synthetic MIRFlickr shape (4096-d image,
1386-d text, 24 labels, 5,000 training records), 64 bits.

    python bench/bench_throughput.py [--preset mirflickr] [--bits 64] [--epochs 2] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from pfmh_model.losses import quantization_loss, similarity_loss
from pfmh_model.network import HashNet
from pfmh_model.prototypes import complete_prototypes
from pfmh_model.server_step import initial_prototypes
from pfmh_model.synthetic import generate
from pfmh_model.training import SiteTrainer, TrainConfig


def plain_torch_epochs(cfg: TrainConfig, image: np.ndarray, text: np.ndarray, labels: np.ndarray,
                       epochs: int) -> float:
    """The textbook loop; returns seconds for ``epochs`` epochs (model built before the clock starts)."""
    torch.manual_seed(cfg.seed)
    model = HashNet(image_dim=image.shape[1], text_dim=text.shape[1], bits=cfg.bits, width=cfg.width,
                    hidden=cfg.hidden, dropout=cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = DataLoader(TensorDataset(torch.from_numpy(image), torch.from_numpy(text), torch.from_numpy(labels)),
                        batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    w = cfg.weights
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for img, txt, lab in loader:
            codes = model(img, txt)  # no generator: dropout uses torch's global RNG
            loss = w.similarity * similarity_loss(codes, lab) + w.quantization * quantization_loss(codes)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=False)
            opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mirflickr", help="synthetic preset (mirflickr, small, tiny)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a site's share of the machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = generate(args.preset, seed=0)
    train = data.train
    n = len(train)
    image, text = np.ascontiguousarray(train.image, np.float32), np.ascontiguousarray(train.text, np.float32)
    labels = np.ascontiguousarray(train.labels, np.float32)
    cfg = dataclasses.replace(TrainConfig(), bits=args.bits)
    n_plain = n // cfg.batch_size * cfg.batch_size  # drop_last=True
    print(f"{args.preset}: {n} training records, {image.shape[1]}-d image, {text.shape[1]}-d text, "
          f"{labels.shape[1]} labels; {args.bits} bits, hidden {cfg.hidden}, width {cfg.width}, batch "
          f"{cfg.batch_size}, {args.threads} torch thread(s); {args.repeats} repeats of {args.epochs} epochs",
          flush=True)
    # Warm-up (allocator, kernels) for both loops.
    plain_torch_epochs(cfg, image, text, labels, 1)
    trainer = SiteTrainer(cfg, image_dim=image.shape[1], text_dim=text.shape[1], num_classes=labels.shape[1])
    trainer.train_personal(train, epochs=1)
    ours, plain, shared = [], [], []
    stats = trainer.prototype_statistics(train)
    global_protos = initial_prototypes(labels.shape[1], args.bits, seed=0)
    protos = complete_prototypes(stats, global_protos)
    for r in range(args.repeats):
        started = time.perf_counter()
        trainer.train_personal(train, epochs=args.epochs)
        ours.append(n * args.epochs / (time.perf_counter() - started))
        plain.append(n_plain * args.epochs / plain_torch_epochs(cfg, image, text, labels, args.epochs))
        started = time.perf_counter()
        trainer.train_shared(train, prototypes=protos, global_prototypes=global_protos, epochs=args.epochs)
        shared.append(n * args.epochs / (time.perf_counter() - started))
        print(f"repeat {r + 1}: ours {ours[-1]:,.0f} rec/s, plain torch {plain[-1]:,.0f} rec/s, "
              f"ours shared step {shared[-1]:,.0f} rec/s", flush=True)
    med = statistics.median
    print("\n| loop | step | records/s per site (median) |")
    print("|---|---|---|")
    print(f"| plain torch (DataLoader, global-RNG dropout, default Adam) | L_sim + L_q | {med(plain):,.0f} |")
    print(f"| ours (SiteTrainer) | L_sim + L_q (personal model) | {med(ours):,.0f} |")
    print(f"| ours (SiteTrainer) | all PFMH terms (shared model) | {med(shared):,.0f} |")
    print(f"\nours / plain torch, same step, same run: {med(ours) / med(plain):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
