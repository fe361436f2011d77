"""Cost of the DP chain: one site's local round (``LocalRelease.compute``) with DP on and off, side by side.

Runs interleave (on, off, on, off, ...) so a busy machine slows both alike; the ratio is the figure. The
defaults are the demo's: synthetic ``small`` preset, the largest of 3 sites, 32 bits, 5 + 5 epochs, DP-SGD
sigma 3, statistics sigma 4.

    python bench/bench_dp_cost.py --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _release(settings, data, folder: Path):  # noqa: ANN001, ANN202
    from federation.layout import upload_layout
    from participant.local_release import LocalRelease
    from participant.privacy import SitePrivacy
    from pfmh_model.trainer_factory import make_trainer
    from pfmh_model.training import flatten_state
    from security.signing import SigningKey

    trainer = make_trainer(settings.train, image_dim=data.image_dim, text_dim=data.text_dim,
                           num_classes=data.num_classes, batch_seed=1, **LocalRelease.dp_models(settings))
    size = flatten_state(trainer.shared_state()).size if settings.shares_model else 0
    state = SitePrivacy(settings.privacy, epsilon_max=1e9, ledger_path=folder / f"{time.time_ns()}.jsonl",
                        signing_key=SigningKey.generate(), site="bench")
    return LocalRelease(settings, trainer, state, upload_layout(settings, shared_size=size)), state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from federation.plan import FederationSettings, PrivacySettings
    from pfmh_model.partition import partition_dataset
    from pfmh_model.server_step import initial_prototypes
    from pfmh_model.synthetic import generate

    torch.set_num_threads(1)
    data = max(partition_dataset(generate(args.preset, seed=0), num_sites=3, alpha=1.0, seed=0),
               key=lambda part: len(part.train))
    train = {"bits": args.bits, "personal_epochs": args.epochs, "shared_epochs": args.epochs}
    protos = initial_prototypes(data.num_classes, args.bits, seed=0, method="pfmh")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for share_mode in ("prototypes", "prototypes+model"):
                for mode in ("local", "off"):
                    privacy = PrivacySettings(mode=mode, noise_multiplier=4.0, dp_sgd_noise_multiplier=3.0)
                    settings = FederationSettings(federation_id="bench", image_dim=data.image_dim,
                                                  text_dim=data.text_dim, num_classes=data.num_classes,
                                                  share_mode=share_mode, train=train, privacy=privacy)
                    release, state = _release(settings, data, Path(tmp))
                    started = time.perf_counter()
                    release.compute(data.train, protos)
                    times.setdefault((share_mode, mode), []).append(time.perf_counter() - started)
                    state.close()
    print(f"{args.preset}: one site of {len(data.train)} records, {args.bits} bits, {args.epochs}+{args.epochs} "
          f"epochs, median of {args.repeats} interleaved runs")
    print("| share mode | DP off (s) | DP on (s) | on / off |")
    print("|---|---|---|---|")
    for share_mode in ("prototypes", "prototypes+model"):
        off, on = (statistics.median(times[(share_mode, m)]) for m in ("off", "local"))
        print(f"| {share_mode} | {off:.2f} | {on:.2f} | {on / off:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
