"""Which model a validated pfmh site should search with: the aggregate, its local model, or a blend (issue 14).

Runs one in-process federation (pfmh, prototypes+model, 10 % held out) and, after the rounds named by
``--at``, scores what every site could search with, side by side on the same codes:

- every site with the blend ``w x local + (1 - w) x aggregate`` (``search_choice.blend_states``) for each
  ``w`` of ``--weights`` (0 is the aggregate, 1 the model the site trained);
- the validated rule (``search_choice.choose_search_model``) picking, per site, between the aggregate and
  the blend of weight ``w``, for each ``w`` (``w = 1`` is the rule before ``LOCAL_BLEND``), this round's
  pick alone;
- the same rule with ``w = LOCAL_BLEND``, its picks averaged over the rounds as the federation does
  (``search_choice.next_search_model``, cap ``--search-average``), replayed here every round: what the
  federation itself searches with, printed as ``run``.

Per-site mean mAP and global mAP, one row per candidate. Training is the same for every row: only what
encodes the archives changes.

    python bench/bench_search_blend.py --data ../shared/data/wiki.h5 --alpha 0.1 --seed 0
    python bench/bench_search_blend.py --data ../shared/data/wiki.h5 --partition ../shared/data/wiki_ref_partition.json
    python bench/bench_search_blend.py --data synthetic:mirflickr --rounds 20 --at 10 20
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pfmh_model.data import load_h5
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode, site_and_global_map
from pfmh_model.federation import _site_codes as codes_of  # the federation's own evaluation encoding
from pfmh_model.partition import apply_partition, hold_out, load_partition, partition_indices
from pfmh_model.search_choice import (
    LOCAL_BLEND,
    SEARCH_AVERAGE,
    SearchAverage,
    SearchChoice,
    SearchModel,
    blend_states,
    choose_search_model,
    next_search_model,
    prototype_margin,
)
from pfmh_model.synthetic import generate
from pfmh_model.training import TrainConfig


def _margins(trainer, val, prototypes: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """The held-out records' prototype margins under the shared model the trainer holds (none: empty)."""
    return prototype_margin(codes_of(trainer, val), val.labels, prototypes) if len(val) else np.zeros(0)


def _picks_blend(blend: np.ndarray, aggregate: np.ndarray) -> bool:
    """The validated rule, re-derived here from the margins (not through ``site_search_choice``)."""
    return len(aggregate) >= 2 and choose_search_model(blend, aggregate) is SearchModel.LOCAL


class _KeepingCandidates(Federation):
    """A federation that keeps each round's local states and prototypes for the scoring below, and replays
    the validated rule with its average over the rounds (``replayed``, one state per site)."""

    replayed: list[dict | None]  # None: the aggregate
    replay_averages: list[SearchAverage]

    def _choose_search_models(self, local_states: list[dict], prototypes: np.ndarray) -> None:
        self.kept = ([{k: v.clone() for k, v in s.items()} for s in local_states], np.asarray(prototypes))
        super()._choose_search_models(local_states, prototypes)
        if not hasattr(self, "replayed"):
            self.replayed, self.replay_averages = [None] * len(self.trainers), [SearchAverage()] * len(self.trainers)
        for k, trainer in enumerate(self.trainers):  # they hold the aggregate
            aggregate, val = trainer.shared_state(), self.validation[k]
            blend = blend_states(aggregate, self.kept[0][k], LOCAL_BLEND)
            margins = []
            for state in (aggregate, blend):
                trainer.load_shared_state(state)
                margins.append(_margins(trainer, val, self.kept[1]))
            trainer.load_shared_state(aggregate)
            pick = SearchChoice(SearchModel.LOCAL, blend, None, None) if _picks_blend(margins[1], margins[0]) else \
                SearchChoice(SearchModel.AGGREGATE, None, None, None)
            self.replayed[k], self.replay_averages[k] = next_search_model(self.replay_averages[k], pick,
                                                                          cap=self.config.search_average)


