"""mAP, precision@k and the radius PR curve against a brute-force, per-query float reference."""
from __future__ import annotations

import json
import math
import warnings

import h5py
import numpy as np
import pytest

from pfmh_model.errors import ConfigError, DataError
from pfmh_model.evaluation import (
    RetrievalReport,
    evaluate,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    relevance,
)
from tests.conftest import shared_file

BIT_LENGTHS = (8, 16, 32, 63, 64, 65, 128)
TOL = 1e-12


def _reference(query_codes, archive_codes, query_labels, archive_labels, ks, top_k=None):
    """Straightforward float reference: one query at a time, AP written out from relevant ranks."""
    q = np.where(np.asarray(query_codes, np.float64) >= 0, 1.0, -1.0)
    a = np.where(np.asarray(archive_codes, np.float64) >= 0, 1.0, -1.0)
    bits, n = q.shape[1], a.shape[0]
    dist = (bits - q @ a.T) / 2
    aps, p_at, precisions, recalls = [], {k: [] for k in ks}, [], []
    for i in range(q.shape[0]):
        rel = np.array([bool(np.any((query_labels[i] > 0) & (archive_labels[j] > 0))) for j in range(n)])
        if not rel.any():
            continue
        ranked_rel = rel[np.argsort(dist[i], kind="stable")]
        cut = n if top_k is None else min(top_k, n)
        ranks = np.flatnonzero(ranked_rel[:cut]) + 1                 # 1-based ranks of relevant items
        aps.append(sum((m + 1) / r for m, r in enumerate(ranks)) / len(ranks) if len(ranks) else 0.0)
        for k in ks:
            kk = min(k, n)
            p_at[k].append(ranked_rel[:kk].sum() / kk)
        prec, rec = [], []
        for radius in range(bits + 1):
            inside = dist[i] <= radius
            hit = (inside & rel).sum()
            prec.append(hit / inside.sum() if inside.sum() else np.nan)
            rec.append(hit / rel.sum())
        precisions.append(prec)
        recalls.append(rec)
    if not aps:
        nan = float("nan")
        return nan, {k: nan for k in ks}, np.full(bits + 1, nan), np.full(bits + 1, nan)
    with warnings.catch_warnings():                       # radii where no query retrieves anything: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        pr_p = np.nanmean(np.array(precisions), axis=0)
    p_mean = {k: float(np.mean(v)) for k, v in p_at.items()}
    return float(np.mean(aps)), p_mean, pr_p, np.mean(recalls, axis=0)


