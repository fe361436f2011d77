"""Privacy-utility curve on the real DP chain: mAP at several epsilon targets, with a PNG plot.

Each site's round is ``participant.local_release.LocalRelease.compute``, the site daemon's own code: with DP
on, the encoder of the statistics (PFMH's personal model, FedHAP's hashing network) is trained with Opacus
DP-SGD, the statistics are clipped and noised, and the shared model is DP-SGD-trained when it is federated.
One noise multiplier serves both mechanisms; it is calibrated so that the site whose accountant grows fastest
(``security.accountant.epsilon_for`` of the planned releases over all rounds) ends at the target epsilon
(delta 1e-5). The no-DP run (``inf``) is done in the same invocation.

    python bench/bench_dp_utility.py --data ../shared/data/wiki.h5 --epsilons 1 4 16 inf --bits 64 \\
        --rounds 20 --setups pfmh:prototypes pfmh:prototypes+model fedhap:prototypes --out runs/dp_utility
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DELTA = 1e-5


def _calibrate(epsilon: float, per_round: list[list[tuple[float, int]]], rounds: int) -> float:
    """Smallest sigma (both mechanisms) whose worst site's epsilon after ``rounds`` is <= ``epsilon``."""
    from security.accountant import epsilon_for

    def worst(sigma: float) -> float:
        return max(epsilon_for([(sigma, q, steps * rounds) for q, steps in site], DELTA) for site in per_round)

    low, high = 0.05, 1.0
    while worst(high) > epsilon:
        low, high = high, high * 2
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if worst(mid) > epsilon else (low, mid)
    return high


