"""Privacy-utility curve: PFMH (prototype sharing) mAP at several epsilon targets, with a PNG plot.

Each site releases, every round, its clipped prototype statistics with Gaussian noise, exactly as
a site daemon does (``security.dp_sensitivity.clipped_class_statistics`` +
``security.dp_noise.add_gaussian_noise``, mode ``local`` or ``distributed``). The noise multiplier
for each target epsilon over all rounds is calibrated with the Opacus RDP accountant
(``security.dp_calibration.calibrate_sigma``, delta 1e-5). ``prototypes`` share mode, so the
statistics are the only thing that leaves a site and DP covers the whole upload. The no-DP run
(``inf``) is done in the same invocation for the ratio.

    python bench/bench_dp_utility.py --data ../shared/data/wiki.h5 --epsilons 1 4 16 inf --bits 64 \\
        --rounds 20 --out runs/dp_utility
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

DELTA = 1e-5


def _run(cell: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from pfmh_model.aggregation import SiteUpload
    from pfmh_model.data import load_h5
    from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
    from pfmh_model.local_round import make_upload, train_pfmh_site
    from pfmh_model.partition import partition_dataset
    from pfmh_model.prototypes import PrototypeStats
    from pfmh_model.synthetic import generate
    from pfmh_model.training import TrainConfig
    from security.dp_calibration import calibrate_sigma
    from security.dp_noise import add_gaussian_noise
    from security.dp_sensitivity import clipped_class_statistics

    sigma = None if math.isinf(cell["epsilon"]) else calibrate_sigma(
        target_epsilon=cell["epsilon"], delta=DELTA, rounds=cell["rounds"])
    sites_n = cell["sites"]
    rng = np.random.default_rng(cell["seed"] + 17)  # seeded for a reproducible benchmark, not for deployment

    class NoisyFederation(Federation):
        """PFMH whose uploaded prototype statistics carry the site daemon's DP noise."""

        def _local_update(self, trainer, data):  # noqa: ANN001, ANN202
            stats, losses = train_pfmh_site(trainer, data.train, self.state.prototypes)
            if sigma is not None:
                sums, counts, sensitivity = clipped_class_statistics(trainer.encode(data.train, model="personal"),
                                                                     data.train.labels)
                noisy = add_gaussian_noise(np.concatenate([sums.ravel(), counts]), sigma=sigma,
                                           sensitivity=sensitivity, mode=cell["mode"], min_cohort=sites_n,
                                           secure_aggregation=True, rng=rng)
                stats = PrototypeStats.from_vector(noisy, self.num_classes, self.config.train.bits)
            upload: SiteUpload = make_upload(trainer, len(data.train), stats, self.layout)
            return upload, losses

    source = cell["source"]
    dataset = generate(source.split(":", 1)[1], seed=cell["seed"]) if source.startswith("synthetic:") \
        else load_h5(source)
    parts = partition_dataset(dataset, num_sites=sites_n, alpha=cell["alpha"], seed=cell["seed"])
    train = dataclasses.replace(TrainConfig(), bits=cell["bits"], seed=cell["seed"],
                                personal_epochs=cell["epochs"], shared_epochs=cell["epochs"])
    cfg = FederationConfig(method=Method.PFMH, rounds=cell["rounds"], train=train, eval_every=cell["rounds"],
                           share_mode=ShareMode.PROTOTYPES, sites_together=False)  # noise per site
    started = time.perf_counter()
    result = NoisyFederation(parts, cfg).run()
    last = result.rounds[-1]
    return {**cell, "sigma": sigma, "mean_site_map": last.mean_site_map, "global_map": last.global_map,
            "seconds": time.perf_counter() - started}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted((r for r in rows if not math.isinf(r["epsilon"])), key=lambda r: r["epsilon"])
    base = [r for r in rows if math.isinf(r["epsilon"])]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (("global_map", "global mAP"), ("mean_site_map", "per-site mean mAP")):
        line, = ax.plot([r["epsilon"] for r in finite], [r[key] for r in finite], marker="o", label=label)
        if base:
            ax.axhline(base[0][key], color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{label}, no DP")
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon after all rounds (delta = {DELTA:g})")
    ax.set_ylabel("mAP")
    ax.set_title("PFMH, prototype sharing, DP on prototype statistics")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:small", help="HDF5 path or synthetic:PRESET")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 16.0, math.inf],
                   help="targets after all rounds; inf = no DP")
    p.add_argument("--mode", choices=["local", "distributed"], default="local")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 2))
    p.add_argument("--out", type=Path, default=Path("runs/dp_utility"))
    args = p.parse_args(argv)
    if any(e <= 0 for e in args.epsilons):
        p.error("--epsilons must be > 0 (inf for no DP)")
    if not args.data.startswith("synthetic:") and not Path(args.data).is_file():
        p.error(f"--data {args.data}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [{"source": args.data, "epsilon": e, "mode": args.mode, "bits": args.bits, "sites": args.sites,
              "alpha": args.alpha, "rounds": args.rounds, "epochs": args.epochs, "seed": args.seed}
             for e in args.epsilons]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(_run, c) for c in cells]):
            row = future.result()
            rows.append(row)
            sigma = "-" if row["sigma"] is None else f"{row['sigma']:.3f}"
            print(f"epsilon {row['epsilon']}: sigma {sigma}, site {row['mean_site_map']:.3f}, "
                  f"global {row['global_map']:.3f} ({row['seconds']:.0f}s)", flush=True)
    rows.sort(key=lambda r: r["epsilon"])
    (args.out / "dp_utility.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, args.out / "dp_utility.png")
    print(f"\n{args.data}, {args.sites} sites, alpha {args.alpha}, {args.rounds} rounds, {args.epochs}+{args.epochs} "
          f"epochs, {args.bits} bits, DP mode {args.mode}, delta {DELTA:g}")
    print("| epsilon | sigma | per-site mean mAP | global mAP | s/run |")
    print("|---|---|---|---|---|")
    for r in rows:
        sigma = "no DP" if r["sigma"] is None else f"{r['sigma']:.3f}"
        print(f"| {r['epsilon']:g} | {sigma} | {r['mean_site_map']:.3f} | {r['global_map']:.3f} | {r['seconds']:.0f} |")
    print(f"plot: {args.out / 'dp_utility.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
