"""Accuracy table: per-site mean mAP and global mAP per dataset, method and code length (in-process runs).

Each cell is one ``pfmh_model.federation.Federation`` run (K sites, Dirichlet alpha, the given rounds
and local epochs), repeated over seeds (mean +- std). Runs go to a process pool with one torch
thread each. Results are appended to a JSON-lines file as they finish, so an interrupted sweep keeps
what it did and ``--resume`` skips finished cells.

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


def _run_cell(cell: dict) -> dict:
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from pfmh_model.data import load_h5
    from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
    from pfmh_model.partition import partition_dataset
    from pfmh_model.synthetic import generate
    from pfmh_model.training import TrainConfig

    source = cell["source"]
    dataset = generate(source.split(":", 1)[1], seed=cell["seed"]) if source.startswith("synthetic:") \
        else load_h5(source)
    sites = partition_dataset(dataset, num_sites=cell["sites"], alpha=cell["alpha"], seed=cell["seed"])
    train = dataclasses.replace(TrainConfig(), bits=cell["bits"], seed=cell["seed"],
                                personal_epochs=cell["epochs"], shared_epochs=cell["epochs"])
    method, _, share_mode = cell["method"].partition(":")
    cfg = FederationConfig(method=Method(method), rounds=cell["rounds"], train=train, eval_every=cell["rounds"],
                           share_mode=ShareMode(share_mode or ShareMode.PROTOTYPES_AND_MODEL))
    started = time.perf_counter()
    result = Federation(sites, cfg).run()
    last = result.rounds[-1]
    return {**cell, "mean_site_map": last.mean_site_map, "global_map": last.global_map,
            "seconds": time.perf_counter() - started,
            "records_per_second_per_site": result.train_records_per_second}


def _key(cell: dict) -> tuple:
    return tuple(cell[k] for k in ("dataset", "method", "bits", "alpha", "seed", "rounds", "epochs", "sites"))


def _table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["alpha"], row["method"], row["bits"]), []).append(row)
    lines = ["| dataset | alpha | method | bits | per-site mean mAP | global mAP | seeds | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for (dataset, alpha, method, bits), items in sorted(groups.items()):
        site = [r["mean_site_map"] for r in items]
        glob = [r["global_map"] for r in items]
        lines.append(f"| {dataset} | {alpha} | {method} | {bits} | {_spread(site)} | {_spread(glob)} | {len(items)} | "
                     f"{np.mean([r['seconds'] for r in items]):.0f} |")
    return "\n".join(lines)


def _pivot(rows: list[dict]) -> str:
    """Per (dataset, alpha), one methods x bits table per metric (global, then per-site mAP), mean ± std over seeds."""
    out = []
    for dataset, alpha in sorted({(r["dataset"], r["alpha"]) for r in rows}):
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
    p.add_argument("--methods", default="pfmh,pfmh:prototypes,fedavg,local,centralized,fedhap",
                   help="comma-separated METHOD[:SHARE_MODE]; share mode prototypes or prototypes+model "
                        "(the default, as in the paper) for pfmh and fedhap")
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
    for spec in args.methods.split(","):
        method, _, share_mode = spec.partition(":")
        if method not in {"pfmh", "fedavg", "local", "centralized", "fedhap"} or \
                share_mode not in {"", "prototypes", "prototypes+model"}:
            p.error(f"--methods: {spec!r} is not METHOD[:SHARE_MODE]")
    cells = [{"dataset": name, "source": sources[name], "method": m, "bits": b, "alpha": a, "seed": s,
              "rounds": args.rounds, "epochs": args.epochs, "sites": args.sites}
             for name, m, b, a, s in itertools.product(sources, args.methods.split(","), args.bits, args.alphas,
                                                       args.seeds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.resume and args.out.exists() else []
    finished = {_key(r) for r in done}
    todo = [c for c in cells if _key(c) not in finished]
    print(f"{len(cells)} cells, {len(todo)} to run on {args.workers} workers", flush=True)
    rows = [r for r in done if _key(r) in {_key(c) for c in cells}]
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
    print(_table(rows))
    print(_pivot(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
