"""The query-failure benchmark: a hand-computed AP, its mean is the library's mAP, the training shares, and
a one-line error for a missing dataset."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.bench_query_failures import main, query_aps, training_shares
from pfmh_model.evaluation import mean_average_precision


def test_a_query_ap_is_computed_by_hand() -> None:
    # Arrange: one query; archive at Hamming distances 0, 1, 2, 3 with relevance 1, 0, 1, 1 (stored out of order)
    query = np.array([[1, 1, 1]])
    archive = np.array([[-1, -1, -1], [1, 1, 1], [1, -1, -1], [1, 1, -1]])   # distances 3, 0, 2, 1
    query_labels = np.array([[1, 0]])
    archive_labels = np.array([[1, 0], [1, 0], [1, 0], [0, 1]])
    # Assert: relevant at ranks 1, 3 and 4: AP = (1/1 + 2/3 + 3/4) / 3
    assert query_aps(query, archive, query_labels, archive_labels)[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_a_query_with_nothing_relevant_is_nan() -> None:
    aps = query_aps(np.ones((1, 4)), np.ones((3, 4)), np.array([[0, 1]]), np.array([[1, 0]] * 3))
    assert np.isnan(aps[0])


def test_the_mean_of_query_aps_is_the_libraries_map_with_ties() -> None:
    # Arrange: 4-bit codes, so many ties; multi-label relevance
    rng = np.random.default_rng(3)
    q, db = rng.choice([-1.0, 1.0], size=(40, 4)), rng.choice([-1.0, 1.0], size=(200, 4))
    ql, dl = rng.random((40, 5)) < 0.3, rng.random((200, 5)) < 0.3
    aps = query_aps(q, db, ql, dl)
    # Assert: same ranking (stable ties), same AP, same excluded queries
    assert np.nanmean(aps) == pytest.approx(mean_average_precision(q, db, ql, dl), abs=1e-12)


def test_a_missing_dataset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--data", "/nonexistent/file.h5"])
    assert "--data /nonexistent/file.h5" in capsys.readouterr().err


def test_training_shares_count_the_sites_own_training_records() -> None:
    # Arrange: one site, 4 training records (3 of class 0), queries of class 0, 1 and 2; class 2 not in the archive
    def split(labels):  # noqa: ANN001, ANN202
        return SimpleNamespace(labels=np.array(labels))
    site = SimpleNamespace(train=split([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]]),
                           database=split([[1, 0, 0], [0, 1, 0]]), query=split([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    # Assert: the uncounted query (nothing relevant in the archive) is left out, as in pooled_aps
    np.testing.assert_allclose(training_shares([site]), [0.75, 0.25])
