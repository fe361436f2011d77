"""Multi-modal retrieval datasets: the in-memory containers and the community HDF5 format.

A file holds nine datasets, three per split: ``I_*`` image features, ``T_*`` text features and
``L_*`` multi-hot labels, for ``tr`` (training), ``db`` (retrieval database) and ``te`` (queries).
Files written by the PFMH reference are MATLAB v7.3, so h5py sees them transposed (column =
sample); ours are row = sample. ``load_h5`` accepts both and decides per split: the sample count
n is the dimension the label matrix shares with both feature matrices (the larger one if both do,
since a label matrix is (n, C) with C < n); every array is then turned so that axis 0 has length n.
What it found is logged at INFO. ``save_h5`` always writes row = sample, gzip, atomically.

Record ids (optional): ``ids_tr``, ``ids_db`` and ``ids_te`` are 1-D string datasets (UTF-8, at
most ``MAX_ID_BYTES`` bytes each, unique within the split) naming each record of that split, row
for row. Without them a split's ``ids`` is None and callers name records by row number.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pfmh_model.atomic_file import atomic_path
from pfmh_model.errors import DataError

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 4 * 2**20  # HDF5 chunk size target when writing

SPLIT_KEYS: dict[str, tuple[str, str, str]] = {
    "train": ("I_tr", "T_tr", "L_tr"),
    "database": ("I_db", "T_db", "L_db"),
    "query": ("I_te", "T_te", "L_te"),
}
ID_KEYS: dict[str, str] = {"train": "ids_tr", "database": "ids_db", "query": "ids_te"}
MAX_ID_BYTES = 128


def check_ids(ids: object, n: int, where: str) -> np.ndarray:
    """Record ids as a (n,) array of str, or a DataError naming ``where``.

    Raises:
        DataError: not 1-D of length n, an empty or over-long id, or a duplicate.
    """
    raw = np.asarray(ids)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise DataError(f"{where}: record ids have shape {raw.shape}, expected ({n},): one id per record")
    out = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw.tolist()], dtype=object)
    bad = [v for v in out if not v or len(v.encode("utf-8")) > MAX_ID_BYTES]
    if bad:
        raise DataError(f"{where}: record id {bad[0]!r} is empty or longer than {MAX_ID_BYTES} bytes")
    values, counts = np.unique(out.astype(str), return_counts=True)
    if n and counts.max() > 1:
        dup = str(values[int(np.argmax(counts))])
        raise DataError(f"{where}: record id {dup!r} appears more than once; ids must be unique")
    return out


@dataclass(frozen=True)
class Split:
    """One of train / database / query: aligned image features, text features and labels.

    Arrays are cast to C-contiguous float32 on construction (no copy when they already are).
    ``ids`` optionally names each record (unique strings); None means records are known by row.

    Shape:
        image: (n, d_img) float32. text: (n, d_txt) float32. labels: (n, C) float32 in {0, 1}.
        ids: (n,) object array of str, or None.

    Raises:
        DataError: an array is not 2-D, the three row counts differ, or the ids are invalid.
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        for field in ("image", "text", "labels"):
            arr = np.ascontiguousarray(getattr(self, field), dtype=np.float32)
            if arr.ndim != 2:
                raise DataError(f"Split.{field} must be 2-D (n, dim), got shape {arr.shape}; reshape it")
            object.__setattr__(self, field, arr)
        rows = {len(self.image), len(self.text), len(self.labels)}
        if len(rows) != 1:
            raise DataError(f"Split rows differ: image {self.image.shape}, text {self.text.shape}, labels "
                            f"{self.labels.shape}; all three need one row per record")
        if self.ids is not None:
            object.__setattr__(self, "ids", check_ids(self.ids, len(self.image), "Split.ids"))

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def subset(self, index: np.ndarray) -> Split:
        """Rows ``index`` (int positions or a boolean mask of length n) as a new Split (copies)."""
        ids = None if self.ids is None else self.ids[index]
        return Split(image=self.image[index], text=self.text[index], labels=self.labels[index], ids=ids)


