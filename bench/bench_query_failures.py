"""Where per-site mAP is lost: the distribution of each query's AP, pfmh against the centralised ridge hash (issue 14).

On Wiki tf-idf the centralised ridge hash beats pfmh on per-site mAP at 64 and 128 bits while pfmh wins
global mAP by far. This script asks whether pfmh loses on many queries a little or on a few entirely. It
runs one partition, the centralised ridge hash (``pfmh_model.baselines``) and one in-process pfmh
federation with the production defaults (as ``bench/bench_accuracy.py`` runs it), then prints, per method:

- per-site mean mAP and global mAP, as in every table;
- each query's AP against its own site's archive, pooled over the sites: the share of queries with AP
  below 0.2 ("failures"), between 0.2 and 0.9, and at least 0.9, and the mAP each band costs, i.e. the sum of
  ``1 - AP`` over its queries divided by all queries;
- how many failures the two methods share and how many are one method's alone;
- each method's failure rate among the queries whose class is rare at their site (under ``RARE`` of the
  site's training records share a label with them) and among the others.

Each query's AP follows ``pfmh_model.evaluation``'s definition (its relevance, the stable Hamming ranking of
``pfmh_model.retrieval``, all ranks); the script checks that their per-site means equal
``mean_average_precision`` before it prints.

    python bench/bench_query_failures.py --data ../shared/data/wiki_tfidf.h5 --bits 128 --seed 0
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from pfmh_model.baselines import baseline_codes
from pfmh_model.data import load_h5
from pfmh_model.errors import DataError
from pfmh_model.evaluation import mean_average_precision, relevance
from pfmh_model.federation import Federation, FederationConfig, Method, site_and_global_map
from pfmh_model.methods import DEFAULT_SEARCH_MODEL, DEFAULT_VALIDATION_FRACTION, SearchModel, ShareMode
from pfmh_model.packed_codes import pack_codes
from pfmh_model.partition import apply_partition, hold_out, partition_indices
from pfmh_model.retrieval import hamming_rank
from pfmh_model.trainer_factory import train_config

FAILURE, GOOD = 0.2, 0.9  # band edges of a query's AP
RARE = 0.05  # a query's class is rare at its site below this share of the site's training records


def query_aps(query: np.ndarray, archive: np.ndarray, query_labels: np.ndarray,
              archive_labels: np.ndarray) -> np.ndarray:
    """Each query's AP over the full Hamming ranking (``retrieval.hamming_rank``); NaN for a query with no
    relevant item (``evaluation.relevance``)."""
    out = np.full(len(query), np.nan)
    if len(query) == 0 or len(archive) == 0:
        return out
    ranked = relevance(query_labels, archive_labels)
    order = hamming_rank(pack_codes(query), pack_codes(archive))
    for i, rel in enumerate(np.take_along_axis(ranked, order, axis=1)):
        if rel.any():
            hits = np.cumsum(rel)[rel]
            out[i] = float(np.mean(hits / (np.flatnonzero(rel) + 1)))
    return out


def pooled_aps(codes: list[tuple[np.ndarray, np.ndarray]], sites) -> np.ndarray:  # noqa: ANN001
    per_site = []
    for (q, db), site in zip(codes, sites, strict=True):
        aps = query_aps(q, db, site.query.labels, site.database.labels)
        if len(q) and len(db) and not np.all(np.isnan(aps)):
            expected = mean_average_precision(q, db, site.query.labels, site.database.labels)
            if abs(np.nanmean(aps) - expected) > 1e-6:
                raise AssertionError(f"per-query AP mean {np.nanmean(aps):.6f} != mAP {expected:.6f}")
        per_site.append(aps)
    aps = np.concatenate(per_site)
    return aps[~np.isnan(aps)]


def training_shares(sites) -> np.ndarray:  # noqa: ANN001
    """For each counted query (``pooled_aps``' order), the share of its site's training records that share a
    label with it: how familiar the site's own training was with the query's class."""
    out = []
    for site in sites:
        counted = relevance(site.query.labels, site.database.labels).any(axis=1)
        familiar = relevance(site.query.labels, site.train.labels).mean(axis=1) if len(site.train.labels) else \
            np.zeros(len(site.query.labels))
        out.append(familiar[counted])
    return np.concatenate(out)


def describe(name: str, codes, sites) -> np.ndarray:  # noqa: ANN001
    _, mean_site, global_map = site_and_global_map(codes, sites)
    aps = pooled_aps(codes, sites)
    bands = [("AP < 0.2", aps < FAILURE), ("0.2-0.9", (aps >= FAILURE) & (aps < GOOD)), ("AP >= 0.9", aps >= GOOD)]
    parts = ", ".join(f"{label} {mask.mean():.3f} of queries, costs {((1 - aps) * mask).sum() / len(aps):.3f}"
                      for label, mask in bands)
    print(f"{name:<14} per-site {mean_site:.3f} global {global_map:.3f} | {len(aps)} queries, mean AP "
          f"{aps.mean():.3f}: {parts}", flush=True)
    return aps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an HDF5 dataset")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the weights (default: %(default)s)")
    p.add_argument("--bits", type=int, default=128, help="code length (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="rounds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="personal and shared epochs (default: %(default)s)")
    p.add_argument("--search-model", choices=[m.value for m in SearchModel], default=DEFAULT_SEARCH_MODEL.value,
                   help="what each pfmh site searches with (default: %(default)s, the production default)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        dataset = load_h5(args.data)
    except (DataError, OSError) as exc:
        p.error(f"--data {args.data}: {exc}")
    index = partition_indices(dataset, num_sites=10, alpha=args.alpha, seed=args.seed)
    sites, validation = hold_out(apply_partition(dataset, index), DEFAULT_VALIDATION_FRACTION, seed=args.seed)
    print(f"{dataset.name}, alpha {args.alpha}, seed {args.seed}, {args.bits} bits, round {args.rounds}, "
          f"pfmh searching with: {args.search_model}", flush=True)
    ridge = describe("ridge-central", baseline_codes("ridge-central", sites, bits=args.bits, seed=args.seed), sites)
    train = train_config({"personal_epochs": args.epochs, "shared_epochs": args.epochs, "bits": args.bits,
                          "seed": args.seed})
    cfg = FederationConfig(method=Method.PFMH, rounds=args.rounds, train=train, eval_every=args.rounds,
                           share_mode=ShareMode.PROTOTYPES_AND_MODEL, search_model=SearchModel(args.search_model))
    federation = Federation(sites, cfg, validation=validation)
    federation.run()
    pfmh = describe("pfmh", federation.site_codes(), sites)
    both = int(np.sum((ridge < FAILURE) & (pfmh < FAILURE)))
    print(f"failures (AP < {FAILURE}): both {both}, pfmh only {int(np.sum((pfmh < FAILURE) & (ridge >= FAILURE)))}, "
          f"ridge only {int(np.sum((ridge < FAILURE) & (pfmh >= FAILURE)))}")
    rare = training_shares(sites) < RARE
    for name, aps in (("ridge-central", ridge), ("pfmh", pfmh)):
        print(f"{name:<14} failure rate: {np.mean(aps[rare] < FAILURE):.3f} of the {int(rare.sum())} queries whose "
              f"class is under {RARE:.0%} of their site's training records, {np.mean(aps[~rare] < FAILURE):.3f} of "
              f"the {int((~rare).sum())} others", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
