"""Which shared model a site searches with when the shared model is federated (``prototypes+model``).

After each round such a site holds two shared models: the one it trained locally this round (starting
from the previous aggregate) and the new aggregate. Which one searches better depends on how skewed the
sites' labels are, which a site cannot know before it federates (docs/BENCHMARKS.md, "Which shared model
a site searches with"):

- near-IID sites (Dirichlet alpha 10): the aggregate has learnt from every site's records, and the local
  model, 10 epochs on ~200 records, is worse (Wiki, 32 bits, seed 0, round 20: 0.700 / 0.692 against
  0.620 / 0.604 per-site / global mAP);
- strong skew (alpha 0.1, one or two classes per site): the average of models each trained on its own
  classes is poor across classes, while the locally trained one is pulled onto the class prototypes for
  the site's own classes (0.798 / 0.529 against 0.824 / 0.742).

So with ``SearchModel.VALIDATED`` each site measures both on records it held out of training and keeps
the local one for its searches only when it is clearly better (``choose_search_model``). Training goes on
from the aggregate either way and nothing uploaded changes: this is a site-local choice of what encodes
its archive.

The local candidate of ``VALIDATED`` is not the local model itself but its blend with the aggregate,
``LOCAL_BLEND`` x local + (1 - ``LOCAL_BLEND``) x aggregate, weight by weight (``blend_states``; the
interpolation of a fine-tuned model with the one it started from, as in WiSE-FT, Wortsman et al., CVPR
2022). Both start from the previous aggregate, so the blend is a model between them. On ten Wiki runs
(Dirichlet alpha 0.1 / 0.5 / 10, the reference partition, tf-idf; two seeds each, round 20) it raised
per-site mAP by 0.009 on average (on 9 of 10 runs, by up to 0.018) and global mAP by 0.002 (-0.005 to
+0.020) over choosing between the local model and the aggregate; docs/BENCHMARKS.md, "Searching with a
blend of the local and the aggregated model".

Where the rule picks the blend, the site does not search with this round's blend alone but with the
mean of every blend it has picked so far (``next_search_model``; stochastic weight averaging, Izmailov et
al. 2018, over the rounds). A skewed site's mAP moves by about 0.01 from round to round as it re-trains on
its few records, and from round 10 on its blends no longer improve; the mean keeps what the rounds agree on
and keeps gaining as it grows. An average that forgot its old blends (the previous default weighed the r-th
blend by r and capped the weight of the ones before at 0.8) fell from round 10 to round 20 at Dirichlet
alpha 0.1 as the recent blends did. Where the rule keeps the aggregate the site searches with it as it is:
averaging the aggregates too cost 0.011 per-site on Wiki at alpha 10, where the aggregate still improves
every round. docs/BENCHMARKS.md, "Searching with an average of the blends over the rounds" and "The mean of
every blend".

The score (``prototype_margin``) is how much nearer, in cosine similarity, a held-out record's code is to
the prototype of its own class than to any other class's, measured against the class prototypes both
candidates were trained towards. Three others were tried on the same runs (docs/BENCHMARKS.md):
- mAP of the held-out records against the site's training records favoured the local model on
  near-IID data, which it fits more tightly (picked at 5 of 10 Wiki sites at alpha 10, where the
  aggregate was 0.1 mAP better);
- the average precision of each record ranking the prototypes saturates at 1 when a site holds one or
  two classes, so at alpha 0.1 ties kept the aggregate at 1-4 of 10 sites and global mAP fell by up to
  0.08 below the local model's;
- the same margin in Hamming distance of the binary codes is coarse (whole bits of 32) and behaved like
  the AP on the MIRFlickr shape.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from pfmh_model.errors import DataError
from pfmh_model.methods import DEFAULT_SEARCH_MODEL, SearchModel

if TYPE_CHECKING:
    from pfmh_model.data import Split
    from pfmh_model.training import SiteTrainer

__all__ = ["DEFAULT_SEARCH_MODEL", "LOCAL_BLEND", "LOCAL_WINS_Z", "SEARCH_AVERAGE", "SearchAverage", "SearchChoice",
           "SearchModel", "blend_states", "choose_search_model", "next_search_model", "prototype_margin",
           "site_search_choice"]


# How many standard errors of the mean paired difference the local model must win by: a mild preference
# for the aggregate, which has seen every site's records. Picked on six runs (docs/BENCHMARKS.md, "Which
# shared model a site searches with"): at 0 every Wiki site at alpha 0.5 took its local model (round 20,
# per-site / global 0.685 / 0.623, against 0.692 / 0.637 at 0.5); at 1.645 MIRFlickr-shaped sites whose
# local model was clearly better kept the aggregate (0.827 / 0.757 against 0.839 / 0.766).
LOCAL_WINS_Z = 0.5

# The local model's weight in the validated local candidate (``blend_states``). Of 0.25 / 0.5 / 0.75 / 1,
# 0.75 was the one that never cost global mAP beyond 0.005 on the ten runs: 0.5 gained more per-site on
# skewed splits but lost 0.02-0.04 global there, 1 (the local model as it is) is what it improves on.
LOCAL_BLEND = 0.75


# The most weight a validated site's average of its blends keeps when it adds one (``next_search_model``).
# 1, no cap: the plain mean of every blend picked. On Wiki (32 bits, 3 seeds, round 20, per-site / global),
# against the previous 0.8 with the blends weighing 1 : 2 : 3 ...: Dirichlet alpha 0.1 0.885 / 0.801 against
# 0.874 / 0.807, the reference partition 0.857 / 0.769 against 0.853 / 0.765, tf-idf 0.925 / 0.873 against
# 0.927 / 0.860, alpha 10 0.702 / 0.688 against 0.703 / 0.689; alpha 0.5 costs, 0.734 / 0.662 against
# 0.747 / 0.678, inside its seed spread at 32 bits (at 64 and 128 bits global mAP falls by 0.024 and 0.020, outside
# it). No mean fell by more than 0.004 from round 10 to 20 (before: -0.011
# per-site at alpha 0.1, -0.017 global on tf-idf). docs/BENCHMARKS.md, "The mean of every blend".
SEARCH_AVERAGE = 1.0


class SearchChoice(NamedTuple):
    """What a validated site searches with after a round: ``state`` is the shared model's state dict to load
    (None: keep the aggregate), and the candidates' mean prototype margins (None without held-out records)."""

    model: SearchModel
    state: dict | None
    local_score: float | None
    aggregate_score: float | None


