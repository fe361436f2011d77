"""Tests of pfmh_model.partition: Dirichlet non-IID splitting, determinism, skew, histograms."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model.data import MultiModalDataset, load_h5
from pfmh_model.errors import ConfigError, DataError
from pfmh_model.partition import (
    apply_partition,
    assign_sites,
    class_histograms,
    dirichlet_proportions,
    format_histograms,
    hold_out,
    load_partition,
    partition_dataset,
    partition_indices,
    save_partition,
)
from pfmh_model.synthetic import generate
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def small() -> MultiModalDataset:
    return generate("small", seed=0)


def _primary_histogram(sites: list[MultiModalDataset], num_classes: int) -> np.ndarray:
    """(K, C) counts of records by first (argmax) label: the quantity the protocol skews."""
    return np.stack([np.bincount(site.train.labels.argmax(axis=1), minlength=num_classes) for site in sites])


def _skew(hist: np.ndarray) -> float:
    """Mean over classes of the largest site share of the class (1/K if uniform, 1 if one site owns it)."""
    present = hist.sum(axis=0) > 0
    return float((hist[:, present].max(axis=0) / hist[:, present].sum(axis=0)).mean())


def test_dirichlet_proportions_rows_sum_to_one() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    # Execute
    props = dirichlet_proportions(7, num_sites=5, alpha=0.1, rng=rng)
    # Assert
    assert props.shape == (7, 5) and (props >= 0).all()
    np.testing.assert_allclose(props.sum(axis=1), 1.0)


def test_assign_sites_follows_first_label() -> None:
    # Prepare: class 0 all to site 2, class 1 all to site 0; record 2 has labels {1, 0} -> argmax 0.
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], dtype=np.float32)
    props = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    # Execute
    sites = assign_sites(labels, props, rng=np.random.default_rng(0))
    # Assert
    assert sites.tolist() == [2, 0, 2, 0]
    with pytest.raises(DataError, match="same C"):
        assign_sites(labels, props.T, rng=np.random.default_rng(0))


def test_every_record_assigned_exactly_once(small: MultiModalDataset) -> None:
    # Execute
    sites = partition_dataset(small, num_sites=7, alpha=0.5, seed=0)
    # Assert
    for split in ("train", "database", "query"):
        pooled = np.concatenate([site.split(split).image for site in sites])
        original = small.split(split).image
        assert len(pooled) == len(original)
        key = np.lexsort(pooled.T)
        np.testing.assert_array_equal(pooled[key], original[np.lexsort(original.T)])
    assert [s.name for s in sites[:2]] == ["synthetic_small/site0", "synthetic_small/site1"]


def test_partition_is_deterministic_in_seed(small: MultiModalDataset) -> None:
    # Execute
    a = partition_dataset(small, num_sites=5, alpha=0.1, seed=1)
    b = partition_dataset(small, num_sites=5, alpha=0.1, seed=1)
    c = partition_dataset(small, num_sites=5, alpha=0.1, seed=2)
    # Assert
    assert [len(s.train) for s in a] == [len(s.train) for s in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.query.text, y.query.text)
    assert not np.array_equal(class_histograms(a), class_histograms(c))


def test_skewed_at_small_alpha_and_near_uniform_at_large(small: MultiModalDataset) -> None:
    # Execute
    c = small.num_classes
    skewed = _primary_histogram(partition_dataset(small, num_sites=10, alpha=0.1, seed=0), c)
    uniform = _primary_histogram(partition_dataset(small, num_sites=10, alpha=100.0, seed=0), c)
    # Assert: at 0.1 one site holds most of a class; at 100 shares are close to 1/10.
    assert _skew(skewed) > 0.6
    assert _skew(uniform) < 0.25
    sizes = uniform.sum(axis=1)
    assert sizes.min() > 0.6 * sizes.mean()


@pytest.mark.shared_data
def test_wiki_ten_sites_at_alpha_0_1_are_all_non_empty() -> None:
    # Prepare
    wiki = load_h5(shared_file("wiki.h5"))
    for seed in range(5):
        # Execute
        sites = partition_dataset(wiki, num_sites=10, alpha=0.1, seed=seed)
        # Assert
        assert min(len(s.train) for s in sites) >= 16
        assert min(len(s.query) for s in sites) >= 1 and min(len(s.database) for s in sites) >= 1
        assert sum(len(s.train) for s in sites) == 2173


def test_bad_configuration_raises(small: MultiModalDataset) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="alpha = 0.0"):
        partition_dataset(small, num_sites=3, alpha=0.0, seed=0)
    with pytest.raises(ConfigError, match="num_sites = 0"):
        partition_dataset(small, num_sites=0, alpha=0.1, seed=0)
    with pytest.raises(ConfigError, match="use fewer sites"):
        partition_dataset(small, num_sites=200, alpha=0.1, seed=0)
    with pytest.raises(ConfigError, match="no Dirichlet"):
        partition_dataset(small, num_sites=50, alpha=0.01, seed=0, min_train_records=30, max_draws=3)


def test_histograms_and_table(small: MultiModalDataset) -> None:
    # Prepare
    sites = partition_dataset(small, num_sites=3, alpha=1.0, seed=0)
    # Execute
    hist = class_histograms(sites, "query")
    table = format_histograms(hist, small.class_names)
    # Assert
    assert hist.shape == (3, small.num_classes)
    np.testing.assert_array_equal(hist.sum(axis=0), small.query.labels.sum(axis=0))
    lines = table.splitlines()
    assert len(lines) == 5 and "class00" in lines[0] and lines[-1].split()[0] == "all"
    assert int(lines[-1].split()[-1]) == int(small.query.labels.sum())
    with pytest.raises(DataError, match="class names"):
        format_histograms(hist, ["a"])


def test_partition_round_trips_through_a_file(tmp_path, small: MultiModalDataset) -> None:
    # Prepare
    index = partition_indices(small, num_sites=4, alpha=0.3, seed=5)
    path = tmp_path / "part.json"
    # Execute
    save_partition(path, index, source="test")
    again = apply_partition(small, load_partition(path))
    # Assert: the same sites, record for record, as the Dirichlet draw itself
    drawn = partition_dataset(small, num_sites=4, alpha=0.3, seed=5)
    assert len(again) == 4
    for a, b in zip(again, drawn, strict=True):
        for key in ("train", "database", "query"):
            np.testing.assert_array_equal(a.split(key).image, b.split(key).image)
            np.testing.assert_array_equal(a.split(key).labels, b.split(key).labels)


@pytest.mark.parametrize(("doc", "message"), [
    ('{"train": [[0]], "database": [[0]]}', "'query' must be a list of per-site lists"),
    ('{"train": [[0], [1]], "database": [[0]], "query": [[0]]}', "one list per site"),
    ('{"train": [[0, 0]], "database": [[0]], "query": [[0]]}', "repeats a train row"),
    ('{"train": [[0], [0]], "database": [[0], [1]], "query": [[0], [1]]}', "repeats a train row"),
    ('{"train": [[99999]], "database": [[0]], "query": [[0]]}', "row 99999, outside"),
    ('{"train": [[1.5]], "database": [[0]], "query": [[0]]}', "not an integer"),
    ('[1, 2]', "must hold an object"),
    ('{"train": ', "is not JSON"),
])
def test_bad_partition_files_are_refused_with_the_reason(tmp_path, small: MultiModalDataset, doc: str,
                                                         message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(doc)
    with pytest.raises(DataError, match=message):
        apply_partition(small, load_partition(path))


def test_reference_wiki_partition_file_loads_as_is() -> None:
    # Prepare
    wiki = load_h5(shared_file("wiki.h5"))
    # Execute
    sites = apply_partition(wiki, load_partition(shared_file("wiki_ref_partition.json")))
    # Assert: the site sizes of the file
    assert [len(s.train) for s in sites] == [349, 110, 106, 85, 406, 380, 123, 295, 288, 31]
    assert [len(s.database) for s in sites] == [342, 109, 105, 71, 404, 398, 125, 280, 315, 24]
    assert [len(s.query) for s in sites] == [110, 37, 35, 29, 128, 129, 28, 86, 104, 7]


def test_hold_out_moves_a_disjoint_slice_of_each_sites_training_records(small: MultiModalDataset) -> None:
    # Prepare
    sites = partition_dataset(small, num_sites=3, alpha=0.5, seed=1)
    # Execute
    kept, slices = hold_out(sites, 0.2, seed=3)
    # Assert: sizes add up, no record is in both, the rest of the site is untouched
    for site, rest, val in zip(sites, kept, slices, strict=True):
        assert len(rest.train) + len(val) == len(site.train) and len(val) == max(2, round(0.2 * len(site.train)))
        rows = {r.tobytes() for r in np.hstack([rest.train.image, rest.train.text])}
        assert not rows & {r.tobytes() for r in np.hstack([val.image, val.text])}
        assert rest.query is site.query and rest.database is site.database
    assert all(len(v) == 0 for v in hold_out(sites, 0.0, seed=3)[1])
    with pytest.raises(ConfigError, match="between 0 and 0.5"):
        hold_out(sites, 0.9, seed=3)