@dataclass(frozen=True)
class MultiModalDataset:
    """A named dataset with its three splits; feature dims and classes agree across splits.

    Raises:
        DataError: image, text or label widths differ between splits.
    """

    name: str
    train: Split
    database: Split
    query: Split
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for what in ("image", "text", "labels"):
            widths = {key: getattr(getattr(self, key), what).shape[1] for key in SPLIT_KEYS}
            if len(set(widths.values())) != 1:
                raise DataError(f"dataset {self.name!r}: {what} width differs between splits {widths}; "
                                "every split needs the same feature dims and classes")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(f"dataset {self.name!r}: {len(self.class_names)} class names for "
                            f"{self.num_classes} classes; pass one name per label column or None")

    @property
    def image_dim(self) -> int:
        return int(self.train.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.train.text.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.train.labels.shape[1])

    def split(self, key: str) -> Split:
        """The split named ``key`` ("train", "database" or "query")."""
        if key not in SPLIT_KEYS:
            raise DataError(f"unknown split {key!r}; use one of {sorted(SPLIT_KEYS)}")
        split: Split = getattr(self, key)
        return split

    def describe(self) -> str:
        """One-line summary: sizes, dims, classes and mean labels per training record."""
        mean_labels = float(self.train.labels.sum(axis=1).mean()) if len(self.train) else 0.0
        return (f"{self.name}: train {len(self.train)}, database {len(self.database)}, query "
                f"{len(self.query)}; image {self.image_dim}-d, text {self.text_dim}-d, "
                f"{self.num_classes} classes, {mean_labels:.2f} labels/record (train)")