def _run(cell: dict) -> dict:
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from federation.plan import FederationSettings, PrivacySettings
    from participant.local_release import LocalRelease, load_frozen_encoder
    from participant.privacy import SitePrivacy
    from pfmh_model.aggregation import SiteUpload
    from pfmh_model.data import load_h5
    from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
    from pfmh_model.partition import partition_dataset
    from pfmh_model.synthetic import generate
    from pfmh_model.trainer_factory import use_dp_norms
    from pfmh_model.training import TrainConfig, flatten_state
    from security.signing import SigningKey

    method, share_mode = cell["setup"].split(":")
    source = cell["source"]
    dataset = generate(source.split(":", 1)[1], seed=cell["seed"]) if source.startswith("synthetic:") \
        else load_h5(source)
    parts = partition_dataset(dataset, num_sites=cell["sites"], alpha=cell["alpha"], seed=cell["seed"])
    train = dataclasses.replace(TrainConfig(), bits=cell["bits"], seed=cell["seed"],
                                personal_epochs=cell["epochs"], shared_epochs=cell["epochs"])
    dp = not math.isinf(cell["epsilon"])

    def settings_for(sigma: float) -> FederationSettings:
        privacy = PrivacySettings(mode="local" if dp else "off", noise_multiplier=sigma, dp_sgd_noise_multiplier=sigma)
        return FederationSettings(federation_id="bench", image_dim=dataset.image_dim, text_dim=dataset.text_dim,
                                  num_classes=dataset.num_classes, method=method, share_mode=share_mode,
                                  train=dataclasses.asdict(train) | {"weights": dataclasses.asdict(train.weights)},
                                  privacy=privacy)

    class ChainFederation(Federation):
        """The in-process federation whose every site runs the daemon's LocalRelease."""

        def __init__(self, settings: FederationSettings, folder: Path) -> None:
            super().__init__(parts, FederationConfig(method=Method(method), rounds=cell["rounds"], train=settings.train,
                                                     eval_every=cell["rounds"], share_mode=ShareMode(share_mode),
                                                     sites_together=False))  # the daemon's release, per site
            kinds = LocalRelease.dp_models(settings)
            self.releases = []
            for k, t in enumerate(self.trainers):
                use_dp_norms(t, shared=kinds["dp_compatible"], personal=kinds["dp_personal"])
                if k == 0 and self.layout.model_size:  # GroupNorm has no running statistics: re-size the layout
                    self.layout = dataclasses.replace(self.layout, model_size=int(flatten_state(t.shared_state()).size))
                state = SitePrivacy(settings.privacy, epsilon_max=1e9, ledger_path=folder / f"site-{k}.jsonl",
                                    signing_key=SigningKey.generate(), site=f"site-{k}")
                frozen = load_frozen_encoder(t.personal, None, "") if settings.privacy.statistics_encoder == "frozen" \
                    and dp else None
                self.releases.append(LocalRelease(settings, t, state, self.layout, frozen_encoder=frozen))

        def _local_update(self, trainer, data):  # noqa: ANN001, ANN202
            release = self.releases[self.trainers.index(trainer)]
            return SiteUpload.from_vector(release.compute(data.train, self.state.prototypes), self.layout), {}

    sigma = None
    with tempfile.TemporaryDirectory() as tmp:
        if dp:
            (Path(tmp) / "probe").mkdir()
            probe = ChainFederation(settings_for(1.0), Path(tmp) / "probe")
            per_round = [[(r.sample_rate, r.steps) for r in rel.planned(len(p.train))]
                         for rel, p in zip(probe.releases, parts, strict=True)]
            for rel in probe.releases:
                rel.privacy.close()
            sigma = _calibrate(cell["epsilon"], per_round, cell["rounds"])
        started = time.perf_counter()
        result = ChainFederation(settings_for(sigma or 1.0), Path(tmp)).run()
    last = result.rounds[-1]
    return {**cell, "sigma": sigma, "mean_site_map": last.mean_site_map, "global_map": last.global_map,
            "seconds": time.perf_counter() - started}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (key, label) in zip(axes, (("mean_site_map", "per-site mean mAP"), ("global_map", "global mAP")),
                                strict=True):
        for setup in sorted({r["setup"] for r in rows}):
            finite = sorted((r for r in rows if r["setup"] == setup and not math.isinf(r["epsilon"])),
                            key=lambda r: r["epsilon"])
            base = [r for r in rows if r["setup"] == setup and math.isinf(r["epsilon"])]
            line, = ax.plot([r["epsilon"] for r in finite], [r[key] for r in finite], marker="o", label=setup)
            if base:
                ax.axhline(base[0][key], color=line.get_color(), linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon after all rounds (delta = {DELTA:g}); dashed: no DP")
        ax.set_title(label)
    axes[0].set_ylabel("mAP")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:small", help="HDF5 path or synthetic:PRESET")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 16.0, math.inf],
                   help="targets after all rounds; inf = no DP")
    p.add_argument("--setups", nargs="+", default=["pfmh:prototypes", "pfmh:prototypes+model", "fedhap:prototypes"],
                   help="method:share_mode pairs")
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
    cells = [{"source": args.data, "epsilon": e, "setup": setup, "bits": args.bits, "sites": args.sites,
              "alpha": args.alpha, "rounds": args.rounds, "epochs": args.epochs, "seed": args.seed}
             for setup in args.setups for e in args.epsilons]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(_run, c) for c in cells]):
            row = future.result()
            rows.append(row)
            sigma = "-" if row["sigma"] is None else f"{row['sigma']:.3f}"
            print(f"{row['setup']} epsilon {row['epsilon']}: sigma {sigma}, site {row['mean_site_map']:.3f}, "
                  f"global {row['global_map']:.3f} ({row['seconds']:.0f}s)", flush=True)
    rows.sort(key=lambda r: (r["setup"], r["epsilon"]))
    (args.out / "dp_utility.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, args.out / "dp_utility.png")
    print(f"\n{args.data}, {args.sites} sites, alpha {args.alpha}, {args.rounds} rounds, {args.epochs}+{args.epochs} "
          f"epochs, {args.bits} bits, local DP on the real chain, delta {DELTA:g}")
    print("| setup | epsilon | sigma | per-site mean mAP | global mAP | s/run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sigma = "no DP" if r["sigma"] is None else f"{r['sigma']:.3f}"
        print(f"| {r['setup']} | {r['epsilon']:g} | {sigma} | {r['mean_site_map']:.3f} | {r['global_map']:.3f} "
              f"| {r['seconds']:.0f} |")
    print(f"plot: {args.out / 'dp_utility.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