def score_candidates(fed: _KeepingCandidates, weights: list[float]) -> dict[str, tuple[float, float]]:
    """Per-site mean and global mAP of every candidate after the round just run (the trainers hold the aggregate)."""
    locals_, prototypes = fed.kept
    aggregates = [t.shared_state() for t in fed.trainers]
    codes: dict[float, list] = {}
    margins: dict[float, list[np.ndarray]] = {}
    for w in sorted({0.0, *weights}):
        codes[w], margins[w] = [], []
        for k, trainer in enumerate(fed.trainers):
            trainer.load_shared_state(blend_states(aggregates[k], locals_[k], w))
            site, val = fed.eval_sites[k], fed.validation[k]
            codes[w].append((codes_of(trainer, site.query), codes_of(trainer, site.database)))
            margins[w].append(_margins(trainer, val, prototypes))
            trainer.load_shared_state(aggregates[k])
    replayed = []
    for k, trainer in enumerate(fed.trainers):
        trainer.load_shared_state(aggregates[k] if fed.replayed[k] is None else fed.replayed[k])
        site = fed.eval_sites[k]
        replayed.append((codes_of(trainer, site.query), codes_of(trainer, site.database)))
        trainer.load_shared_state(aggregates[k])
    out = {f"validated: blend {LOCAL_BLEND:g}, averaged over rounds": site_and_global_map(replayed,
                                                                                         fed.eval_sites)[1:]}
    for w in weights:
        out[f"every site: blend {w:g}"] = site_and_global_map(codes[w], fed.eval_sites)[1:]
    for w in weights:
        if w == 0.0:
            continue
        picks = [w if _picks_blend(margins[w][k], margins[0.0][k]) else 0.0 for k in range(len(fed.trainers))]
        out[f"validated: aggregate or blend {w:g}"] = site_and_global_map(
            [codes[p][k] for k, p in enumerate(picks)], fed.eval_sites)[1:]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="HDF5 path or synthetic:PRESET")
    p.add_argument("--partition", type=Path, default=None, help="a partition JSON file instead of a Dirichlet draw")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha of the split (default: %(default)s)")
    p.add_argument("--sites", type=int, default=10, help="sites of a Dirichlet split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the weights (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="rounds (default: %(default)s)")
    p.add_argument("--at", type=int, nargs="+", default=[10, 20], help="rounds to score (default: 10 20)")
    p.add_argument("--bits", type=int, default=32, help="code length (default: %(default)s)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, LOCAL_BLEND, 1.0],
                   help="the local model's weights in the blends (default: 0 0.25 0.5 LOCAL_BLEND 1)")
    p.add_argument("--search-average", type=float, default=SEARCH_AVERAGE,
                   help="the federation's cap on the weight of the rounds before (default: %(default)s, the mean "
                        "of every blend; 0: this round's blend alone)")
    p.add_argument("--epochs", type=int, default=None, help="personal and shared epochs (default: TrainConfig's)")
    p.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    args = p.parse_args(argv)
    if any(not 0.0 <= w <= 1.0 for w in args.weights):
        p.error("--weights must lie in [0, 1]")
    if not 0.0 <= args.search_average <= 1.0:
        p.error("--search-average must lie in [0, 1]")
    torch.set_num_threads(1)
    dataset = generate(args.data.split(":", 1)[1], seed=args.seed) if args.data.startswith("synthetic:") \
        else load_h5(args.data)
    index = load_partition(args.partition) if args.partition else \
        partition_indices(dataset, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
    sites, validation = hold_out(apply_partition(dataset, index), 0.1, seed=args.seed)
    epochs = {} if args.epochs is None else {"personal_epochs": args.epochs, "shared_epochs": args.epochs}
    train = TrainConfig(bits=args.bits, seed=args.seed, **epochs)
    fed = _KeepingCandidates(sites, FederationConfig(method=Method.PFMH, share_mode=ShareMode.PROTOTYPES_AND_MODEL,
                                                     rounds=args.rounds, train=train, eval_every=1,
                                                     search_model=SearchModel.VALIDATED,
                                                     search_average=args.search_average), validation=validation)
    split = f"partition {args.partition.name}" if args.partition else f"alpha {args.alpha}, seed {args.seed}"
    print(f"{dataset.name}, {split}, {args.bits} bits; per-site mean mAP / global mAP", flush=True)
    scores: dict[int, dict] = {}

    def on_round(record) -> None:  # noqa: ANN001
        if record.round not in args.at:
            return
        row = {f"run (validated, blend {LOCAL_BLEND:g}, averaged)": (record.mean_site_map, record.global_map),
               **score_candidates(fed, args.weights)}
        scores[record.round] = row
        print(f"\nround {record.round}")
        for name, (site, glob) in row.items():
            print(f"  {name:<40} {site:.3f} / {glob:.3f}", flush=True)

    fed.run(on_round=on_round)
    if args.json is not None:
        args.json.write_text(json.dumps({"data": args.data, "split": split, "scores": scores}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
