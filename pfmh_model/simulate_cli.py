"""``pfmh-simulate``: K sites in one process (no network), for pfmh / fedavg / local / centralized /
fedhap and the numpy baselines ridge-local / ridge-central / lsh (``pfmh_model.baselines``).

Prints per-round per-site and mean mAP, the global mAP and each site's validation mAP (on a held-out
slice of its training records), writes ``result.json`` and ``result.png`` (mAP over rounds, final
precision-recall curve) under ``--out``. Every method of a run uses the same partition and slices.
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
from pfmh_model.baselines import BASELINES, baseline_codes
from pfmh_model.data import MultiModalDataset, load_h5
from pfmh_model.errors import ModelError
from pfmh_model.evaluation import evaluate
from pfmh_model.federation import (
    Federation,
    FederationConfig,
    Method,
    RoundRecord,
    ShareMode,
    site_and_global_map,
    union_codes,
)
from pfmh_model.methods import DEFAULT_SEARCH_MODEL, DEFAULT_SHARE_MODE, DEFAULT_VALIDATION_FRACTION, SearchModel
from pfmh_model.partition import (
    apply_partition,
    class_histograms,
    format_histograms,
    hold_out,
    load_partition,
    partition_indices,
    save_partition,
)
from pfmh_model.plots import plot_run
from pfmh_model.search_choice import SEARCH_AVERAGE
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
                   help="comma list of: " + ", ".join([m.value for m in Method] + list(BASELINES))
                        + " (default: %(default)s)")
    p.add_argument("--sites", type=int, default=10, help="number of sites (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.1,
                   help="Dirichlet concentration of the non-IID split (default: %(default)s)")
    p.add_argument("--partition", type=Path, default=None,
                   help="JSON file of per-site train/database/query row lists (the layout of "
                        "shared/data/wiki_ref_partition.json) instead of a Dirichlet draw; --sites and --alpha "
                        "are then ignored")
    p.add_argument("--save-partition", type=Path, default=None, help="write the partition used to this JSON file")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION,
                   help="fraction of each site's training records held out (never trained on) to report its "
                        "validation mAP every evaluated round; 0: none (default: %(default)s)")
    p.add_argument("--select-on-validation", action="store_true",
                   help="each site searches with the shared model of its best validation round so far")
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
    p.add_argument("--shared-lr-decay", type=float, default=train.shared_lr_decay,
                   help="the shared model's lr falls by this factor per round (default: %(default)s)")
    p.add_argument("--share-mode", default=DEFAULT_SHARE_MODE.value, choices=[m.value for m in ShareMode],
                   help="what sites share besides prototype statistics; auto is prototypes+model for pfmh (the "
                        "simulation has no DP) and prototypes for fedhap, as a daemon's plan without DP "
                        "(pfmh_model/methods.py: resolve_share_mode; default: %(default)s)")
    p.add_argument("--search-model", default=DEFAULT_SEARCH_MODEL.value, choices=[m.value for m in SearchModel],
                   help="with --share-mode prototypes+model, what each site searches with after a round: the "
                        "aggregate, the model it trained locally, or a 3:1 blend of the local one and the aggregate "
                        "only where that puts its held-out records clearly nearer their class prototypes, averaged "
                        "over the rounds it was picked (--search-average; pfmh_model/search_choice.py; "
                        "validated needs --val-fraction > 0, else it keeps the aggregate; default: %(default)s)")
    p.add_argument("--search-average", type=float, default=SEARCH_AVERAGE, metavar="CAP",
                   help="with --search-model validated, a site that picks the blend searches with the average "
                        "of its blends over the rounds, the ones before its newest weighing together at most CAP "
                        "(1: the mean of every blend; 0: each round's blend alone; the daemons use the default; "
                        "pfmh_model/search_choice.py; default: %(default)s)")
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
                       ("lr", "lr"), ("batch_size", "batch_size"), ("shared_lr_decay", "shared_lr_decay")):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    # The simulation has no DP, so "auto" weights are resolved for a federation without it (result.json shows them).
    return dataclasses.replace(TrainConfig(), **overrides).resolved(dp=False)


def _methods(text: str) -> list[Method | str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    valid = {m.value for m in Method} | set(BASELINES)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ModelError(f"unknown method(s) {bad or text!r}; choose from {', '.join(sorted(valid))}")
    return [n if n in BASELINES else Method(n) for n in names]


def _sites(args: argparse.Namespace, dataset: MultiModalDataset) -> list[MultiModalDataset]:
    if args.partition is not None:
        index = load_partition(args.partition)
        where = f"file {args.partition}"
    else:
        index = partition_indices(dataset, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
        where = f"Dirichlet alpha {args.alpha}, seed {args.seed}"
    sites = apply_partition(dataset, index)
    if args.save_partition is not None:
        source = f"pfmh-simulate partition of {dataset.name} ({where})"
        save_partition(args.save_partition, index, source=source)
        print(f"wrote the partition to {args.save_partition}")
    print(f"partition: {len(sites)} sites ({where}), train records per site {[len(s.train) for s in sites]}")
    return sites


def _run_baseline(name: str, sites: list[MultiModalDataset], bits: int, seed: int) -> dict:
    started = time.perf_counter()
    codes = baseline_codes(name, sites, bits=bits, seed=seed)
    site_map, mean_site, global_map = site_and_global_map(codes, sites)
    wall = time.perf_counter() - started
    print(f"\n== {name}: {bits} bits (numpy, fitted once)\n{name}: mean site mAP {_fmt(mean_site)}, "
          f"global mAP {_fmt(global_map)} | sites: {' '.join(_fmt(m) for m in site_map)}  ({wall:.1f}s)")
    return {"rounds": [{"round": 0, "site_map": site_map, "mean_site_map": mean_site, "global_map": global_map}],
            "final": _jsonable(evaluate(*union_codes(codes, sites)).to_dict()), "wall_seconds": wall}


def _workers(requested: int, sites: int) -> int:
    if requested < 0:
        raise ModelError(f"--workers {requested} is invalid: need 0 (one per core) or more")
    return max(1, min(requested or (os.cpu_count() or 1), sites))


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    methods = _methods(args.methods)
    dataset = _load(args)
    print(f"dataset: {dataset.describe()}")
    sites = _sites(args, dataset)
    if args.show_partition:
        print(format_histograms(class_histograms(sites, split="train"), dataset.class_names))
    sites, validation = hold_out(sites, args.val_fraction, seed=args.seed)
    if args.val_fraction:
        print(f"validation: {[len(v) for v in validation]} training records per site held out")
    train_cfg = _train_config(args)
    results: dict = {"dataset": dataset.describe(), "sites": len(sites),
                     "alpha": None if args.partition else args.alpha, "seed": args.seed,
                     "partition": str(args.partition) if args.partition else None,
                     "val_fraction": args.val_fraction, "select_on_validation": args.select_on_validation,
                     "search_model": args.search_model, "search_average": args.search_average,
                     "train_config": _jsonable(dataclasses.asdict(train_cfg)), "methods": {}}
    curves, prs = {}, {}
    for method in methods:
        if not isinstance(method, Method):  # a numpy baseline
            results["methods"][method] = _run_baseline(method, sites, args.bits, args.seed)
            continue
        workers = _workers(args.workers, len(sites))
        select = args.select_on_validation and method is not Method.CENTRALIZED
        validate = bool(args.val_fraction)
        cfg = FederationConfig(method=method, rounds=args.rounds, share_mode=ShareMode(args.share_mode),
                               train=train_cfg, eval_every=1 if select else args.eval_every,
                               sites_together=not args.one_site_at_a_time, device=args.device,
                               workers=workers, select_on_validation=select,
                               search_model=SearchModel(args.search_model), search_average=args.search_average)
        print(f"\n== {method.value}: {args.rounds} rounds, {args.bits} bits, "
              f"{train_cfg.personal_epochs}+{train_cfg.shared_epochs} local epochs")
        started = time.perf_counter()
        federation = Federation(sites, cfg, validation=validation if validate else None)

        def on_round(rec: RoundRecord) -> None:
            if args.quiet:
                return
            per_site = " ".join(_fmt(m) for m in rec.site_map)
            val = "" if rec.val_site_map is None else \
                f"\n           validation mean {_fmt(rec.mean_val_map)} | sites: " + \
                " ".join(_fmt(m) for m in rec.val_site_map)
            chosen = "" if rec.selected_round is None else f" (selected rounds {rec.selected_round})"
            if rec.search_models is not None:
                chosen += f" (searching with: {rec.search_models.count('local')} local, " \
                          f"{rec.search_models.count('aggregate')} aggregate)"
            print(f"round {rec.round:3d}/{args.rounds}  mean site mAP {_fmt(rec.mean_site_map)}  "
                  f"global mAP {_fmt(rec.global_map)}  upload {rec.upload_bytes_per_site:,} B/site  "
                  f"{rec.seconds:5.1f}s  | sites: {per_site}{chosen}{val}", flush=True)

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
    for name in results["methods"]:
        if name in BASELINES:  # flat lines beside the deep curves
            rec = results["methods"][name]["rounds"][0]
            curves[name] = [(r, rec["mean_site_map"], rec["global_map"]) for r in (1, args.rounds)]
            final = results["methods"][name]["final"]
            prs[name] = (final["pr_precision"], final["pr_recall"])
    split = f"partition {args.partition.name}" if args.partition else f"alpha {args.alpha}"
    _write(args.out, results, curves, prs, title=f"{dataset.name}: {len(sites)} sites, {split}, {args.bits} bits")
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
