"""What ``pfmh-participant archive ...`` and the site daemon do to the archive (model + archive glue)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from participant.archive import Archive, ArchiveSnapshot
from participant.search_engine import reencode
from participant.site_model import ModelNotReady, load_site_model
from pfmh_model.data import MultiModalDataset
from pfmh_model.record_file import RecordBatch, load_records

logger = logging.getLogger(__name__)


def archive_of(state_dir: Path) -> Archive:
    return Archive(state_dir / "archive")


def index_after_federation(state_dir: Path, data: MultiModalDataset) -> Path:
    """After ``join``: create the archive from the site's database split, or re-encode the living one.

    A federation without a completed round leaves no usable model; then nothing is indexed and a
    warning says so (search refuses until a round completes).
    """
    archive = archive_of(state_dir)
    try:
        model = load_site_model(state_dir)
    except ModelNotReady as exc:
        logger.warning("archive not indexed: %s", exc)
        return archive.root
    if archive.exists():
        snap = reencode(model, archive)
    else:
        db = data.database
        present = np.ones((len(db), 2), bool)  # the training layout has both modalities
        batch = RecordBatch(db.image, db.text, present, db.ids, db.labels.astype("uint8"))
        snap = archive.add(batch, model.encode_batch(batch), bits=model.bits, model_version=model.version,
                           class_names=list(data.class_names) if data.class_names else None)
    logger.info("archive %s: %d records, model %s%s", snap.generation, len(snap), model.version,
                "" if snap.has_ids else " (no record ids in the data: records are numbered in order)")
    return archive.root


def add_file(state_dir: Path, path: Path) -> tuple[ArchiveSnapshot, int]:
    """Encode a record file with the current model and append it; returns the snapshot and the count added."""
    model = load_site_model(state_dir)
    archive = archive_of(state_dir)
    if archive.exists():
        reencode(model, archive)
    settings_classes = model.trainer.num_classes
    batch = load_records(path, image_dim=model.image_dim, text_dim=model.text_dim, num_classes=settings_classes)
    return archive.add(batch, model.encode_batch(batch), bits=model.bits, model_version=model.version), len(batch)


def stats(archive: Archive, snapshot: ArchiveSnapshot) -> dict:
    """What ``archive stats`` prints."""
    on_disk = sum(p.stat().st_size for p in (archive.root / snapshot.generation).iterdir())
    codes_bytes = int(snapshot.codes_t.nbytes)
    n = len(snapshot)
    return {"records": n, "generation": snapshot.generation, "model_version": snapshot.model_version,
            "bits": snapshot.bits, "record_ids": snapshot.has_ids, "labels": snapshot.labels is not None,
            "image_only": int((snapshot.present[:, 0] & ~snapshot.present[:, 1]).sum()) if n else 0,
            "text_only": int((~snapshot.present[:, 0] & snapshot.present[:, 1]).sum()) if n else 0,
            "code_bytes": codes_bytes, "disk_bytes": on_disk}

