"""Accuracy table: per-site mean mAP and global mAP per dataset, method and code length (in-process runs).

Each cell is one ``pfmh_model.federation.Federation`` run (K sites, Dirichlet alpha or a partition
file, the given rounds and local epochs), or one fit of a numpy baseline (``ridge-local``,
``ridge-central``, ``lsh``: ``pfmh_model.baselines``) on the same partition, repeated over seeds
(mean +- std). Each site holds out ``--val-fraction`` of its training records (for every method, the
baselines included); deep methods report their validation mAP. A method spec is
METHOD[:SHARE_MODE][@OPTION] (``@select``: each site searches with its best-validation shared model;
``@aggregate``, ``@local``, ``@validated``: what pfmh with prototypes+model searches with,
``pfmh_model.search_choice``).
Deep cells are evaluated every 10 rounds too (``curve``: (round, per-site, global)), so round 10 vs
round 20 is read off one run. Runs go to a process pool with one torch thread each. Results are
appended to a JSON-lines file as they finish, so an interrupted sweep keeps what it did and
``--resume`` skips finished cells.

Example (the README/BENCHMARKS table):
    python bench/bench_accuracy.py --data wiki=../shared/data/wiki.h5 --methods pfmh,fedavg,local,centralized \
        --bits 16 32 64 128 --rounds 20 --out runs/bench_accuracy.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pfmh_model.methods import DEFAULT_SEARCH_MODEL, DEFAULT_VALIDATION_FRACTION, SearchModel, ShareMode

_OPTIONS = {"", "select", *(m.value for m in SearchModel)}  # after the @ of a method spec


def _run_cell(cell: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from pfmh_model.baselines import BASELINES, baseline_codes
    from pfmh_model.data import load_h5
    from pfmh_model.federation import Federation, FederationConfig, Method, site_and_global_map
    from pfmh_model.partition import apply_partition, hold_out, load_partition, partition_indices
    from pfmh_model.synthetic import generate

    source = cell["source"]
    dataset = generate(source.split(":", 1)[1], seed=cell["seed"]) if source.startswith("synthetic:") \
        else load_h5(source)
    index = load_partition(cell["partition"]) if cell.get("partition") else partition_indices(
        dataset, num_sites=cell["sites"], alpha=cell["alpha"], seed=cell["seed"])
    sites, validation = hold_out(apply_partition(dataset, index), cell.get("val_fraction", 0.0), seed=cell["seed"])
    started = time.perf_counter()
    if cell["method"] in BASELINES:
        _, mean_site, global_map = site_and_global_map(
            baseline_codes(cell["method"], sites, bits=cell["bits"], seed=cell["seed"]), sites)
        return {**cell, "mean_site_map": mean_site, "global_map": global_map,
                "seconds": time.perf_counter() - started, "process_seconds": time.process_time()}
    spec, _, option = cell["method"].partition("@")
    method, _, share_mode = spec.partition(":")
    select = option == "select"
    search_model = SearchModel(option) if option in {m.value for m in SearchModel} else DEFAULT_SEARCH_MODEL
    from pfmh_model.trainer_factory import train_config

    epochs = {"personal_epochs": cell["epochs"], "shared_epochs": cell["epochs"]}
    train = train_config({**epochs, **(cell.get("train") or {}), "bits": cell["bits"], "seed": cell["seed"]})
    cfg = FederationConfig(method=Method(method), rounds=cell["rounds"], train=train,
                           eval_every=1 if select else min(10, cell["rounds"]), select_on_validation=select,
                           share_mode=ShareMode(share_mode or ShareMode.PROTOTYPES_AND_MODEL),
                           search_model=search_model)
    result = Federation(sites, cfg, validation=validation if any(len(v) for v in validation) else None).run()
    last = result.rounds[-1]
    curve = [(r.round, r.mean_site_map, r.global_map, r.mean_val_map, r.current_maps) for r in result.rounds
             if r.global_map is not None]
    return {**cell, "mean_site_map": last.mean_site_map, "global_map": last.global_map,
            "mean_val_map": last.mean_val_map, "curve": curve, "selected_round": last.selected_round,
            "seconds": time.perf_counter() - started, "process_seconds": time.process_time(),
            "records_per_second_per_site": result.train_records_per_second}


def _key(cell: dict) -> tuple:
    return tuple(cell.get(k) for k in ("dataset", "method", "bits", "alpha", "seed", "rounds", "epochs", "sites",
                                       "partition", "val_fraction")) + (json.dumps(cell.get("train") or {}),)


def _table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["alpha"], row["method"], row["bits"]), []).append(row)
    lines = ["| dataset | alpha | method | bits | per-site mean mAP | global mAP | at round 10: per-site / global "
             "| @select: without selection, per-site / global | validation mAP | seeds | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, alpha, method, bits), items in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        site = [r["mean_site_map"] for r in items]
        glob = [r["global_map"] for r in items]
        at10 = [c for r in items for c in r.get("curve", []) if c[0] == 10 and r["rounds"] > 10]
        mid = f"{_spread([c[1] for c in at10])} / {_spread([c[2] for c in at10])}" if at10 else "-"
        val = _spread([r["mean_val_map"] for r in items if r.get("mean_val_map") is not None]) or "-"
        plain = [r["curve"][-1][4] for r in items if r.get("curve") and len(r["curve"][-1]) > 4 and r["curve"][-1][4]]
        unselected = f"{_spread([p[0] for p in plain])} / {_spread([p[1] for p in plain])}" if plain else "-"
        lines.append(f"| {dataset} | {alpha} | {method} | {bits} | {_spread(site)} | {_spread(glob)} | {mid} | "
                     f"{unselected} | {val} | "
                     f"{len(items)} | {np.mean([r['seconds'] for r in items]):.0f} |")
    return "\n".join(lines)


def _pivot(rows: list[dict]) -> str:
    """Per (dataset, alpha), one methods x bits table per metric (global, then per-site mAP), mean ± std over seeds."""
    out = []
    for dataset, alpha in sorted({(r["dataset"], r["alpha"]) for r in rows}, key=lambda k: tuple(map(str, k))):
        mine = [r for r in rows if r["dataset"] == dataset and r["alpha"] == alpha]
        bits = sorted({r["bits"] for r in mine})
        seeds = sorted({len([r for r in mine if (r["method"], r["bits"]) == key])
                        for key in {(r["method"], r["bits"]) for r in mine}})
        shown = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        for metric, title in (("global_map", "global mAP"), ("mean_site_map", "per-site mean mAP")):
            out += [f"\n{dataset}, alpha {alpha}: {title} ({shown} seed{'' if shown == '1' else 's'} per cell, "
                    "mean ± std)",
                    "| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---" * (len(bits) + 1) + "|"]
            for method in sorted({r["method"] for r in mine}):
                cells = [_spread([r[metric] for r in mine if r["method"] == method and r["bits"] == b]) or "-"
                         for b in bits]
                out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _label(row: dict) -> str:
    """The method as the tables show it: with its TrainConfig overrides, if any (baselines have none)."""
    train = row.get("train") or {}
    if not train or row["method"] in ("ridge-local", "ridge-central", "lsh"):
        return row["method"]
    return row["method"] + " " + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(train.items()))


def _spread(values: list[float]) -> str:
    """Mean, with the population std when there is more than one seed ("" for none)."""
    a = np.array(values)
    if not len(a):
        return ""
    return f"{a.mean():.3f} ± {a.std():.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["synthetic=synthetic:mirflickr"],
                   help="NAME=PATH (HDF5) or NAME=synthetic:PRESET")
    p.add_argument("--methods", default="pfmh,pfmh:prototypes,fedavg,local,centralized,fedhap,ridge-local,"
                                        "ridge-central,lsh",
                   help="comma-separated METHOD[:SHARE_MODE][@OPTION] or a baseline (ridge-local, ridge-central, "
                        "lsh); share mode prototypes, prototypes+model (the default, as in the paper; a plan's auto "
                        "gives it to pfmh without DP, prototypes to fedhap) or auto, for pfmh and fedhap; "
                        "@select: per-site selection of the search model's round on the validation slice; "
                        "@aggregate, @local, @validated: the search model of pfmh with prototypes+model "
                        "(pfmh_model/search_choice.py; default validated)")
    p.add_argument("--partition", nargs="+", default=[], metavar="NAME=FILE",
                   help="use this partition file (per-site row lists) for dataset NAME instead of Dirichlet "
                        "draws; its cells show alpha 'file'")
    p.add_argument("--train", nargs="+", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides for every deep cell, as in a site's [train] table (VALUE is JSON, "
                        "e.g. dropout=0.3 or shared_epochs=5; they win over --epochs)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION,
                   help="fraction of each site's training records held out for validation (every method)")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10, help="local epochs for each of personal and shared")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    p.add_argument("--out", type=Path, default=Path("runs/bench_accuracy.jsonl"))
    p.add_argument("--resume", action="store_true", help="skip cells already in --out")
    args = p.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.data)
    partitions = dict(item.split("=", 1) for item in args.partition)
    if set(partitions) - set(sources):
        p.error(f"--partition names {sorted(set(partitions) - set(sources))} are not --data names")
    for spec in args.methods.split(","):
        body, _, option = spec.partition("@")
        method, _, share_mode = body.partition(":")
        if spec in {"ridge-local", "ridge-central", "lsh"}:
            continue
        if method not in {"pfmh", "fedavg", "local", "centralized", "fedhap"} or \
                option not in _OPTIONS or \
                share_mode not in {"", *(m.value for m in ShareMode)}:
            p.error(f"--methods: {spec!r} is not METHOD[:SHARE_MODE][@OPTION] or a baseline")
    train = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.train)}
    cells = [{"dataset": name, "source": sources[name], "method": m, "bits": b, "train": train,
              "alpha": "file" if name in partitions else a, "seed": s, "rounds": args.rounds, "epochs": args.epochs,
              "sites": args.sites, "partition": partitions.get(name), "val_fraction": args.val_fraction}
             for name, m, b, a, s in itertools.product(sources, args.methods.split(","), args.bits,
                                                       args.alphas, args.seeds)]
    cells = list({_key(c): c for c in cells}.values())  # a partition file makes the alphas one cell
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.resume and args.out.exists() else []
    finished = {_key(r) for r in done}
    todo = [c for c in cells if _key(c) not in finished]
    print(f"{len(cells)} cells, {len(todo)} to run on {args.workers} workers", flush=True)
    rows = list(done)  # with --resume the tables show every row of --out, this sweep's and earlier ones
    with ProcessPoolExecutor(args.workers) as pool, args.out.open("a") as sink:
        futures = {pool.submit(_run_cell, c): c for c in todo}
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"{row['dataset']} {row['method']:11s} {row['bits']:3d} bits alpha {row['alpha']} "
                  f"seed {row['seed']}: site {row['mean_site_map']:.3f} global {row['global_map']:.3f} "
                  f"({row['seconds']:.0f}s)", flush=True)
    shown = [{**r, "method": _label(r)} for r in rows]
    print(_table(shown))
    print(_pivot(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
