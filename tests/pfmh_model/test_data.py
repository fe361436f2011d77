"""Tests of pfmh_model.data: containers, the HDF5 loader (both orientations, every error) and save_h5."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from pfmh_model.data import SPLIT_KEYS, MultiModalDataset, Split, load_h5, save_h5
from pfmh_model.errors import DataError
from tests.conftest import shared_file

SIZES = {"train": 12, "database": 20, "query": 3}  # query has fewer records (3) than classes (4)
D_IMG, D_TXT, C = 5, 7, 4


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Raw row = sample arrays of a toy dataset, keyed by HDF5 dataset name."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split, (ik, tk, lk) in SPLIT_KEYS.items():
        n = SIZES[split]
        out[ik] = rng.random((n, D_IMG)).astype(np.float32)
        out[tk] = rng.random((n, D_TXT)).astype(np.float32)
        labels = (rng.random((n, C)) < 0.3).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, C, n)] = 1
        out[lk] = labels
    return out


def _write(path: Path, arrays: dict[str, np.ndarray], transpose: frozenset[str] = frozenset()) -> Path:
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr.T if key in transpose else arr)
    return path


def _error_of(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_h5(path)
    return str(info.value)


def test_load_row_layout_casts_to_float32(tmp_path: Path) -> None:
    # Prepare
    raw = _arrays()
    path = _write(tmp_path / "toy.h5", raw)
    # Execute
    data = load_h5(path)
    # Assert
    assert (data.name, data.image_dim, data.text_dim, data.num_classes) == ("toy", D_IMG, D_TXT, C)
    for split, (ik, tk, lk) in SPLIT_KEYS.items():
        part = data.split(split)
        assert len(part) == SIZES[split]
        np.testing.assert_array_equal(part.image, raw[ik])
        np.testing.assert_array_equal(part.text, raw[tk])
        np.testing.assert_array_equal(part.labels, raw[lk])
        for arr in (part.image, part.text, part.labels):
            assert arr.dtype == np.float32 and arr.flags.c_contiguous


def test_load_matlab_column_layout_and_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: every array transposed, except the query labels (mixed orientation is allowed).
    raw = _arrays()
    path = _write(tmp_path / "mat.h5", raw, transpose=frozenset(raw) - {"L_te"})
    # Execute
    with caplog.at_level(logging.INFO, logger="pfmh_model.data"):
        data = load_h5(path)
    # Assert
    np.testing.assert_array_equal(data.train.image, raw["I_tr"])
    np.testing.assert_array_equal(data.database.text, raw["T_db"])
    np.testing.assert_array_equal(data.query.labels, raw["L_te"])
    assert data.train.image.flags.c_contiguous
    assert "I_tr column" in caplog.text and "L_te row" in caplog.text


def test_save_then_load_round_trip_keeps_names(tmp_path: Path) -> None:
    # Prepare
    loaded = load_h5(_write(tmp_path / "a.h5", _arrays()))
    named = MultiModalDataset("toy2", loaded.train, loaded.database, loaded.query,
                              class_names=("a", "b", "c", "d"))
    out = tmp_path / "b.h5"
    out.write_bytes(b"old content is replaced")
    # Execute
    save_h5(named, out)
    again = load_h5(out)
    # Assert
    assert again.name == "toy2" and again.class_names == ("a", "b", "c", "d")
    np.testing.assert_array_equal(again.query.image, named.query.image)
    with h5py.File(out) as f:
        assert f["L_tr"].dtype == np.uint8 and f["I_tr"].shape == (SIZES["train"], D_IMG)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_save_to_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    # Prepare
    data = load_h5(_write(tmp_path / "a.h5", _arrays()))
    # Execute / Assert
    with pytest.raises(OSError):
        save_h5(data, tmp_path / "no" / "such" / "dir.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_save_handles_empty_split(tmp_path: Path) -> None:
    # Prepare
    data = load_h5(_write(tmp_path / "a.h5", _arrays()))
    empty = MultiModalDataset("e", data.train, data.database, data.query.subset(np.zeros(0, dtype=np.int64)))
    # Execute
    save_h5(empty, tmp_path / "e.h5")
    # Assert
    with h5py.File(tmp_path / "e.h5") as f:
        assert f["I_te"].shape == (0, D_IMG)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda a: a.pop("T_db"), ["missing datasets T_db", "found:"]),
    (lambda a: a.update(I_tr=a["I_tr"][:-1]), ["'train' row counts do not match", "I_tr (11, 5)"]),
    (lambda a: a.update(I_te=np.zeros((3, D_IMG + 1), np.float32)), ["image width differs", "'query': 6"]),
    (lambda a: a["T_tr"].__setitem__((slice(0, 3), 0), np.nan), ["T_tr has 3 NaN/inf"]),
    (lambda a: a["I_db"].__setitem__((0, 0), np.inf), ["I_db has 1 NaN/inf"]),
    (lambda a: a["L_db"].__setitem__((slice(0, 2), slice(None)), 0),
     ["2 of 20 records", "'database'", "L_db"]),
    (lambda a: a["L_tr"].__setitem__((0, 0), 2), ["L_tr has 1 values outside {0, 1}"]),
    (lambda a: a.update(L_te=np.eye(3, dtype=np.uint8)), ["L_te is square (3, 3)", "ambiguous"]),
])
def test_load_errors_name_the_problem(tmp_path: Path, mutate: Callable[[dict[str, np.ndarray]], object],
                                     expected: list[str]) -> None:
    # Prepare
    raw = _arrays()
    mutate(raw)
    path = _write(tmp_path / "bad.h5", raw)
    # Execute
    message = _error_of(path)
    # Assert
    assert str(path) in message
    for part in expected:
        assert part in message


def test_load_missing_file_and_non_hdf5(tmp_path: Path) -> None:
    # Prepare
    text_file = tmp_path / "notes.h5"
    text_file.write_text("not hdf5")
    # Execute
    missing, not_h5 = _error_of(tmp_path / "absent.h5"), _error_of(text_file)
    # Assert
    assert "does not exist" in missing and "pfmh-datagen" in missing
    assert "is not an HDF5 file" in not_h5


def test_split_validates_and_subsets() -> None:
    # Prepare
    split = Split(image=np.ones((4, 3)), text=np.zeros((4, 2)), labels=np.eye(4)[:, :2])
    # Execute
    part = split.subset(np.array([True, False, True, False]))
    # Assert
    assert split.image.dtype == np.float32 and len(part) == 2
    with pytest.raises(DataError, match="rows differ"):
        Split(image=np.ones((4, 3)), text=np.zeros((3, 2)), labels=np.ones((4, 2)))
    with pytest.raises(DataError, match="must be 2-D"):
        Split(image=np.ones(4), text=np.zeros((4, 2)), labels=np.ones((4, 2)))


def test_describe_is_one_line() -> None:
    # Prepare
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 1]])
    split = Split(image=np.ones((4, 3)), text=np.zeros((4, 2)), labels=labels)
    # Execute
    line = MultiModalDataset("x", split, split, split.subset(np.arange(2))).describe()
    # Assert
    assert "\n" not in line
    assert "train 4, database 4, query 2; image 3-d, text 2-d, 2 classes, 1.50 labels/record" in line


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "text_dim"), [("wiki.h5", 10), ("wiki_tfidf.h5", 1000)])
def test_real_wiki_files(name: str, text_dim: int) -> None:
    # Prepare
    path = shared_file(name)
    # Execute
    data = load_h5(path)
    # Assert
    assert (len(data.train), len(data.database), len(data.query)) == (2173, 2173, 693)
    assert (data.image_dim, data.text_dim, data.num_classes) == (128, text_dim, 10)
    assert (data.train.labels.sum(axis=1) == 1).all()
    train_counts = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]
    assert data.train.labels.sum(axis=0).astype(int).tolist() == train_counts
    assert data.query.labels.sum(axis=0).astype(int).tolist() == [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]
    np.testing.assert_array_equal(data.database.image, data.train.image)
    assert data.class_names is not None and data.class_names[0] == "art&architecture"


@pytest.mark.shared_data
def test_real_mirflickr_text_only_file_is_refused() -> None:
    # Prepare
    path = shared_file("mirflickr25k_text_labels_only.h5")
    # Execute
    message = _error_of(path)
    # Assert
    assert "missing datasets I_tr" in message and "no image (I_*) datasets" in message
    assert "L_all" in message


def test_record_ids_round_trip_and_refusals(tmp_path: Path) -> None:
    # Prepare
    raw = _arrays()
    path = _write(tmp_path / "ids.h5", raw)
    with h5py.File(path, "a") as f:
        f.create_dataset("ids_db", data=[f"pat-{i}" for i in range(SIZES["database"])],
                         dtype=h5py.string_dtype("utf-8"))
    # Execute
    data = load_h5(path)
    save_h5(data, tmp_path / "again.h5")
    again = load_h5(tmp_path / "again.h5")
    # Assert: ids where given, None elsewhere, kept by subset and save/load
    assert list(again.database.ids) == [f"pat-{i}" for i in range(SIZES["database"])]
    assert data.train.ids is None and again.query.ids is None
    assert list(again.database.subset(np.array([3, 1])).ids) == ["pat-3", "pat-1"]
    with h5py.File(path, "a") as f:
        f["ids_db"][1] = "pat-0"
    assert "record id 'pat-0' appears more than once" in _error_of(path)
    with pytest.raises(DataError, match="one id per record"):
        Split(raw["I_db"], raw["T_db"], raw["L_db"], ids=np.array(["a"]))