def blend_states(aggregate: dict, local: dict, weight: float) -> dict:
    """``weight`` x local + (1 - weight) x aggregate for every floating-point entry of two state dicts of one
    model (BatchNorm running statistics too); integer entries (BatchNorm's batch counts) are the local one's.
    """
    if aggregate.keys() != local.keys():
        raise DataError("the two states are not of one model (their keys differ)")
    return {k: torch.lerp(aggregate[k], local[k], weight) if local[k].is_floating_point() else local[k].clone()
            for k in local}


class SearchAverage(NamedTuple):
    """A validated site's running average of the blends it searched with (``next_search_model``): the state
    (None before its first blend) and how many rounds' blends it holds."""

    state: dict | None = None
    rounds: int = 0


def next_search_model(average: SearchAverage, choice: SearchChoice, *,
                      cap: float = SEARCH_AVERAGE) -> tuple[dict | None, SearchAverage]:
    """What a validated site searches with after a round, given this round's ``choice``, and its new average.

    - The choice kept the aggregate (``choice.state`` None): the aggregate (None), which has seen every site's
      records and is the newest; the average is kept, unchanged, for the site's next blend.
    - The choice is the blend: ``w`` x the average + (1 - ``w``) x the blend, ``w = min(cap, n / (n + 1))``
      for the ``n`` blends already in the average. Without a cap (``cap`` 1, the default) that is the plain
      mean of every blend picked; once ``n / (n + 1)`` passes a lower ``cap`` the average decays exponentially;
      ``cap`` 0 searches with this round's blend alone.

    The state returned is the new average's own (one object, which nothing mutates); neither aliases the
    inputs.
    """
    if not 0.0 <= cap <= 1.0:
        raise DataError(f"the averaging cap must lie in [0, 1], not {cap}")
    if choice.state is None:
        return None, average
    n = average.rounds if average.state is not None else 0
    weight = min(cap, n / (n + 1))
    state = {k: v.clone() for k, v in choice.state.items()} if weight == 0.0 else \
        blend_states(average.state, choice.state, 1.0 - weight)
    return state, SearchAverage(state, n + 1)


