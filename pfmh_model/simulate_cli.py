"""``pfmh-simulate``: K sites in one process (no network), for pfmh / fedavg / local / centralized.

Prints per-round per-site and mean mAP and the global mAP, writes ``result.json`` and
``result.png`` (mAP over rounds, final precision-recall curve) under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from pfmh_model.atomic_file import atomic_path
from pfmh_model.data import MultiModalDataset, load_h5
from pfmh_model.errors import ModelError
from pfmh_model.federation import Federation, FederationConfig, Method, RoundRecord, ShareMode
from pfmh_model.methods import DEFAULT_SHARE_MODE
from pfmh_model.partition import class_histograms, format_histograms, partition_dataset
from pfmh_model.plots import plot_run
from pfmh_model.synthetic import PRESETS, generate
from pfmh_model.threads import DEFAULT_THREADS, set_threads
from pfmh_model.training import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfmh-simulate", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="HDF5 file in the community layout (I_tr T_tr L_tr I_db ...)")
    src.add_argument("--preset", default="small", choices=sorted(PRESETS),
                     help="built-in synthetic dataset, used when --data is not given (default: %(default)s)")
    p.add_argument("--methods", default="pfmh",
                   help="comma list of: " + ", ".join(m.value for m in Method) + " (default: %(default)s)")
    p.add_argument("--sites", type=int, default=10, help="number of sites (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.1,
                   help="Dirichlet concentration of the non-IID split (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default: %(default)s)")
    p.add_argument("--bits", type=int, default=64, help="code length (default: %(default)s)")
    train = TrainConfig()  # the defaults below are TrainConfig's own
    p.add_argument("--personal-epochs", type=int, default=train.personal_epochs,
                   help="local epochs of the personal model (default: %(default)s)")
    p.add_argument("--shared-epochs", type=int, default=train.shared_epochs,
                   help="local epochs of the shared model (default: %(default)s)")
    p.add_argument("--lr", type=float, default=train.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=train.batch_size,
                   help="training batch size (default: %(default)s)")
    p.add_argument("--share-mode", default=DEFAULT_SHARE_MODE.value, choices=[m.value for m in ShareMode],
                   help="what sites share besides prototype statistics (default: %(default)s, as the daemons)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split and the initial weights (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch intra-op threads (0: one per core, which thrashes when anything else runs; "
                        "see pfmh_model/threads.py; default: %(default)s)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N: where the sites train "
                   "(codes and statistics come back as numpy either way; default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes the sites are spread over, one torch thread each (0: one per core, at most "
                        "one per site). More than 1 pays only on idle cores: on a busy machine the extra "
                        "process costs CPU (docs/BENCHMARKS.md; default: %(default)s)")
    p.add_argument("--one-site-at-a-time", action="store_true",
                   help="train the sites one after another instead of as one batched computation")
    p.add_argument("--out", type=Path, default=Path("runs/simulate"),
                   help="directory for result.json and result.png (default: %(default)s)")
    p.add_argument("--show-partition", action="store_true", help="print per-site class histograms of the split")
    p.add_argument("--quiet", action="store_true", help="only the final summary")
    return p


def _fmt(x: float | None) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _load(args: argparse.Namespace) -> MultiModalDataset:
    if args.data is not None:
        return load_h5(args.data)
    return generate(args.preset, seed=args.seed)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    overrides = {"bits": args.bits, "seed": args.seed}
    for flag, name in (("personal_epochs", "personal_epochs"), ("shared_epochs", "shared_epochs"),
                       ("lr", "lr"), ("batch_size", "batch_size")):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    return dataclasses.replace(TrainConfig(), **overrides)


def _methods(text: str) -> list[Method]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    valid = {m.value for m in Method}
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ModelError(f"unknown method(s) {bad or text!r}; choose from {', '.join(sorted(valid))}")
    return [Method(n) for n in names]


def _workers(requested: int, sites: int) -> int:
    if requested < 0:
        raise ModelError(f"--workers {requested} is invalid: need 0 (one per core) or more")
    return max(1, min(requested or (os.cpu_count() or 1), sites))


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    methods = _methods(args.methods)
    dataset = _load(args)
    print(f"dataset: {dataset.describe()}")
    sites = partition_dataset(dataset, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
    print(f"partition: {args.sites} sites, Dirichlet alpha {args.alpha}, train records per site "
          f"{[len(s.train) for s in sites]}")
    if args.show_partition:
        print(format_histograms(class_histograms(sites, split="train"), dataset.class_names))
    train_cfg = _train_config(args)
    results: dict = {"dataset": dataset.describe(), "sites": args.sites, "alpha": args.alpha, "seed": args.seed,
                     "train_config": _jsonable(dataclasses.asdict(train_cfg)), "methods": {}}
    curves, prs = {}, {}
    for method in methods:
        cfg = FederationConfig(method=method, rounds=args.rounds, share_mode=ShareMode(args.share_mode),
                               train=train_cfg, eval_every=args.eval_every,
                               sites_together=not args.one_site_at_a_time, device=args.device,
                               workers=_workers(args.workers, len(sites)))
        print(f"\n== {method.value}: {args.rounds} rounds, {args.bits} bits, "
              f"{train_cfg.personal_epochs}+{train_cfg.shared_epochs} local epochs")
        started = time.perf_counter()
        federation = Federation(sites, cfg)

        def on_round(rec: RoundRecord) -> None:
            if args.quiet:
                return
            per_site = " ".join(_fmt(m) for m in rec.site_map)
            print(f"round {rec.round:3d}/{args.rounds}  mean site mAP {_fmt(rec.mean_site_map)}  "
                  f"global mAP {_fmt(rec.global_map)}  upload {rec.upload_bytes_per_site:,} B/site  "
                  f"{rec.seconds:5.1f}s  | sites: {per_site}", flush=True)

        result = federation.run(on_round=on_round)
        wall = time.perf_counter() - started
        last = result.rounds[-1]
        print(f"{method.value}: final mean site mAP {_fmt(last.mean_site_map)}, global mAP {_fmt(last.global_map)}, "
              f"{result.train_records_per_second:,.0f} records/s/site, wall {wall:.1f}s")
        results["methods"][method.value] = {
            "rounds": [_jsonable(dataclasses.asdict(r)) for r in result.rounds],
            "final": _jsonable(result.final_report),
            "records_per_second_per_site": result.train_records_per_second,
            "wall_seconds": wall,
        }
        curves[method.value] = [(r.round, r.mean_site_map, r.global_map) for r in result.rounds]
        prs[method.value] = (result.final_report["pr_precision"], result.final_report["pr_recall"])
    _write(args.out, results, curves, prs, title=f"{dataset.name}: {args.sites} sites, alpha {args.alpha}, "
                                                   f"{args.bits} bits")
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _write(out: Path, results: dict, curves, prs, *, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "result.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    plot_run(out / "result.png", curves, prs, title=title)
    print(f"\nwrote {out / 'result.json'} and {out / 'result.png'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ModelError, OSError) as exc:
        print(f"pfmh-simulate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pfmh-simulate: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
