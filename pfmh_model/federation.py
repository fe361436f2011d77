"""In-process federation: K sites in one process, one round loop, five methods.

Methods (``Method``):
- ``pfmh``: personal model (L_sim + L_q) -> personal prototypes -> completion with the global
  prototypes -> shared model (L_sim + L_q + L_kd + L_con) -> upload prototype statistics (and the
  shared model in ``prototypes+model`` mode) -> aggregate -> broadcast (PFMH.md, one round). With the
  shared model federated (``share_mode`` auto resolves to it here, as there is no DP in-process), each
  site then searches with the aggregate or the model it trained this round (``search_model``,
  ``pfmh_model.search_choice``; validated: the aggregate or the average of its blends over the rounds).
- ``fedavg``: one shared model per site trained with L_sim + L_q, FedAvg each round, no prototypes.
- ``local``: as fedavg without any aggregation (each site alone).
- ``centralized``: PFMH on the pooled training data of all sites (one site), the upper reference.
- ``fedhap``: the FedHAP comparison method (``pfmh_model.fedhap``): the shared model trained against one
  global +-1 code per class with a local discriminator; class-code votes travel in the prototype part
  of the upload, the server takes their bitwise majority; FedAvg of the model in ``prototypes+model`` mode.

fedavg, local and fedhap train for personal_epochs + shared_epochs per round, the same number of passes
over the data as pfmh, so the comparison spends equal local compute.

With ``sites_together`` (the default) the K sites' models of pfmh, fedavg, local and centralized
are trained as one batched computation (``pfmh_model.site_batch``), equal to training them one
after another up to float rounding; fedhap always trains one site at a time. With ``workers`` > 1
the sites are spread over that many one-thread processes (``pfmh_model.site_workers``).

The aggregation step is pluggable (``sum_step``): it receives exactly the vectors sites would
upload and returns their sum, so the networked coordinator reuses ``aggregate_global`` unchanged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pfmh_model.aggregation import GlobalState, SiteUpload, SumStep, UploadLayout, sum_vectors
from pfmh_model.data import MultiModalDataset, Split
from pfmh_model.device import check_device_spec
from pfmh_model.errors import ConfigError
from pfmh_model.evaluation import evaluate, mean_average_precision
from pfmh_model.fedhap import FedHAPTrainer
from pfmh_model.fedhap_config import FedHAPConfig
from pfmh_model.local_round import (
    make_upload,
    site_batch_seed,
    train_fedavg_site,
    train_fedavg_sites,
    train_fedhap_site,
    train_pfmh_site,
    train_pfmh_sites,
)
from pfmh_model.methods import (
    DEFAULT_SHARE_MODE,
    Method,
    ShareMode,
    keeps_local_model,
    resolve_share_mode,
    shared_lr_is_constant,
)
from pfmh_model.search_choice import (
    DEFAULT_SEARCH_MODEL,
    SEARCH_AVERAGE,
    SearchAverage,
    SearchModel,
    next_search_model,
    site_search_choice,
)
from pfmh_model.server_step import aggregator, initial_prototypes
from pfmh_model.site_workers import SiteWorkers
from pfmh_model.training import SiteTrainer, TrainConfig, flatten_state, unflatten_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederationConfig:
    """Knobs of one in-process run (the per-site training knobs live in ``train``)."""

    method: Method = Method.PFMH
    rounds: int = 10
    share_mode: ShareMode = DEFAULT_SHARE_MODE
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int = 1
    fedhap: FedHAPConfig = field(default_factory=FedHAPConfig)
    sites_together: bool = True
    device: str = "cpu"
    workers: int = 1
    # With validation slices given to Federation: each site searches with the shared model of the
    # round where its validation mAP was highest so far (training goes on from the current one;
    # uploads are unchanged). See ``Federation.__init__``.
    select_on_validation: bool = False
    # pfmh with prototypes+model: which of a site's two shared models it searches with after a round, the
    # aggregate or the one it trained locally (``pfmh_model.search_choice``). Ignored where the model is
    # not shared: such a site has one shared model.
    search_model: SearchModel = DEFAULT_SEARCH_MODEL
    # With ``search_model`` validated: the cap on the weight of a site's earlier blends in the average it
    # searches with (``search_choice.next_search_model``); 1 (the default) is the mean of every blend, 0
    # searches with each round's blend alone.
    search_average: float = SEARCH_AVERAGE

    def __post_init__(self) -> None:
        check_device_spec(self.device)
        object.__setattr__(self, "search_model", SearchModel(self.search_model))
        # The in-process federation has no DP (bench/bench_dp_utility.py runs the daemon's DP round itself).
        object.__setattr__(self, "share_mode", resolve_share_mode(ShareMode(self.share_mode), method=self.method,
                                                                  dp=False))
        object.__setattr__(self, "train", self.train.resolved(dp=False))
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not 0.0 <= self.search_average <= 1.0:
            raise ConfigError(f"search_average must lie in [0, 1], got {self.search_average}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def shares_model(self) -> bool:
        if self.method is Method.FEDAVG:
            return True
        return self.method in (Method.PFMH, Method.FEDHAP) and self.share_mode is ShareMode.PROTOTYPES_AND_MODEL

    @property
    def keeps_local_model(self) -> bool:
        """Whether a site may search with its locally trained shared model instead of the aggregate."""
        return keeps_local_model(self.method, self.share_mode, self.search_model)


@dataclass
class RoundRecord:
    """Metrics of one round (mAP values use the binary codes of each site's shared model)."""

    round: int
    site_map: list[float | None]
    mean_site_map: float
    global_map: float | None
    seconds: float
    upload_bytes_per_site: int
    losses: dict[str, float]
    # Each site's validation mAP this round (its held-out slice of training records against the rest
    # of them, codes of its current shared model); None without validation slices or off-round.
    val_site_map: list[float | None] | None = None
    mean_val_map: float | None = None
    # With select_on_validation: the round whose shared model each site searches with, and the mean
    # per-site and global mAP of the current shared models (what the run would score without selection).
    selected_round: list[int] | None = None
    current_maps: tuple[float, float] | None = None
    # With FederationConfig.keeps_local_model: per site, "local" or "aggregate" (the shared model it
    # searches with after this round), and with "validated" the two mean scores on its held-out records
    # (``search_choice.prototype_margin``: local, aggregate).
    search_models: list[str] | None = None
    search_scores: list[tuple[float | None, float | None]] | None = None


@dataclass
class FederationResult:
    rounds: list[RoundRecord]
    final_report: dict
    train_records_per_second: float


# Called after every round with the round's record; the CLI prints it.
RoundCallback = Callable[[RoundRecord], None]


def _site_codes(trainer: SiteTrainer, split: Split) -> np.ndarray:
    if len(split) == 0:
        return np.zeros((0, trainer.config.bits), dtype=np.float32)
    return trainer.encode(split, model="shared")


class Federation:
    """K in-process sites sharing one round loop (see module docstring for the methods)."""

    def __init__(self, sites: list[MultiModalDataset], config: FederationConfig, *,
                 sum_step: SumStep = sum_vectors, site_indices: list[int] | None = None,
                 validation: list[Split] | None = None) -> None:
        """``site_indices``: the sites' places in the whole federation (their batch seeds); a
        worker process (``site_workers``) holding some of the sites passes them.
        ``validation``: per site, held-out training records (``partition.hold_out``) that none of its
        training sees; their mAP is reported every evaluated round (``RoundRecord.val_site_map``)."""
        if not sites:
            raise ConfigError("a federation needs at least one site")
        if validation is not None and len(validation) != len(sites):
            raise ConfigError(f"{len(validation)} validation slices for {len(sites)} sites; give one per site")
        if config.select_on_validation and validation is None:
            raise ConfigError("select_on_validation needs validation slices (a held-out fraction > 0)")
        if config.select_on_validation and config.method is Method.CENTRALIZED:
            raise ConfigError("select_on_validation is per site; the centralized reference has one model")
        if config.select_on_validation and config.eval_every != 1:
            raise ConfigError("select_on_validation validates every round: use eval_every=1")
        self.validation = validation
        self.best: list[tuple[float, int, dict] | None] = [None] * len(sites)
        # Per site, the shared state it searches with instead of the aggregate (None: the aggregate; validated:
        # the average of its blends over the rounds), that average (``search_choice.next_search_model``), and
        # this round's choice (``_choose_search_models``).
        self.search_states: list[dict | None] = [None] * len(sites)
        self.search_averages: list[SearchAverage] = [SearchAverage()] * len(sites)
        self.search_choice: tuple[list[str], list[tuple[float | None, float | None]] | None] | None = None
        # This round's locally trained shared states and the prototypes they trained towards, kept by
        # ``local_work`` until ``load_shared_model`` brings the aggregate (FederationConfig.keeps_local_model).
        self._candidates: tuple[list[dict], np.ndarray] | None = None
        self._worker_best_rounds: list[int | None] = [None] * len(sites)
        self.config = config
        self.eval_sites = sites
        self.train_sites = [_pool(sites)] if config.method is Method.CENTRALIZED else sites
        self.sum_step = sum_step
        first = sites[0]
        self.num_classes = first.num_classes
        bits = config.train.bits
        # All sites start from one common initialisation (seed of the run): prototypes of
        # different sites then live in one code space, which summing them requires.
        extra = {"fedhap": config.fedhap} if config.method is Method.FEDHAP else {}
        trainer_cls = FedHAPTrainer if config.method is Method.FEDHAP else SiteTrainer
        indices = list(range(len(self.train_sites))) if site_indices is None else site_indices
        self.workers = None
        if config.workers > 1 and len(self.train_sites) > 1:
            self.workers = SiteWorkers(sites, config, config.workers, validation=validation)
            indices = indices[:1]  # one trainer here, for the upload layout only
        self.trainers = [
            trainer_cls(config.train, image_dim=first.image_dim, text_dim=first.text_dim,
                        num_classes=self.num_classes, init_seed=config.train.seed,
                        batch_seed=site_batch_seed(config.train.seed, k), device=config.device, **extra)
            for k in indices
        ]
        for trainer in self.trainers:
            trainer.constant_shared_lr = shared_lr_is_constant(config.method, config.share_mode)
        centres = initial_prototypes(self.num_classes, bits, seed=config.train.seed, method=config.method.value)
        model_size = flatten_state(self.trainers[0].shared_state()).size if config.shares_model else 0
        uses_protos = config.method in (Method.PFMH, Method.CENTRALIZED, Method.FEDHAP)
        self.layout = UploadLayout(self.num_classes if uses_protos else 0, bits if uses_protos else 0, model_size)
        self.state = GlobalState(0, centres if uses_protos else None, None)

    # ----------------------------------------------------------------------------- one round
    def _local_update(self, trainer: SiteTrainer, data: MultiModalDataset) -> tuple[SiteUpload, dict]:
        """The same local step as a site daemon's (``pfmh_model.local_round``), without DP."""
        stats = None
        if self.config.method in (Method.FEDAVG, Method.LOCAL):
            losses = train_fedavg_site(trainer, data.train)
        elif isinstance(trainer, FedHAPTrainer):
            assert self.state.prototypes is not None  # noqa: S101 - set in __init__ for prototype methods
            stats, losses = train_fedhap_site(trainer, data.train, self.state.prototypes)
        else:
            assert self.state.prototypes is not None  # noqa: S101
            stats, losses = train_pfmh_site(trainer, data.train, self.state.prototypes)
        return make_upload(trainer, len(data.train), stats, self.layout), losses

    def _local_updates_together(self) -> tuple[list[np.ndarray], list[dict]]:
        """Every site's ``_local_update`` at once, the models trained together (``site_batch``)."""
        trains = [data.train for data in self.train_sites]
        if self.config.method in (Method.FEDAVG, Method.LOCAL):
            all_losses = train_fedavg_sites(self.trainers, trains)
            stats: list = [None] * len(trains)
        else:
            assert self.state.prototypes is not None  # noqa: S101
            stats, all_losses = map(list, zip(*train_pfmh_sites(self.trainers, trains, self.state.prototypes),
                                              strict=True))
        uploads = [make_upload(t, len(d), s, self.layout).to_vector(self.layout)
                   for t, d, s in zip(self.trainers, trains, stats, strict=True)]
        return uploads, all_losses

    def local_work(self) -> tuple[list[np.ndarray], list[dict]]:
        """Every site's upload vector and losses for this round (in workers when there are any)."""
        if self.workers is not None:
            return self.workers.local_work(self.state)
        if self.config.sites_together and self.config.method is not Method.FEDHAP:
            uploads, all_losses = self._local_updates_together()
        else:
            uploads, all_losses = [], []
            for trainer, data in zip(self.trainers, self.train_sites, strict=True):
                upload, losses = self._local_update(trainer, data)
                uploads.append(upload.to_vector(self.layout))
                all_losses.append(losses)
        if self.config.keeps_local_model:  # a search candidate, before the aggregate replaces it
            self._candidates = ([t.shared_state() for t in self.trainers], self.state.prototypes)
        return uploads, all_losses

    def load_shared_model(self, vector: np.ndarray) -> None:
        """Every site takes the aggregated shared model (flat vector, ``flatten_state`` order), then, where
        it has the choice, picks its search model (``FederationConfig.search_model``)."""
        if self.workers is not None:
            self.search_choice = self.workers.load_shared_model(vector)
            return
        for trainer in self.trainers:
            trainer.load_shared_state(unflatten_state(vector, trainer.shared_state()))
        if self._candidates is not None:
            self._choose_search_models(*self._candidates)
            self._candidates = None

    def best_rounds(self) -> list[int | None]:
        """With ``select_on_validation``: each site's best validation round so far (None before one)."""
        if self.workers is not None:
            return list(self._worker_best_rounds)
        return [b[1] if b is not None else None for b in self.best]

    def close(self) -> None:
        """Stop the worker processes, if any (``run`` does it when it ends)."""
        if self.workers is not None:
            self.workers.close()

    def run_round(self) -> dict[str, float]:
        """Local training at every site, aggregation, broadcast. Returns mean losses."""
        uploads, all_losses = self.local_work()
        if self.config.method is not Method.LOCAL:
            total = SiteUpload.from_vector(self.sum_step(uploads), self.layout)
            aggregate = aggregator(self.config.method.value)
            self.state = aggregate(total, self.state, bits=self.config.train.bits, seed=self.config.train.seed)
            if self.state.shared_model is not None:
                self.load_shared_model(self.state.shared_model)
        else:
            self.state = GlobalState(self.state.round + 1, None, None)
        keys = set().union(*all_losses)
        return {k: float(np.mean([d[k] for d in all_losses if k in d])) for k in sorted(keys)}

    def _choose_search_models(self, local_states: list[dict], prototypes: np.ndarray) -> None:
        """Each site's search model after the aggregate is loaded: its local state or None (the aggregate)."""
        if self.config.search_model is SearchModel.LOCAL:
            self.search_states = list(local_states)
            self.search_choice = ([SearchModel.LOCAL.value] * len(local_states), None)
            return
        choices, scores = [], []
        for k, (trainer, local) in enumerate(zip(self.trainers, local_states, strict=True)):
            val = self.validation[k] if self.validation is not None else None
            choice = site_search_choice(trainer, local, val, prototypes)
            self.search_states[k], self.search_averages[k] = next_search_model(
                self.search_averages[k], choice, cap=self.config.search_average)
            choices.append(choice.model.value)
            scores.append((choice.local_score, choice.aggregate_score))
        self.search_choice = (choices, scores)

    # ----------------------------------------------------------------------------- evaluation
    def _eval_trainer(self, k: int) -> SiteTrainer:
        return self.trainers[0] if self.config.method is Method.CENTRALIZED else self.trainers[k]

    def site_codes(self, *, selected: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query codes, database codes) per evaluation site, each encoded by the model that site holds
        (with ``select_on_validation`` and ``selected``, its selected shared model)."""
        if self.workers is not None:
            return self.workers.site_codes(selected=selected)
        out = []
        for k, site in enumerate(self.eval_sites):
            trainer = self._eval_trainer(k)
            best = self.best[k] if selected else None
            state = best[2] if best is not None else self.search_states[k]
            current = trainer.shared_state() if state is not None else None
            if state is not None:
                trainer.load_shared_state(state)
            out.append((_site_codes(trainer, site.query), _site_codes(trainer, site.database)))
            if current is not None:
                trainer.load_shared_state(current)
        return out

    def validate(self) -> list[float | None]:
        """Each site's validation mAP with its current shared model: its held-out records as queries
        against its training records; None for a site whose slice has no relevant item. With
        ``select_on_validation`` it also keeps each site's best shared model so far (ties: the later)."""
        assert self.validation is not None  # noqa: S101 - callers check
        if self.workers is not None:
            values, self._worker_best_rounds = self.workers.validate(self.state)
            return values
        values: list[float | None] = []
        for k, (val, site) in enumerate(zip(self.validation, self.eval_sites, strict=True)):
            trainer = self._eval_trainer(k)
            if len(val) == 0 or len(site.train) == 0:
                values.append(None)
                continue
            searching = self.search_states[k]  # the model the site searches with, if not the aggregate
            current = trainer.shared_state() if searching is not None else None
            if searching is not None:
                trainer.load_shared_state(searching)
            value = mean_average_precision(_site_codes(trainer, val), _site_codes(trainer, site.train),
                                           val.labels, site.train.labels)
            values.append(None if np.isnan(value) else float(value))
            if self.config.select_on_validation:
                best = self.best[k]
                score = -1.0 if values[-1] is None else values[-1]
                if best is None or score >= best[0]:
                    self.best[k] = (score, self.state.round, trainer.shared_state())
            if current is not None:
                trainer.load_shared_state(current)
        return values

    def evaluate(self) -> tuple[list[float | None], float, float]:
        """Per-site mAP (own queries vs own archive), their mean, and global mAP (all vs union)."""
        return site_and_global_map(self.site_codes(), self.eval_sites)

    def _union(self, codes):
        return union_codes(codes, self.eval_sites)

    def final_report(self) -> dict:
        codes = self.site_codes()
        return evaluate(*self._union(codes)).to_dict()

    # ----------------------------------------------------------------------------- driver
    def run(self, *, on_round: RoundCallback | None = None) -> FederationResult:
        """All rounds, evaluating every ``eval_every`` rounds and after the last; stops any workers."""
        try:
            return self._run(on_round)
        finally:
            self.close()

    def _run(self, on_round: RoundCallback | None) -> FederationResult:
        records: list[RoundRecord] = []
        train_records = sum(len(s.train) for s in self.train_sites)
        epochs = self.config.train.personal_epochs + self.config.train.shared_epochs
        train_seconds = 0.0
        for r in range(1, self.config.rounds + 1):
            start = time.perf_counter()
            losses = self.run_round()
            train_seconds += time.perf_counter() - start
            last = r == self.config.rounds
            val_map = mean_val = selected = current = None
            if r % self.config.eval_every == 0 or last:
                if self.validation is not None:
                    val_map = self.validate()
                    valid = [v for v in val_map if v is not None]
                    mean_val = float(np.mean(valid)) if valid else None
                    if self.config.select_on_validation:
                        selected = [b if b is not None else r for b in self.best_rounds()]
                        current = site_and_global_map(self.site_codes(selected=False), self.eval_sites)[1:]
                site_map, mean_site, global_map = self.evaluate()
            else:
                site_map, mean_site, global_map = [None] * len(self.eval_sites), float("nan"), None
            chosen, scores = self.search_choice if self.search_choice is not None else (None, None)
            record = RoundRecord(r, site_map, mean_site, global_map, time.perf_counter() - start,
                                 self.layout.length * 8, losses, val_map, mean_val, selected, current,
                                 chosen, scores)
            records.append(record)
            if on_round is not None:
                on_round(record)
        # Records per second per site: total records processed / training time / number of sites.
        throughput = train_records * epochs * self.config.rounds / max(train_seconds, 1e-9) / len(self.train_sites)
        return FederationResult(records, self.final_report(), throughput)


def site_and_global_map(codes: list[tuple[np.ndarray, np.ndarray]],
                        sites: list[MultiModalDataset]) -> tuple[list[float | None], float, float]:
    """Per-site mAP (each site's queries against its own archive), their mean, and the global mAP
    (every query against the union of archives); ``codes`` is (query codes, database codes) per site.
    The one scoring of every method, deep or baseline (``pfmh_model.baselines``)."""
    site_map: list[float | None] = []
    for (q, db), site in zip(codes, sites, strict=True):
        if len(q) == 0 or len(db) == 0:
            site_map.append(None)
            continue
        value = mean_average_precision(q, db, site.query.labels, site.database.labels)
        site_map.append(None if np.isnan(value) else float(value))
    valid = [m for m in site_map if m is not None]
    mean_site = float(np.mean(valid)) if valid else float("nan")
    global_map = float(mean_average_precision(*union_codes(codes, sites)))
    return site_map, mean_site, global_map


def union_codes(codes: list[tuple[np.ndarray, np.ndarray]], sites: list[MultiModalDataset]):
    """(all query codes, all database codes, their labels) over the sites, in site order."""
    q_all = np.concatenate([q for q, _ in codes])
    db_all = np.concatenate([db for _, db in codes])
    ql = np.concatenate([s.query.labels for s in sites])
    dl = np.concatenate([s.database.labels for s in sites])
    return q_all, db_all, ql, dl


def _pool(sites: list[MultiModalDataset]) -> MultiModalDataset:
    """One site holding every site's training records (the centralized reference)."""
    def cat(splits: list[Split]) -> Split:
        return Split(np.concatenate([s.image for s in splits]), np.concatenate([s.text for s in splits]),
                     np.concatenate([s.labels for s in splits]))
    return MultiModalDataset("pooled", cat([s.train for s in sites]), cat([s.database for s in sites]),
                             cat([s.query for s in sites]))
