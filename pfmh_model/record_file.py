"""New records outside the training layout: the file a site adds to its archive or searches with.

A record file is HDF5 with, row for row:

- ``I`` (n, d_img) image features and/or ``T`` (n, d_txt) text features (float). A file without
  ``I`` (or ``T``) holds records that all lack that modality; a row that is entirely NaN marks
  one record without it. Every record needs at least one modality.
- ``ids`` (n,) UTF-8 strings, optional: the records' ids (unique; see ``data.check_ids``).
- ``L`` (n, C) multi-hot labels, optional.

Missing features are stored as zeros and flagged in ``present``; the network closes the absent
branch's gate (``HashNet.forward(present=...)``), so the zeros never reach the code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pfmh_model.atomic_file import atomic_path
from pfmh_model.data import check_ids
from pfmh_model.errors import DataError


@dataclass(frozen=True)
class RecordBatch:
    """Records to encode: features, which modalities each has, optional ids and labels.

    Shape:
        image: (n, d_img) float32, zeros where absent. text: (n, d_txt) float32, zeros where absent.
        present: (n, 2) bool (image, text). ids: (n,) str objects or None. labels: (n, C) uint8 or None.
    """

    image: np.ndarray
    text: np.ndarray
    present: np.ndarray
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.present.shape[0])


def _features(f: h5py.File, key: str, dim: int, n: int, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    if key not in f:
        return np.zeros((n, dim), np.float32), np.zeros(n, bool)
    arr = np.asarray(f[key][()], dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DataError(f"{path}: dataset {key} has shape {arr.shape}, expected ({n}, {dim}): one row per record")
    if arr.shape[1] != dim:
        raise DataError(f"{path}: {what} features are {arr.shape[1]}-d, the model expects {dim}-d "
                        f"(dataset {key}); encode them with the federation's feature extractor")
    missing = np.isnan(arr).all(axis=1) if dim else np.zeros(n, bool)
    bad = (~np.isfinite(arr)).any(axis=1) & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: dataset {key} row {row} has NaN/inf values; a missing {what} is a row "
                        "that is entirely NaN")
    arr[missing] = 0.0
    return arr, np.asarray(~missing, dtype=bool)


def load_records(path: str | os.PathLike[str], *, image_dim: int, text_dim: int,
                 num_classes: int | None = None) -> RecordBatch:
    """Read a record file (module docstring) and check it against the model's feature dims.

    Raises:
        DataError: not an HDF5 file, no feature dataset, wrong dims, rows that disagree, a record
            with neither modality, invalid ids or labels. The message names the file and dataset.
    """
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 record file (datasets I and/or T, optional ids and L)")
    with h5py.File(path, "r") as f:
        keys = [k for k in ("I", "T") if k in f]
        if not keys:
            raise DataError(f"{path}: no I (image) or T (text) dataset; a record file needs at least one "
                            f"(found: {' '.join(sorted(f.keys())) or 'nothing'})")
        n = int(f[keys[0]].shape[0]) if f[keys[0]].ndim == 2 else -1
        image, has_image = _features(f, "I", image_dim, n, path, "image")
        text, has_text = _features(f, "T", text_dim, n, path, "text")
        ids = check_ids(f["ids"][()], n, f"{path}: dataset ids") if "ids" in f else None
        labels = None
        if "L" in f:
            labels = np.asarray(f["L"][()])
            if labels.ndim != 2 or labels.shape[0] != n or not np.isin(labels, (0, 1)).all():
                raise DataError(f"{path}: dataset L must be ({n}, C) multi-hot 0/1, got shape {labels.shape}")
            if num_classes is not None and labels.shape[1] != num_classes:
                raise DataError(f"{path}: dataset L has {labels.shape[1]} classes, the federation {num_classes}")
            labels = labels.astype(np.uint8)
    present = np.stack([has_image, has_text], axis=1)
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        raise DataError(f"{path}: record {int(empty[0])} has neither an image nor a text; drop it")
    return RecordBatch(image, text, present, ids, labels)


def save_records(path: str | os.PathLike[str], *, image: np.ndarray | None, text: np.ndarray | None,
                 ids: np.ndarray | list[str] | None = None, labels: np.ndarray | None = None) -> None:
    """Write a record file atomically (None leaves a modality out for every record)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        if image is not None:
            f.create_dataset("I", data=np.asarray(image, np.float32))
        if text is not None:
            f.create_dataset("T", data=np.asarray(text, np.float32))
        if ids is not None:
            f.create_dataset("ids", data=[str(v) for v in ids], dtype=h5py.string_dtype("utf-8"))
        if labels is not None:
            f.create_dataset("L", data=np.asarray(labels, np.uint8))
