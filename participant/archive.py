"""A site's living archive on disk: packed codes, record ids, labels and features, one generation at a time.

Layout under the archive folder (``<state_dir>/archive``)::

    CURRENT          the live generation's name; replaced atomically (pfmh_model.atomic_file)
    gen-000012/      a generation: written completely, then published, never modified afterwards
      meta.json      format, bits, model version, record count, feature dims, class names, id kind
      codes.npy      (ceil(bits / 64), n) uint64, word-major packed codes: the scan reads the map as is
      ids.npy        (n,) UTF-8 record ids, fixed width (the longest id, at most 128 bytes)
      labels.npy     (n, ceil(C / 8)) uint8 bit-packed labels (only when the records came with labels)
      image.npy, text.npy, present.npy   features and which modality each record has, kept so the
                     archive can be re-encoded when the federation's model changes
    .lock            writers (``archive add/remove``, a server's re-encode) hold an exclusive flock

Readers open the generation CURRENT names with ``np.load(mmap_mode="r")``: opening costs the same
at any archive size, and pages are read on demand. Every change writes a new generation, publishes
it, then deletes the older ones, so a reader sees one whole generation (one model's codes) or the
next, never a mix. A process that still maps a deleted generation keeps a valid view until it
lets go (POSIX unlink semantics).

Erasure: ``remove`` writes a generation without the records and deletes every older generation,
so no file of the archive holds their codes, ids or features any longer. What the filesystem does
with freed blocks is outside this module (keep the state folder on an encrypted volume).

Records without ids get numbers in the order they were added (``meta["next_number"]``), stable
across removals; ``meta["has_ids"]`` says which kind an archive holds, and the two never mix.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pfmh_model.atomic_file import atomic_path
from pfmh_model.data import MAX_ID_BYTES
from pfmh_model.packed_codes import words_for
from pfmh_model.record_file import RecordBatch

FORMAT = "pfmh-archive/1"
_FEATURES = ("image", "text", "present")


class ArchiveError(Exception):
    """The archive is missing, corrupt, or a change to it is refused (the message says what and why)."""


@dataclass(frozen=True)
class ArchiveSnapshot:
    """One published generation, memory-mapped.

    Shape:
        codes_t: (ceil(bits / 64), n) uint64. ids: (n,) bytes. labels: (n, ceil(C / 8)) uint8 or None.
        image: (n, d_img) float32. text: (n, d_txt) float32. present: (n, 2) bool.
    """

    generation: str
    meta: dict
    codes_t: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None
    image: np.ndarray
    text: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def bits(self) -> int:
        return int(self.meta["bits"])

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    @property
    def has_ids(self) -> bool:
        return bool(self.meta["has_ids"])

    def record_ids(self, rows: np.ndarray) -> list[str]:
        """The ids (or add-order numbers) of archive rows."""
        return [v.decode("utf-8") for v in self.ids[np.asarray(rows, np.int64)].tolist()]

    def record_labels(self, rows: np.ndarray) -> list[list[str]] | None:
        """Label names (or class numbers) of archive rows; None when the archive has no labels."""
        if self.labels is None:
            return None
        classes = int(self.meta["num_classes"])
        names = self.meta.get("class_names") or [str(c) for c in range(classes)]
        bits = np.unpackbits(self.labels[np.asarray(rows, np.int64)], axis=1, count=classes)
        which, cls = np.nonzero(bits)
        out: list[list[str]] = [[] for _ in range(len(bits))]
        for r, c in zip(which.tolist(), cls.tolist(), strict=True):
            out[r].append(names[c])
        return out


class Archive:
    """The archive folder: open the live generation, add, remove, replace codes.

    Args:
        root: the archive folder (created on the first write, mode 0700).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def current_generation(self) -> str | None:
        try:
            return (self.root / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def open(self) -> ArchiveSnapshot:
        """The live generation, memory-mapped (retried if a writer replaces it meanwhile).

        Raises:
            ArchiveError: there is no archive, or its files are inconsistent.
        """
        for _ in range(5):
            name = self.current_generation()
            if name is None:
                raise ArchiveError(f"no archive in {self.root}: run `pfmh-participant join` or `archive add` first")
            try:
                return self._open(name)
            except FileNotFoundError:
                continue  # replaced between reading CURRENT and opening its files
        raise ArchiveError(f"{self.root}: the archive kept changing while being opened; try again")

    def _open(self, name: str) -> ArchiveSnapshot:
        folder = self.root / name
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ArchiveError(f"{folder}: archive format {meta.get('format')!r}, this software reads {FORMAT!r}")
        arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r", allow_pickle=False)
                  for key in ("codes", "ids", *_FEATURES)}
        labels = (np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
                  if meta.get("num_classes") else None)
        n = int(meta["count"])
        if arrays["codes"].shape != (words_for(int(meta["bits"])), n) or any(
                len(arrays[k]) != n for k in ("ids", *_FEATURES)):
            raise ArchiveError(f"{folder}: files disagree with meta.json ({n} records); the archive is corrupt")
        return ArchiveSnapshot(name, meta, arrays["codes"], arrays["ids"], labels,
                               arrays["image"], arrays["text"], arrays["present"])

    # ------------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (blocks while another writer holds it)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _publish(self, arrays: dict[str, np.ndarray], meta: dict, *,
                 link_from: ArchiveSnapshot | None = None) -> ArchiveSnapshot:
        """Write a new generation, point CURRENT at it, delete the older ones. Caller holds the lock.

        ``link_from``: files not in ``arrays`` are hard-linked from that generation (a re-encode
        changes only the codes).
        """
        previous = self.current_generation()
        number = int(previous.split("-")[1]) + 1 if previous else 1
        name = f"gen-{number:06d}"
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)  # an unpublished leftover of a crashed writer
        folder.mkdir(mode=0o700)
        for key, value in arrays.items():
            with open(folder / f"{key}.npy", "wb") as handle:
                np.save(handle, np.ascontiguousarray(value), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
        if link_from is not None:
            for key in ("ids", "labels", *_FEATURES):
                source = self.root / link_from.generation / f"{key}.npy"
                if key not in arrays and source.is_file():
                    os.link(source, folder / f"{key}.npy")
        with open(folder / "meta.json", "w") as handle:
            json.dump({**meta, "format": FORMAT}, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        with atomic_path(self.root / "CURRENT") as tmp:
            tmp.write_text(name + "\n")
        for old in self.root.glob("gen-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return self._open(name)

    def add(self, batch: RecordBatch, codes_packed: np.ndarray, *, bits: int, model_version: str,
            class_names: list[str] | None = None) -> ArchiveSnapshot:
        """Append records with their codes (made by ``model_version``) as a new generation.

        Shape:
            - codes_packed: (len(batch), ceil(bits / 64)) uint64

        Raises:
            ArchiveError: another model's codes, another code length or feature dims, id kind
                mixed, a duplicate id, or labels with another class count.
        """
        with self.locked():
            old = self.open() if self.exists() else None
            has_ids = batch.ids is not None
            meta: dict[str, Any] = dict(old.meta) if old else {
                "bits": bits, "count": 0, "has_ids": has_ids, "next_number": 0, "model_version": model_version,
                "image_dim": int(batch.image.shape[1]), "text_dim": int(batch.text.shape[1]),
                "num_classes": 0 if batch.labels is None else int(batch.labels.shape[1]),
                "class_names": class_names}
            self._check_compatible(old, meta, batch, bits, model_version)
            ids = self._new_ids(old, meta, batch)
            arrays = {"codes": np.concatenate([old.codes_t, codes_packed.T], axis=1) if old else codes_packed.T,
                      "ids": np.concatenate([old.ids, ids]) if old else ids,
                      "image": _joined(old, "image", batch.image), "text": _joined(old, "text", batch.text),
                      "present": _joined(old, "present", batch.present)}
            if meta["num_classes"]:
                labels = np.packbits(batch.labels.astype(bool), axis=1)  # type: ignore[union-attr]
                arrays["labels"] = np.concatenate([old.labels, labels]) if old else labels  # type: ignore[list-item]
            meta["count"] = int(meta["count"]) + len(batch)
            return self._publish(arrays, meta)

    @staticmethod
    def _check_compatible(old: ArchiveSnapshot | None, meta: dict, batch: RecordBatch, bits: int,
                          model_version: str) -> None:
        if old is None:
            return
        if meta["model_version"] != model_version:
            raise ArchiveError(f"the archive holds codes of model {meta['model_version']}, the new records were "
                               f"encoded by {model_version}; re-encode the archive first (`archive reencode`)")
        if meta["bits"] != bits or (meta["image_dim"], meta["text_dim"]) != (batch.image.shape[1], batch.text.shape[1]):
            raise ArchiveError(f"the archive holds {meta['bits']}-bit codes of {meta['image_dim']}/"
                               f"{meta['text_dim']}-d features; the new records do not match")
        if bool(meta["has_ids"]) != (batch.ids is not None):
            have = "records with ids" if meta["has_ids"] else "records without ids (numbered)"
            raise ArchiveError(f"the archive holds {have}; add records of the same kind")
        classes = 0 if batch.labels is None else batch.labels.shape[1]
        if meta["num_classes"] and classes != meta["num_classes"]:
            raise ArchiveError(f"the archive's records carry {meta['num_classes']} labels each; the new records "
                               f"{classes or 'none'}")

    @staticmethod
    def _new_ids(old: ArchiveSnapshot | None, meta: dict, batch: RecordBatch) -> np.ndarray:
        if batch.ids is None:
            start = int(meta["next_number"])
            meta["next_number"] = start + len(batch)
            return np.array([str(i).encode() for i in range(start, start + len(batch))], dtype=np.bytes_)
        ids = np.array([v.encode("utf-8") for v in batch.ids], dtype=np.bytes_)  # as wide as the longest
        if old is not None and len(old):
            clash = np.flatnonzero(np.isin(ids, old.ids))
            if clash.size:
                raise ArchiveError(f"record id {batch.ids[clash[0]]!r} is already in the archive; remove it first "
                                   "to replace it")
        return ids

    def remove(self, ids: list[str]) -> tuple[ArchiveSnapshot, int, list[str]]:
        """Erase records by id (or add-order number): a new generation without them, older ones deleted.

        Returns:
            the new snapshot, how many records were removed, and the ids that were not found.
        """
        with self.locked():
            old = self.open()
            wanted = np.array([v.encode("utf-8") for v in ids], dtype=f"S{MAX_ID_BYTES}")
            hit = np.isin(old.ids, wanted)
            missing = [v for v, w in zip(ids, wanted, strict=True) if not np.isin(w, old.ids)]
            keep = np.flatnonzero(~hit)
            arrays = {"codes": old.codes_t[:, keep], "ids": old.ids[keep], "image": old.image[keep],
                      "text": old.text[keep], "present": old.present[keep]}
            if old.labels is not None:
                arrays["labels"] = old.labels[keep]
            meta = {**old.meta, "count": int(keep.size)}
            return self._publish(arrays, meta), int(hit.sum()), missing

    def replace_codes(self, based_on: ArchiveSnapshot, codes_packed: np.ndarray, *,
                      model_version: str) -> ArchiveSnapshot | None:
        """Publish ``based_on`` re-encoded by ``model_version``; None if the archive changed meanwhile.

        The caller encodes outside the lock (slow), then this checks under the lock that the live
        generation is still ``based_on``: a record removed meanwhile can never come back.

        Shape:
            - codes_packed: (len(based_on), ceil(bits / 64)) uint64
        """
        with self.locked():
            if self.current_generation() != based_on.generation:
                return None
            meta = {**based_on.meta, "model_version": model_version}
            return self._publish({"codes": codes_packed.T}, meta, link_from=based_on)


def _joined(old: ArchiveSnapshot | None, key: str, new: np.ndarray) -> np.ndarray:
    return np.concatenate([getattr(old, key), new]) if old is not None else new
