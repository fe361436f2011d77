"""``pfmh-datagen``: write a synthetic dataset, or inspect a dataset file and its non-IID split.

Examples::

    pfmh-datagen --preset mirflickr --seed 0 --out data/synthetic_mirflickr.h5
    pfmh-datagen --inspect data/synthetic_mirflickr.h5 --sites 10 --alpha 0.1 --seed 0

User mistakes (bad path, unreadable or incomplete file, bad option) print one ``error:`` line to
stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pfmh_model.data import SPLIT_KEYS, load_h5, save_h5
from pfmh_model.errors import ModelError
from pfmh_model.partition import class_histograms, format_histograms, partition_dataset
from pfmh_model.synthetic import PRESETS, generate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfmh-datagen",
        description="Write a synthetic multi-modal hashing dataset (HDF5, I/T/L layout), "
        "or inspect a dataset file and print its per-site class histograms.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mirflickr",
                        help="synthetic dataset to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (generation, or the partition with "
                        "--inspect; default: %(default)s)")
    parser.add_argument("--out", type=Path, help="output file (default: data/synthetic_<preset>.h5)")
    parser.add_argument("--inspect", type=Path, metavar="FILE", help="load FILE, describe it and print the "
                        "per-site class histograms instead of generating")
    parser.add_argument("--sites", type=int, default=10, help="sites for --inspect (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="Dirichlet alpha for --inspect (default: %(default)s)")
    parser.add_argument("--split", choices=list(SPLIT_KEYS), default="train",
                        help="split whose histogram --inspect prints (default: %(default)s)")
    return parser


def _generate(args: argparse.Namespace) -> int:
    out: Path = args.out or Path("data") / f"synthetic_{args.preset}.h5"
    spec = PRESETS[args.preset]
    print(f"generating preset {args.preset!r} (seed {args.seed}): {spec.n_train} train / {spec.n_database} "
          f"database / {spec.n_query} query, image {spec.image_dim}-d, text {spec.text_dim}-d, "
          f"{spec.num_classes} labels", flush=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output directory {out.parent}: {exc.strerror or exc}; choose a "
                      "writable --out") from None
    start = time.perf_counter()
    dataset = generate(args.preset, seed=args.seed)
    print(f"generated in {time.perf_counter() - start:.1f} s; writing {out} ...", flush=True)
    start = time.perf_counter()
    try:
        save_h5(dataset, out)
    except OSError as exc:
        raise OSError(f"cannot write {out}: {exc.strerror or exc}; choose a writable --out") from None
    size_mib = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mib:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    print(dataset.describe())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    dataset = load_h5(args.inspect)
    print(dataset.describe())
    sites = partition_dataset(dataset, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
    sizes = ", ".join(f"{len(s.train)}/{len(s.database)}/{len(s.query)}" for s in sites)
    print(f"{args.sites} sites, Dirichlet alpha {args.alpha}, seed {args.seed}; "
          f"train/database/query per site: {sizes}")
    print(f"label counts per site ({args.split} split; a record counts once per label):")
    print(format_histograms(class_histograms(sites, args.split), dataset.class_names))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    args = _parser().parse_args(argv)
    try:
        return _inspect(args) if args.inspect is not None else _generate(args)
    except (ModelError, OSError) as exc:
        print(f"pfmh-datagen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