def _problem(seed: int, bits: int, q: int = 40, n: int = 150, classes: int = 6):
    """Random codes with many ties (a few distinct archive rows) and queries lacking relevant items."""
    rng = np.random.default_rng(seed)
    distinct = rng.choice([-1.0, 1.0], size=(12, bits))
    archive = distinct[rng.integers(0, 12, size=n)] * rng.uniform(0.5, 2.0, size=(n, 1))
    queries = rng.standard_normal((q, bits))
    archive_labels = (rng.random((n, classes)) < 0.3).astype(np.uint8)
    archive_labels[:, classes - 1] = 0                     # the last class never occurs in the archive
    query_labels = (rng.random((q, classes)) < 0.25).astype(np.uint8)
    query_labels[: q // 4] = 0
    query_labels[: q // 4, classes - 1] = 1                # a quarter of the queries have no relevant item
    return queries, archive, query_labels, archive_labels


def _assert_close(actual: float, expected: float) -> None:
    assert (math.isnan(actual) and math.isnan(expected)) or abs(actual - expected) <= TOL, (actual, expected)


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_metrics_identical_to_float_reference(bits: int) -> None:
    # Prepare
    problem = _problem(bits, bits)
    ks = (1, 5, 37, 150, 500)
    ref_map, ref_p, ref_prec, ref_rec = _reference(*problem, ks)
    # Execute
    report = evaluate(*problem, ks=ks)
    # Assert
    _assert_close(report.map, ref_map)
    for k in ks:
        _assert_close(report.precision_at[k], ref_p[k])
    assert report.pr_precision.shape == report.pr_recall.shape == (bits + 1,)
    np.testing.assert_allclose(report.pr_precision, ref_prec, rtol=0, atol=TOL)
    np.testing.assert_allclose(report.pr_recall, ref_rec, rtol=0, atol=TOL)
    assert report.num_queries == 40 and report.num_counted_queries < 40


@pytest.mark.parametrize("bits", (8, 64, 65))
@pytest.mark.parametrize("top_k", (1, 10, 149, 1000))
def test_map_at_top_k_matches_reference(bits: int, top_k: int) -> None:
    # Prepare
    problem = _problem(3 * bits + top_k, bits)
    ref_map, _, _, _ = _reference(*problem, (), top_k=top_k)
    # Execute
    value = mean_average_precision(*problem, top_k=top_k)
    # Assert
    _assert_close(value, ref_map)


def test_single_metric_functions_agree_with_evaluate() -> None:
    # Prepare
    problem = _problem(5, 32)
    report = evaluate(*problem, ks=(3, 30))
    # Execute
    m = mean_average_precision(*problem)
    p = precision_at_k(*problem, ks=(3, 30))
    prec, rec = precision_recall_curve(*problem)
    # Assert
    assert m == report.map and p == report.precision_at
    np.testing.assert_array_equal(prec, report.pr_precision)
    np.testing.assert_array_equal(rec, report.pr_recall)


@pytest.mark.parametrize("chunk_size", (1, 7, 1000))
def test_chunked_equals_unchunked(chunk_size: int) -> None:
    # Prepare
    problem = _problem(6, 16, q=60, n=400)
    whole = evaluate(*problem)
    # Execute
    chunked = evaluate(*problem, chunk_size=chunk_size)
    # Assert
    _assert_close(chunked.map, whole.map)
    assert chunked.precision_at == pytest.approx(whole.precision_at, abs=TOL)
    np.testing.assert_allclose(chunked.pr_precision, whole.pr_precision, rtol=0, atol=TOL)
    np.testing.assert_allclose(chunked.pr_recall, whole.pr_recall, rtol=0, atol=TOL)


def test_hand_computed_average_precision() -> None:
    # Prepare: archive at distances 0, 1, 1, 2 from the query; relevant: items 0 and 2
    query = np.array([[1, 1]])
    archive = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1]])
    query_labels = np.array([[1, 0]])
    archive_labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    # Execute
    report = evaluate(query, archive, query_labels, archive_labels, ks=(1, 2, 10))
    # Assert: ranking 0, 1, 2, 3 (tie 1/2 by index) -> AP = (1/1 + 2/3) / 2
    assert report.map == pytest.approx(5 / 6, abs=TOL)
    assert report.precision_at == {1: 1.0, 2: 0.5, 10: 0.5}
    np.testing.assert_allclose(report.pr_precision, [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(report.pr_recall, [0.5, 1.0, 1.0])


def test_continuous_and_sign_codes_give_the_same_result() -> None:
    # Prepare
    queries, archive, ql, al = _problem(8, 32)
    # Execute
    from_real = evaluate(queries, archive, ql, al)
    from_sign = evaluate(np.where(queries >= 0, 1, -1).astype(np.int8), np.sign(archive), ql, al)
    # Assert
    assert from_real.map == from_sign.map
    np.testing.assert_array_equal(from_real.pr_recall, from_sign.pr_recall)


def test_no_relevant_item_anywhere_gives_nan() -> None:
    # Prepare
    rng = np.random.default_rng(9)
    codes = rng.standard_normal((5, 16))
    # Execute
    report = evaluate(codes, codes, np.eye(2)[[0] * 5], np.eye(2)[[1] * 5], ks=(2,))
    empty = evaluate(codes, codes[:0], np.eye(2)[[0] * 5], np.zeros((0, 2)), ks=(2,))
    # Assert
    for r in (report, empty):
        assert math.isnan(r.map) and math.isnan(r.precision_at[2]) and r.num_counted_queries == 0
        assert np.isnan(r.pr_recall).all()


def test_relevance_and_report_serialisation() -> None:
    # Prepare
    ql = np.array([[1, 0, 1], [0, 0, 0]])
    al = np.array([[0, 0, 1], [0, 1, 0]])
    problem = _problem(10, 8)
    # Execute
    rel = relevance(ql, al)
    data = evaluate(*problem, ks=(5,)).to_dict()
    # Assert
    assert rel.tolist() == [[True, False], [False, False]]
    assert set(data) >= {"map", "precision_at", "pr_precision", "pr_recall"}
    assert isinstance(RetrievalReport, type) and json.loads(json.dumps(data))["precision_at"]["5"] >= 0


def test_bad_inputs_raise() -> None:
    # Prepare
    queries, archive, ql, al = _problem(11, 8)
    # Execute / Assert
    with pytest.raises(DataError, match="same b"):
        evaluate(queries, archive[:, :4], ql, al)
    with pytest.raises(DataError, match="archive_labels"):
        evaluate(queries, archive, ql, al[:-1])
    with pytest.raises(DataError, match="classes"):
        evaluate(queries, archive, ql, al[:, :3])
    with pytest.raises(ConfigError, match="cut-offs"):
        precision_at_k(queries, archive, ql, al, ks=(0,))
    with pytest.raises(ConfigError, match="chunk_size"):
        evaluate(queries, archive, ql, al, chunk_size=0)


def test_real_multilabel_statistics_match_reference() -> None:
    # Prepare: real MIRFlickr label rows (about 3.8 labels each) with random 32-bit codes
    path = shared_file("mirflickr25k_text_labels_only.h5")
    with h5py.File(path, "r") as f:
        labels = np.asarray(f["L_all"][:260])
    rng = np.random.default_rng(12)
    codes = rng.standard_normal((260, 32))
    problem = (codes[:60], codes[60:], labels[:60], labels[60:])
    ref_map, ref_p, _, ref_rec = _reference(*problem, (10, 100))
    # Execute
    report = evaluate(*problem, ks=(10, 100))
    # Assert
    _assert_close(report.map, ref_map)
    _assert_close(report.precision_at[100], ref_p[100])
    np.testing.assert_allclose(report.pr_recall, ref_rec, rtol=0, atol=TOL)