def _orient(path: Path, split: str, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn the three arrays of a split to row = sample, deciding n from the label matrix."""
    keys = SPLIT_KEYS[split]
    shapes = ", ".join(f"{k} {raw[k].shape}" for k in keys)
    for k in keys:
        if raw[k].ndim != 2:
            raise DataError(f"{path}: dataset {k} has shape {raw[k].shape}, expected a 2-D matrix; "
                            "store features as (n, dim) and labels as (n, C)")
    lab = raw[keys[2]]
    candidates = [n for n in set(lab.shape) if all(n in raw[k].shape for k in keys[:2])]
    if not candidates:
        raise DataError(f"{path}: split {split!r} row counts do not match ({shapes}); I, T and L of a split "
                        "need the same number of records (rows, or columns if stored MATLAB-style)")
    n = max(candidates)
    if lab.shape[0] == lab.shape[1]:
        raise DataError(f"{path}: label matrix {keys[2]} is square {lab.shape}, so its orientation is "
                        "ambiguous; store it row = sample as (n, C)")
    out: dict[str, np.ndarray] = {}
    found = []
    label_rows = lab.shape[0] == n
    for k in keys:
        arr = raw[k]
        rows = arr.shape[0] == n if arr.shape[0] != arr.shape[1] else label_rows
        out[k] = arr if rows else arr.T
        found.append(f"{k} {'row' if rows else 'column'}")
    logger.info("%s: split %s has %d records; orientation (sample axis): %s", path.name, split, n,
                ", ".join(found))
    return out


def _check_values(path: Path, split: str, arrays: dict[str, np.ndarray]) -> None:
    """NaN/inf in features; labels outside {0, 1}; label rows with no label."""
    img_key, txt_key, lab_key = SPLIT_KEYS[split]
    for k in (img_key, txt_key, lab_key):
        bad = int(np.count_nonzero(~np.isfinite(arrays[k])))
        if bad:
            raise DataError(f"{path}: dataset {k} has {bad} NaN/inf values; clean or impute them before use")
    lab = arrays[lab_key]
    off = int(np.count_nonzero((lab != 0) & (lab != 1)))
    if off:
        raise DataError(f"{path}: dataset {lab_key} has {off} values outside {{0, 1}} (e.g. "
                        f"{lab[(lab != 0) & (lab != 1)][0]!r}); labels must be multi-hot 0/1")
    empty = int(np.count_nonzero(lab.sum(axis=1) == 0))
    if empty:
        raise DataError(f"{path}: {empty} of {len(lab)} records in split {split!r} ({lab_key}) have no "
                        "label; drop those records or give each at least one label")


def _class_names(attrs: h5py.AttributeManager, num_classes: int) -> tuple[str, ...] | None:
    for key in ("class_names", "label_names", "classes"):
        if key in attrs:
            text = re.sub(r"\s*\(.*\)\s*$", "", str(attrs[key]))
            names = tuple(s.strip() for s in text.split(","))
            if len(names) == num_classes:
                return names
    return None


def load_h5(path: str | os.PathLike[str]) -> MultiModalDataset:
    """Load a complete I/T/L file in either orientation, checked and cast to float32.

    Raises:
        DataError: missing or non-HDF5 file, missing datasets, mismatched rows or dims, NaN/inf,
            labels not in {0, 1}, or records without a label. The message names file and dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check the path, or make a synthetic one with "
                        "`pfmh-datagen --out FILE`")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5 file; convert it to HDF5 with datasets "
                        f"{' '.join(k for ks in SPLIT_KEYS.values() for k in ks)}")
    wanted = [k for ks in SPLIT_KEYS.values() for k in ks]
    with h5py.File(path, "r") as f:
        missing = [k for k in wanted if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            gone = [f"{m} ({p}*)" for m, p in (("image", "I_"), ("text", "T_"), ("label", "L_"))
                    if not any(k.startswith(p) for k in f.keys())]
            hint = f" It has no {' or '.join(gone)} datasets at all, so it is not a two-modality dataset." \
                if gone else ""
            note = f" Its note says: {f.attrs['WARNING']}" if "WARNING" in f.attrs else ""
            found = " ".join(sorted(f.keys()))
            raise DataError(f"{path}: missing datasets {' '.join(missing)} (found: {found}).{hint}{note} "
                            f"A complete file needs {' '.join(wanted)}.")
        name = str(f.attrs.get("name", path.stem))
        splits = {}
        for split, keys in SPLIT_KEYS.items():
            arrays = _orient(path, split, {k: np.asarray(f[k][()]) for k in keys})
            _check_values(path, split, arrays)
            ids = None
            if isinstance(f.get(ID_KEYS[split]), h5py.Dataset):
                n = len(arrays[keys[2]])
                ids = check_ids(f[ID_KEYS[split]][()], n, f"{path}: dataset {ID_KEYS[split]}")
            splits[split] = Split(arrays[keys[0]], arrays[keys[1]], arrays[keys[2]], ids=ids)
            del arrays
        try:
            dataset = MultiModalDataset(name, splits["train"], splits["database"], splits["query"])
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        names = _class_names(f.attrs, dataset.num_classes)
    if names is not None:
        dataset = MultiModalDataset(name, dataset.train, dataset.database, dataset.query, class_names=names)
    logger.info("loaded %s", dataset.describe())
    return dataset


def save_h5(dataset: MultiModalDataset, path: str | os.PathLike[str]) -> None:
    """Write row = sample, gzip level 1, labels as uint8; atomic (see :mod:`pfmh_model.atomic_file`).

    Level 1 without the shuffle filter: on dense ReLU features it is both the fastest and the
    smallest of the gzip settings we tried (synthetic mirflickr: about 10 s and 180 MiB).

    Raises:
        OSError: the directory does not exist or is not writable (no partial file is left).
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["name"] = dataset.name
        f.attrs["layout"] = "row = sample (NOT transposed); I=image, T=text, L=multi-hot labels uint8"
        if dataset.class_names is not None:
            f.attrs["class_names"] = ",".join(dataset.class_names)
        for split, (ik, tk, lk) in SPLIT_KEYS.items():
            part = dataset.split(split)
            for key, arr in ((ik, part.image), (tk, part.text), (lk, part.labels.astype(np.uint8))):
                if arr.size == 0:  # HDF5 cannot chunk (hence compress) an empty dataset
                    f.create_dataset(key, data=arr)
                    continue
                rows = min(len(arr), max(1, _CHUNK_BYTES // (arr.itemsize * arr.shape[1])))
                f.create_dataset(key, data=arr, compression="gzip", compression_opts=1,
                                 chunks=(rows, arr.shape[1]))
            if part.ids is not None:
                f.create_dataset(ID_KEYS[split], data=list(part.ids), dtype=h5py.string_dtype("utf-8"))
