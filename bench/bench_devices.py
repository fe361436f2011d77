"""Records/s per site of the in-process federation on each device, side by side in one run.

One PFMH round (personal + shared model, prototypes, aggregation) of K sites on the synthetic
MIRFlickr shape (4096-d image, 1386-d text, 24 labels, 5,000 training records), for every
``--devices`` entry, with the sites trained together (``site_batch``) and, with
``--both-paths``, one at a time. Records/s per site = training records x epochs / round
seconds / K; a warm-up round per device is not timed (CUDA context, kernels, allocator). CPU
seconds of this process are printed beside (on a shared machine they are the fair CPU figure).

    python bench/bench_devices.py [--devices cpu cuda] [--epochs 2] [--sites 10] [--preset mirflickr]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from pfmh_model.device import resolve_device
from pfmh_model.federation import Federation, FederationConfig, Method
from pfmh_model.partition import partition_dataset
from pfmh_model.synthetic import generate
from pfmh_model.threads import set_threads
from pfmh_model.training import TrainConfig


def _round_seconds(sites: list, cfg: FederationConfig) -> tuple[float, float]:
    """Wall and CPU seconds of one round after a warm-up round."""
    federation = Federation(sites, cfg)
    federation.run_round()  # warm-up, not timed
    if federation.trainers[0].device.type == "cuda":
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    federation.run_round()
    if federation.trainers[0].device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"], help="auto, cpu, cuda, cuda:N")
    p.add_argument("--preset", default="mirflickr")
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2, help="personal and shared epochs per round (each)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--both-paths", action="store_true", help="also time the sites one at a time")
    args = p.parse_args(argv)
    set_threads(args.threads)
    for spec in args.devices:
        resolve_device(spec)  # refuse an absent device before any work
    data = generate(args.preset, seed=0)
    sites = partition_dataset(data, num_sites=args.sites, alpha=0.1, seed=0)
    n = sum(len(s.train) for s in sites)
    train = dataclasses.replace(TrainConfig(), bits=args.bits, personal_epochs=args.epochs, shared_epochs=args.epochs)
    print(f"{data.describe()}\n{args.sites} sites, {n} training records, {args.epochs}+{args.epochs} epochs, "
          f"{args.bits} bits, {args.threads} CPU thread(s); one timed round per row", flush=True)
    rows = []
    for spec in args.devices:
        name = str(resolve_device(spec))
        if name.startswith("cuda"):
            name += f" ({torch.cuda.get_device_name(resolve_device(spec))})"
        for together in ((True, False) if args.both_paths else (True,)):
            cfg = FederationConfig(method=Method.PFMH, rounds=1, train=train, sites_together=together, device=spec)
            seconds, cpu = _round_seconds(sites, cfg)
            rate = n * 2 * args.epochs / seconds / args.sites
            path = "together" if together else "one at a time"
            rows.append((name, path, seconds, cpu, rate))
            print(f"{name}, sites {path}: {seconds:.1f} s per round ({cpu:.1f} s CPU), {rate:,.0f} records/s "
                  "per site", flush=True)
    print("\n| device | sites trained | s per round | CPU s | records/s per site | x first row |")
    print("|---|---|---|---|---|---|")
    for name, path, seconds, cpu, rate in rows:
        print(f"| {name} | {path} | {seconds:.1f} | {cpu:.1f} | {rate:,.0f} | {rate / rows[0][4]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
