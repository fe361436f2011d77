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

import json
import logging
import os
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

    The same as ``apply_partition(dataset, partition_indices(...))``; arguments as there.
    """
    return apply_partition(dataset, partition_indices(
        dataset, num_sites=num_sites, alpha=alpha, seed=seed, min_train_records=min_train_records,
        min_query_records=min_query_records, min_database_records=min_database_records, max_draws=max_draws))


def partition_indices(dataset: MultiModalDataset, *, num_sites: int, alpha: float, seed: int,
                      min_train_records: int = 16, min_query_records: int = 1, min_database_records: int = 1,
                      max_draws: int = 1000) -> dict[str, list[np.ndarray]]:
    """Per split ("train", "database", "query"), each site's row numbers, ascending (module docstring).

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
        {split: [K int64 arrays of row numbers]}; :func:`apply_partition` makes the site datasets.

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
    out: dict[str, list[np.ndarray]] = {}
    for key, ids in sites.items():
        order = np.argsort(ids, kind="stable")
        out[key] = [part.astype(np.int64) for part in np.split(order, np.cumsum(counts[key])[:-1])]
    return out


_SPLITS = ("train", "database", "query")


def apply_partition(dataset: MultiModalDataset, index: dict[str, Sequence[np.ndarray]]) -> list[MultiModalDataset]:
    """K site datasets named ``"<name>/site<k>"`` from per-split row lists (records in list order).

    Raises:
        DataError: a split is missing, the splits disagree on K, a row is out of range or given twice.
    """
    missing = [key for key in _SPLITS if key not in index]
    if missing:
        raise DataError(f"partition lacks the split(s) {missing}; it needs train, database and query lists")
    counts = {key: len(index[key]) for key in _SPLITS}
    if len(set(counts.values())) != 1 or counts["train"] < 1:
        raise DataError(f"partition has {counts} site lists; every split needs one list per site, K >= 1")
    parts: list[dict[str, Split]] = [{} for _ in range(counts["train"])]
    for key in _SPLITS:
        n = len(dataset.split(key))
        seen = np.zeros(n, dtype=bool)
        for k, rows in enumerate(index[key]):
            rows = np.asarray(rows)
            if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
                raise DataError(f"partition {key}[{k}] is not a list of row numbers")
            rows = rows.astype(np.int64)
            bad = rows[(rows < 0) | (rows >= n)]
            if bad.size:
                raise DataError(f"partition {key}[{k}] has row {int(bad[0])}, outside the {n} {key} records of "
                                f"{dataset.name}")
            if seen[rows].any() or len(np.unique(rows)) != len(rows):
                raise DataError(f"partition {key}[{k}] repeats a {key} row (of its own or another site's)")
            seen[rows] = True
            parts[k][key] = dataset.split(key).subset(rows)
    return [MultiModalDataset(f"{dataset.name}/site{k}", p["train"], p["database"], p["query"],
                              class_names=dataset.class_names) for k, p in enumerate(parts)]


def save_partition(path: str | os.PathLike[str], index: dict[str, Sequence[np.ndarray]], *, source: str) -> None:
    """Write per-split row lists as JSON: {"source": ..., "train": [[rows of site 0], ...], "database": ...,
    "query": ...}, the layout of ``shared/data/wiki_ref_partition.json``."""
    doc = {"source": source, **{key: [np.asarray(rows).astype(int).tolist() for rows in index[key]] for key in _SPLITS}}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)


def load_partition(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Per-split row lists from a file :func:`save_partition` writes (check them with :func:`apply_partition`).

    Raises:
        DataError: not JSON, or not an object with train / database / query lists of lists of integers.
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"partition file {path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"partition file {path} must hold an object with train, database and query lists")
    out: dict[str, list[np.ndarray]] = {}
    for key in _SPLITS:
        lists = doc.get(key)
        if not isinstance(lists, list) or not all(isinstance(rows, list) for rows in lists):
            raise DataError(f"partition file {path}: {key!r} must be a list of per-site lists of row numbers")
        for k, rows in enumerate(lists):
            if not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
                raise DataError(f"partition file {path}: {key}[{k}] holds a value that is not an integer row number")
        out[key] = [np.asarray(rows, dtype=np.int64) for rows in lists]
    return out


def hold_out(sites: Sequence[MultiModalDataset], fraction: float, *, seed: int,
             site_indices: Sequence[int] | None = None) -> tuple[list[MultiModalDataset], list[Split]]:
    """Move a random ``fraction`` of each site's training records into a validation slice.

    A site with n training records keeps round(fraction * n) of them aside, at least 2 when
    fraction > 0 (and at least 2 for training). Fraction 0 holds nothing out (empty slices).
    The draw depends on the seed and the site's place in the federation (``site_indices``, by default
    its place in ``sites``), so a site daemon holds out the rows the simulation would.

    Returns:
        (the sites with the rest as their training records, the validation slice of each site).

    Raises:
        ConfigError: fraction outside [0, 0.5].
    """
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 0.5:
        raise ConfigError(f"validation fraction = {fraction!r} must be between 0 and 0.5")
    kept, slices = [], []
    indices = range(len(sites)) if site_indices is None else site_indices
    for k, site in zip(indices, sites, strict=True):
        n = len(site.train)
        size = 0 if fraction == 0 else min(max(2, round(fraction * n)), max(n - 2, 0))
        order = np.random.default_rng([seed, k, 0xA11]).permutation(n)
        val, rest = np.sort(order[:size]), np.sort(order[size:])
        kept.append(MultiModalDataset(site.name, site.train.subset(rest), site.database, site.query,
                                      class_names=site.class_names))
        slices.append(site.train.subset(val))
    return kept, slices


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
