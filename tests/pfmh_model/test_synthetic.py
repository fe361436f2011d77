"""Tests of pfmh_model.synthetic: determinism, realistic statistics, learnable-but-not-trivial structure."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pfmh_model.data import load_h5
from pfmh_model.errors import ConfigError
from pfmh_model.synthetic import PRESETS, generate, write_synthetic


def _centroid_scores(train: np.ndarray, query: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """Cosine similarity of centred queries to centred class centroids, (n_query, C)."""
    mean = train.mean(axis=0)
    centroids = train_labels.T @ (train - mean) / train_labels.sum(axis=0)[:, None]
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    q = query - mean
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)) @ centroids.T


def test_generate_is_deterministic_in_seed() -> None:
    # Prepare / Execute
    a, b, c = generate("tiny", seed=0), generate("tiny", seed=0), generate("tiny", seed=1)
    # Assert
    for split in ("train", "database", "query"):
        for field in ("image", "text", "labels"):
            np.testing.assert_array_equal(getattr(a.split(split), field), getattr(b.split(split), field))
    assert not np.array_equal(a.database.image, c.database.image)
    assert not np.array_equal(a.query.labels, c.query.labels)


def test_presets_have_the_promised_sizes() -> None:
    # Prepare
    mir = PRESETS["mirflickr"]
    # Execute
    tiny = generate("tiny")
    # Assert
    assert (mir.image_dim, mir.text_dim, mir.num_classes) == (4096, 1386, 24)
    assert (mir.n_train, mir.n_database, mir.n_query) == (5000, 17772, 2243)
    assert (len(tiny.train), len(tiny.database), len(tiny.query)) == (300, 600, 100)
    assert (tiny.image_dim, tiny.text_dim, tiny.num_classes) == (64, 48, 8)
    np.testing.assert_array_equal(tiny.train.image, tiny.database.image[:300])  # train drawn from database


def test_statistics_look_like_mirflickr() -> None:
    # Prepare
    data = generate("small", seed=0)
    labels, text, image = data.database.labels, data.database.text, data.database.image
    # Execute
    per_record = labels.sum(axis=1)
    freq = labels.mean(axis=0)
    corr = np.corrcoef(labels.T)[np.triu_indices(data.num_classes, 1)]
    nonzeros = (text > 0).sum(axis=1)
    # Assert
    assert per_record.min() >= 1 and 2.5 < per_record.mean() < 3.5 and per_record.max() >= 6
    assert freq.max() > 10 * freq.min()  # imbalanced labels
    assert corr.max() > 0.2 and corr.min() < -0.1  # labels co-occur (and avoid each other)
    assert image.min() >= 0 and 0.3 < (image > 0).mean() < 0.7  # non-negative, dense-ish
    assert text.min() >= 0 and np.array_equal(text, np.round(text))  # word counts
    assert 5 <= np.median(nonzeros) <= 15 and nonzeros.min() >= 1


def test_each_modality_is_informative_but_not_trivial_and_fusion_helps() -> None:
    # Prepare
    data = generate("small", seed=0)
    truth = data.query.labels
    # Execute
    s_img = _centroid_scores(data.train.image, data.query.image, data.train.labels)
    s_txt = _centroid_scores(data.train.text, data.query.text, data.train.labels)
    hit = {name: float(truth[np.arange(len(truth)), s.argmax(axis=1)].mean())
           for name, s in (("image", s_img), ("text", s_txt), ("both", s_img + s_txt))}
    majority = float(truth.mean(axis=0).max())  # always guessing the most frequent label
    # Assert
    for name in ("image", "text"):
        assert 0.3 < hit[name] < 0.9, hit
        assert hit[name] > majority + 0.1, (hit, majority)
    assert hit["both"] > max(hit["image"], hit["text"]) + 0.03, hit
    assert hit["both"] < 0.9, hit


def test_write_synthetic_round_trip(tmp_path: Path) -> None:
    # Prepare / Execute
    path = write_synthetic(tmp_path / "tiny.h5", "tiny", seed=3)
    again = load_h5(path)
    # Assert
    np.testing.assert_array_equal(again.query.text, generate("tiny", seed=3).query.text)
    assert again.name == "synthetic_tiny" and again.class_names is not None


def test_bad_preset_or_spec_raises_config_error() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="unknown synthetic preset 'mirflicker'"):
        generate("mirflicker")
    with pytest.raises(ConfigError, match="n_train 700"):
        generate(replace(PRESETS["tiny"], n_train=700))
    with pytest.raises(ConfigError, match="label_noise"):
        generate(replace(PRESETS["tiny"], label_noise=1.5))


@pytest.mark.slow
def test_full_mirflickr_preset_is_fast_and_float32() -> None:
    # Prepare
    start = time.perf_counter()
    # Execute
    data = generate("mirflickr", seed=0)
    seconds = time.perf_counter() - start
    # Assert
    assert seconds < 20, seconds
    assert data.database.image.dtype == np.float32 and data.database.image.shape == (17772, 4096)