def prototype_margin(codes: np.ndarray, labels: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Each held-out record's cosine margin to the class prototypes: (the highest cosine similarity of its
    continuous code to the prototype of one of its labels) - (the highest to the prototype of a class it
    lacks), in [-2, 2]. The same geometry the training's prototype-contrastive term pulls on.

    Records without a label, or with every label, are left out.

    Shape:
        - codes: (n, b) continuous codes (the model's tanh outputs)
        - labels: (n, C) multi-hot
        - prototypes: (C, b)
        - output: (m,) float64, m <= n
    """
    codes = np.asarray(codes, dtype=np.float64)
    labels, prototypes = np.asarray(labels) > 0, np.asarray(prototypes, dtype=np.float64)
    if prototypes.ndim != 2 or labels.ndim != 2 or codes.ndim != 2 or labels.shape[1] != prototypes.shape[0] or \
            len(labels) != len(codes):
        raise DataError(f"codes {codes.shape}, labels {labels.shape} and prototypes {prototypes.shape} do not agree")
    if codes.shape[1] != prototypes.shape[1]:
        raise DataError(f"codes have {codes.shape[1]} bits, prototypes {prototypes.shape[1]}")
    unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
    centres = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    cosine = unit @ centres.T  # (n, C)
    kept = labels.any(axis=1) & ~labels.all(axis=1)
    own = np.where(labels, cosine, -np.inf).max(axis=1, initial=-np.inf)
    other = np.where(~labels, cosine, -np.inf).max(axis=1, initial=-np.inf)
    return (own - other)[kept]


def choose_search_model(local: np.ndarray, aggregate: np.ndarray, *, z: float = LOCAL_WINS_Z) -> SearchModel:
    """LOCAL when, on the same held-out records, the local model's score (``prototype_margin``) beats the
    aggregate's by more than ``z`` standard errors of the mean paired difference; otherwise the aggregate (it
    has seen every site's records). Fewer than two records keep the aggregate.

    A paired comparison against its own noise, not a plain comparison of means: with ~20 held-out records
    a site's mean moves by a few hundredths from one draw to the next.
    """
    local, aggregate = np.asarray(local, dtype=np.float64), np.asarray(aggregate, dtype=np.float64)
    if local.shape != aggregate.shape:
        raise DataError(f"{local.shape} and {aggregate.shape} scores: need one pair per held-out record")
    if len(local) < 2:
        return SearchModel.AGGREGATE
    diff = local - aggregate
    mean = float(diff.mean())
    se = float(diff.std(ddof=1)) / np.sqrt(len(diff))
    return SearchModel.LOCAL if mean > 0 and mean > z * se else SearchModel.AGGREGATE


def site_search_choice(trainer: SiteTrainer, local_state: dict, validation: Split | None,
                       prototypes: np.ndarray) -> SearchChoice:
    """One site's validated choice after a round, its trainer holding the new aggregate and ``local_state``
    what it trained: the aggregate, or the blend of the two (``LOCAL_BLEND``) when that is clearly better.

    The trainer is left holding the aggregate; the caller loads the returned ``state`` for searching if it
    is not None. Both the simulation and the site daemon call this.

    Args:
        prototypes: (C, b) the class prototypes both candidates were trained towards this round.
    """
    if validation is None or len(validation) == 0:
        return SearchChoice(SearchModel.AGGREGATE, None, None, None)
    aggregate = trainer.shared_state()
    blend = blend_states(aggregate, local_state, LOCAL_BLEND)
    aggregate_scores = prototype_margin(trainer.encode(validation, model="shared"), validation.labels, prototypes)
    trainer.load_shared_state(blend)
    try:
        local_scores = prototype_margin(trainer.encode(validation, model="shared"), validation.labels, prototypes)
    finally:
        trainer.load_shared_state(aggregate)
    if len(local_scores) == 0:
        return SearchChoice(SearchModel.AGGREGATE, None, None, None)
    choice = choose_search_model(local_scores, aggregate_scores)
    return SearchChoice(choice, blend if choice is SearchModel.LOCAL else None, float(local_scores.mean()),
                        float(aggregate_scores.mean()))
