"""The numpy hashing baselines (pfmh_model.baselines): what each fits on, and that they score as claimed."""
from __future__ import annotations

import numpy as np
import pytest

from pfmh_model.baselines import BASELINES, baseline_codes, fit_lsh, fit_ridge_hash
from pfmh_model.data import Split
from pfmh_model.errors import ConfigError
from pfmh_model.federation import site_and_global_map
from pfmh_model.partition import partition_dataset
from pfmh_model.synthetic import generate


@pytest.fixture(scope="module")
def sites():  # noqa: ANN201
    return partition_dataset(generate("tiny", seed=4), num_sites=3, alpha=0.5, seed=4)


def test_ridge_hash_codes_follow_labels_and_lsh_codes_ignore_them(sites) -> None:
    # Prepare: the same records with their labels permuted
    train = sites[0].train
    shuffled = Split(train.image, train.text, train.labels[np.random.default_rng(0).permutation(len(train))])
    # Execute
    ridge, ridge_shuffled = (fit_ridge_hash(s, bits=16, seed=1).encode(sites[0].query) for s in (train, shuffled))
    lsh, lsh_shuffled = (fit_lsh(s, bits=16, seed=1).encode(sites[0].query) for s in (train, shuffled))
    # Assert
    assert not np.array_equal(np.sign(ridge), np.sign(ridge_shuffled))
    np.testing.assert_array_equal(lsh, lsh_shuffled)


def test_ridge_central_is_one_fit_and_ridge_local_one_per_site(sites) -> None:
    # Prepare: one record that every site encodes
    probe = sites[0].query.subset(np.arange(1))
    probe_sites = [type(s)(s.name, s.train, probe, probe) for s in sites]
    # Execute
    central = baseline_codes("ridge-central", probe_sites, bits=16, seed=1)
    local = baseline_codes("ridge-local", probe_sites, bits=16, seed=1)
    # Assert: the one central hash gives every site the same code for it; the local ones differ
    assert all(np.array_equal(central[0][0], c[0]) for c in central)
    assert not all(np.array_equal(local[0][0], c[0]) for c in local)


def test_supervised_baselines_beat_random_hyperplanes(sites) -> None:
    # Execute
    scores = {name: site_and_global_map(baseline_codes(name, sites, bits=32, seed=0), sites)[1:] for name in BASELINES}
    # Assert: per-site and global mAP, ridge (either) above LSH, all valid
    for name in ("ridge-local", "ridge-central"):
        assert scores[name][0] > scores["lsh"][0] and scores[name][1] > scores["lsh"][1]
    assert all(0.0 < v <= 1.0 for pair in scores.values() for v in pair)


def test_baseline_errors_name_the_problem(sites) -> None:
    with pytest.raises(ConfigError, match="unknown baseline 'pca'"):
        baseline_codes("pca", sites, bits=16, seed=0)
    with pytest.raises(ConfigError, match="at least 2 training records"):
        fit_ridge_hash(sites[0].train.subset(np.arange(1)), bits=16, seed=0)
