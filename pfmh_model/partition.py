"""Non-IID federation: split a dataset over K sites with Dirichlet class proportions.

Reference protocol (PFMH): for every class c draw site proportions p_c ~ Dirichlet(alpha * 1_K);
a record goes to site k with probability p_{c*, k}, c* = its first (argmax) label. One proportions
matrix is shared by train, database and query, so each site has its own training set, retrieval
archive and queries, all skewed towards the same classes. Small alpha (0.1) gives each class to
one or two sites; large alpha (100) approaches a uniform split.

Empty sites: at small alpha a site can be nearly starved. ``partition_dataset`` therefore redraws
the whole proportions matrix (and the assignment) until every site has at least
``min_train_records`` training records, ``min_query_records`` queries and ``min_database_records``
archive records, and raises ``ConfigError`` after ``max_draws`` failed draws. The accepted split is
thus a draw from the protocol *conditioned* on no site being starved, which is deterministic in
the seed like the rest.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pfmh_model.data import MultiModalDataset, Split
from pfmh_model.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _check_config(num_sites: int, alpha: float) -> None:
    if num_sites < 1:
        raise ConfigError(f"num_sites = {num_sites} must be >= 1")
    if not alpha > 0 or not np.isfinite(alpha):
        raise ConfigError(f"Dirichlet alpha = {alpha} must be a finite number > 0 (reference 0.1; larger is "
                          "closer to IID)")


def dirichlet_proportions(num_classes: int, *, num_sites: int, alpha: float,
                          rng: np.random.Generator) -> np.ndarray:
    """Per-class site proportions, each row drawn from Dirichlet(alpha, ..., alpha).

    Shape:
        returns (C, K) float64; every row sums to 1.

    Raises:
        ConfigError: num_classes < 1, num_sites < 1 or alpha <= 0.
    """
    _check_config(num_sites, alpha)
    if num_classes < 1:
        raise ConfigError(f"num_classes = {num_classes} must be >= 1")
    props = rng.dirichlet(np.full(num_sites, float(alpha)), size=num_classes)
    return props / props.sum(axis=1, keepdims=True)


def assign_sites(labels: np.ndarray, proportions: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Site id of every record, drawn from the proportions row of its first (argmax) label.

    Shape:
        labels: (n, C) multi-hot. proportions: (C, K). returns (n,) int64 in [0, K).

    Raises:
        DataError: labels and proportions disagree on C.
    """
    if labels.ndim != 2 or proportions.ndim != 2 or labels.shape[1] != proportions.shape[0]:
        raise DataError(f"labels {labels.shape} and proportions {proportions.shape} must be (n, C) and "
                        "(C, K) with the same C")
    cum = np.cumsum(proportions, axis=1)[np.argmax(labels, axis=1)]
    draws = rng.random(len(labels))
    sites = (draws[:, None] >= cum).sum(axis=1)
    return np.minimum(sites, proportions.shape[1] - 1).astype(np.int64)


def partition_dataset(dataset: MultiModalDataset, *, num_sites: int, alpha: float, seed: int,
                      min_train_records: int = 16, min_query_records: int = 1, min_database_records: int = 1,
                      max_draws: int = 1000) -> list[MultiModalDataset]:
    """Split every split of ``dataset`` over ``num_sites`` sites (see the module docstring).

    Args:
        dataset: the pooled dataset.
        num_sites: K >= 1.
        alpha: Dirichlet concentration > 0 (reference 0.1).
        seed: seed of the ``np.random.default_rng`` used for proportions and assignments.
        min_train_records: fewest training records a site may get (redraw otherwise).
        min_query_records: fewest queries a site may get.
        min_database_records: fewest archive records a site may get.
        max_draws: how many proportions matrices to try before giving up.

    Returns:
        K datasets named ``"<name>/site<k>"``, records in their original order.

    Raises:
        ConfigError: bad K or alpha, or no draw in ``max_draws`` met the minimums.
    """
    _check_config(num_sites, alpha)
    minimum = {"train": min_train_records, "database": min_database_records, "query": min_query_records}
    for key, need in minimum.items():
        if need * num_sites > len(dataset.split(key)):
            raise ConfigError(f"{num_sites} sites x min {need} {key} records > the {len(dataset.split(key))} "
                              f"{key} records of {dataset.name}; use fewer sites or a lower minimum")
    if max_draws < 1:
        raise ConfigError(f"max_draws = {max_draws} must be >= 1")
    rng = np.random.default_rng(seed)
    draws = 0
    while True:
        draws += 1
        props = dirichlet_proportions(dataset.num_classes, num_sites=num_sites, alpha=alpha, rng=rng)
        sites = {key: assign_sites(dataset.split(key).labels, props, rng=rng) for key in minimum}
        counts = {key: np.bincount(ids, minlength=num_sites) for key, ids in sites.items()}
        if all((counts[key] >= need).all() for key, need in minimum.items()):
            break
        if draws == max_draws:
            raise ConfigError(f"no Dirichlet(alpha={alpha}) draw in {max_draws} gave each of {num_sites} "
                              f"sites >= {min_train_records} train, {min_database_records} database and "
                              f"{min_query_records} query records; raise alpha, use fewer sites or lower "
                              "the minimums")
    if draws > 1:
        logger.info("partition: redrew proportions %d time(s) until every site met the minimums", draws - 1)
    parts: list[dict[str, Split]] = [{} for _ in range(num_sites)]
    for key, ids in sites.items():
        order = np.argsort(ids, kind="stable")
        bounds = np.cumsum(counts[key])[:-1]
        for k, index in enumerate(np.split(order, bounds)):
            parts[k][key] = dataset.split(key).subset(index)
    return [MultiModalDataset(f"{dataset.name}/site{k}", p["train"], p["database"], p["query"],
                              class_names=dataset.class_names) for k, p in enumerate(parts)]


def class_histograms(sites: Sequence[MultiModalDataset], split: str = "train") -> np.ndarray:
    """Label counts per site: entry (k, c) = records of site k carrying label c (multi-label counts all).

    Shape:
        returns (K, C) int64.
    """
    if not sites:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack([site.split(split).labels.sum(axis=0) for site in sites]).astype(np.int64)


def format_histograms(hist: np.ndarray, class_names: Sequence[str] | None = None) -> str:
    """A fixed-width table: one row per site (plus records-with-label totals), one column per class."""
    hist = np.asarray(hist, dtype=np.int64)
    if hist.ndim != 2:
        raise DataError(f"histogram must be (K, C), got shape {hist.shape}")
    num_classes = hist.shape[1]
    names = list(class_names) if class_names is not None else [f"c{c}" for c in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names for {num_classes} histogram columns; give one per column")
    names = [name[:8] for name in names]
    width = max([len(n) for n in names] + [len(str(int(hist.max(initial=0))))]) + 1
    rows = [" site " + "".join(f"{n:>{width}}" for n in names) + "   total"]
    for k, row in enumerate(hist):
        rows.append(f"{k:>5} " + "".join(f"{int(v):>{width}}" for v in row) + f"{int(row.sum()):>8}")
    total = hist.sum(axis=0)
    rows.append("  all " + "".join(f"{int(v):>{width}}" for v in total) + f"{int(total.sum()):>8}")
    return "\n".join(rows)
