"""Training throughput (records/s per site) of our trainer vs a plain-torch loop of the same network.

Both train the same :class:`~pfmh_model.network.HashNet` with the same losses (L_sim + w_q L_q,
the personal-model step), batch size, learning rate and number of torch threads, in one run,
alternating so that background load hits both alike. The difference is the loop:

- ours (``SiteTrainer.train_personal``): mini-batches index tensors already in memory, dropout masks
  come from 16-bit draws of a per-site generator, fused Adam, foreach gradient clipping;
- plain torch: ``TensorDataset`` + ``DataLoader(shuffle=True)``, ``nn.functional.dropout`` on the
  global RNG, default Adam, per-parameter clipping; the textbook loop.

The shared-model step (all four PFMH losses incl. distillation and contrastive) is timed for ours
only, as it has no plain counterpart. ``--together K`` also times K sites (the training records
split K ways) trained together (``pfmh_model.site_batch``) against the same K one at a time.
Default data: the synthetic MIRFlickr shape (4096-d image, 1386-d text, 24 labels, 5,000
training records), 64 bits.

Against the machine: the matmul FLOPs of one training record (forward and backward of every
Linear layer; the first layers need no input gradient) times records per CPU second, as a
fraction of this CPU's measured matmul peak (the best square float32 matmul, also per CPU
second, one thread). CPU seconds, not wall seconds, so that other jobs on the machine change
neither side. A profile of one epoch then says how the step's time splits between matmuls and
everything else. The sites-together comparison is per CPU second too.

    python bench/bench_throughput.py [--preset mirflickr] [--bits 64] [--epochs 2] [--repeats 3] [--threads 1]
        [--together 10]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pfmh_model.data import Split
from pfmh_model.losses import quantization_loss, similarity_loss
from pfmh_model.network import HashNet
from pfmh_model.prototypes import complete_prototypes
from pfmh_model.server_step import initial_prototypes
from pfmh_model.site_batch import train_personal_together
from pfmh_model.synthetic import generate
from pfmh_model.threads import set_threads
from pfmh_model.training import SiteTrainer, TrainConfig

_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_peak_flops(seconds: float = 1.0) -> float:
    """Best float32 matmul FLOP per CPU second of square sizes 512-2048 (one thread: CPU time is
    what the process got, so the figure does not depend on other jobs taking the core)."""
    best = 0.0
    for size in (512, 1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        reps, started = 0, time.process_time()
        while time.process_time() - started < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * size ** 3 * reps / (time.process_time() - started))
    return best


def _timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def flops_per_record(model: nn.Module) -> float:
    """Matmul FLOPs of one record's forward + backward: 2*in*out per Linear forward, the same for the
    weight gradient and for the input gradient (skipped for the layers that read the raw features)."""
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            first = name.endswith("blocks.0.linear")
            total += 2 * module.in_features * module.out_features * (2 if first else 3)
    return total


def step_profile(trainer: SiteTrainer, train: Split) -> tuple[float, list[tuple[str, float]]]:
    """Share of one epoch's CPU time in matmul kernels, and the five largest other ops (share each)."""
    from torch.profiler import profile

    with profile() as prof:
        trainer.train_personal(train, epochs=1)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    matmul = sum(e.self_cpu_time_total for e in events if e.key in _MATMULS) / total
    others = sorted((e for e in events if e.key not in _MATMULS), key=lambda e: -e.self_cpu_time_total)[:5]
    return matmul, [(e.key, e.self_cpu_time_total / total) for e in others]


def together_rates(cfg: TrainConfig, train: Split, k: int, epochs: int) -> tuple[float, float]:
    """Records per CPU second of K sites (the records split K ways) trained one at a time and together."""
    n = len(train)
    cuts = np.linspace(0, n, k + 1).astype(int)
    splits = [Split(train.image[a:b], train.text[a:b], train.labels[a:b])
              for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def trainers() -> list[SiteTrainer]:
        return [SiteTrainer(cfg, image_dim=train.image.shape[1], text_dim=train.text.shape[1], batch_seed=i)
                for i in range(k)]

    alone, together = trainers(), trainers()
    _, cpu_alone = _timed(lambda: [t.train_personal(s, epochs=epochs) for t, s in zip(alone, splits, strict=True)])
    _, cpu_together = _timed(lambda: train_personal_together(together, splits, epochs=epochs))
    return n * epochs / cpu_alone, n * epochs / cpu_together


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
    p.add_argument("--together", type=int, default=0, help="also time this many sites trained together")
    args = p.parse_args(argv)
    set_threads(args.threads)
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
    ours, plain, shared, ours_cpu, shared_cpu = [], [], [], [], []
    stats = trainer.prototype_statistics(train)
    global_protos = initial_prototypes(labels.shape[1], args.bits, seed=0)
    protos = complete_prototypes(stats, global_protos)
    for r in range(args.repeats):
        wall, cpu = _timed(lambda: trainer.train_personal(train, epochs=args.epochs))
        ours.append(n * args.epochs / wall)
        ours_cpu.append(n * args.epochs / cpu)
        plain.append(n_plain * args.epochs / plain_torch_epochs(cfg, image, text, labels, args.epochs))
        wall, cpu = _timed(lambda: trainer.train_shared(train, prototypes=protos, global_prototypes=global_protos,
                                                        epochs=args.epochs))
        shared.append(n * args.epochs / wall)
        shared_cpu.append(n * args.epochs / cpu)
        print(f"repeat {r + 1}: ours {ours[-1]:,.0f} rec/s, plain torch {plain[-1]:,.0f} rec/s, "
              f"ours shared step {shared[-1]:,.0f} rec/s", flush=True)
    med = statistics.median
    print("\n| loop | step | records/s per site (median) |")
    print("|---|---|---|")
    print(f"| plain torch (DataLoader, global-RNG dropout, default Adam) | L_sim + L_q | {med(plain):,.0f} |")
    print(f"| ours (SiteTrainer) | L_sim + L_q (personal model) | {med(ours):,.0f} |")
    print(f"| ours (SiteTrainer) | all PFMH terms (shared model) | {med(shared):,.0f} |")
    print(f"\nours / plain torch, same step, same run: {med(ours) / med(plain):.2f}x")
    peak = matmul_peak_flops()
    per_record = flops_per_record(trainer.personal)
    print(f"\nmeasured matmul peak: {peak / 1e9:.1f} GFLOP per CPU second (one thread); one record's "
          f"forward + backward: {per_record / 1e6:.2f} MFLOP")
    for name, rate in (("personal step", med(ours_cpu)), ("shared step", med(shared_cpu))):
        print(f"{name}: {rate:,.0f} records per CPU second = {rate * per_record / 1e9:.1f} GFLOP per CPU second "
              f"= {rate * per_record / peak:.0%} of peak")
    matmul, others = step_profile(trainer, train)
    print(f"personal step profile: {matmul:.0%} of op time in matmuls; largest others: "
          + ", ".join(f"{key} {share:.0%}" for key, share in others))
    if args.together:
        rates = [together_rates(cfg, train, args.together, args.epochs) for _ in range(args.repeats)]
        alone, together = med([r[0] for r in rates]), med([r[1] for r in rates])
        print(f"\n{args.together} sites of ~{n // args.together} records, personal step, records per CPU "
              f"second summed over the sites (median of {args.repeats}):")
        print(f"| one at a time | {alone:,.0f} |\n| together | {together:,.0f} |\n"
              f"together / one at a time: {together / alone:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
