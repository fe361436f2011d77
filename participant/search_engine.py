"""Searching a site's archive with new records: one model and one archive generation per answer.

``ArchiveView`` pairs a loaded model with an archive generation whose codes that model made, and
refuses any other pairing; queries are encoded by the same model, so an answer never mixes two
models. ``SearchEngine`` holds the live view for a server: ``refresh`` notices a new model
snapshot or archive generation, re-encodes the archive when the model changed (while the old view
keeps answering), builds the new index, and swaps the view in one assignment.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from participant.archive import Archive, ArchiveSnapshot
from participant.search_encoder import fast_encoder
from participant.search_errors import SearchRefused
from participant.search_types import Hit, SearchAnswer
from participant.site_model import SiteModel, load_site_model, snapshot_stamp
from pfmh_model.hamming_index import HammingIndex
from pfmh_model.retrieval import SearchResult

logger = logging.getLogger(__name__)

MAX_K = 1000


class ArchiveView:
    """A model and the archive generation encoded by it.

    Raises:
        SearchRefused: the generation's codes were made by another model version.
    """

    def __init__(self, model: SiteModel, snapshot: ArchiveSnapshot) -> None:
        if snapshot.model_version != model.version:
            raise SearchRefused(f"the archive ({snapshot.generation}) holds codes of model {snapshot.model_version}, "
                                f"the loaded model is {model.version}; re-encode it with `pfmh-participant archive "
                                "reencode` (a running serve-search does this by itself)")
        if snapshot.bits != model.bits:
            raise SearchRefused(f"the archive holds {snapshot.bits}-bit codes, the model makes {model.bits}-bit codes")
        self.model, self.snapshot = model, snapshot
        self.index = HammingIndex.from_word_major(np.asarray(snapshot.codes_t), snapshot.bits)
        self.encode = fast_encoder(model) or model.encode_packed   # query records -> packed codes

    def check_features(self, image: np.ndarray, text: np.ndarray, present: np.ndarray) -> None:
        """Refuse queries whose feature dims differ from the model's.

        Shape:
            - image: (q, d_img); text: (q, d_txt); present: (q, 2) bool
        """
        want = (self.model.image_dim, self.model.text_dim)
        if image.ndim != 2 or text.ndim != 2 or present.shape != (len(image), 2) or len(text) != len(image):
            raise SearchRefused(f"queries must be (q, {want[0]}) image, (q, {want[1]}) text and (q, 2) present")
        for what, got, need, has in (("image", image.shape[1], want[0], present[:, 0]),
                                     ("text", text.shape[1], want[1], present[:, 1])):
            if has.any() and got != need:
                raise SearchRefused(f"query {what} features are {got}-d, the model expects {need}-d")
        if len(present) and not present.any(axis=1).all():
            raise SearchRefused(f"query {int(np.flatnonzero(~present.any(axis=1))[0])} has neither an image "
                                "nor a text")

    def search_rows(self, image: np.ndarray, text: np.ndarray, present: np.ndarray, k: int) -> SearchResult:
        """Encode the queries with this view's model; the exact top-k rows of this generation.

        Shape:
            - output: SearchResult with (q, min(k, archive size)) arrays

        Raises:
            SearchRefused: k out of range or malformed queries.
        """
        if not 1 <= k <= MAX_K:
            raise SearchRefused(f"k={k} must be within 1..{MAX_K}")
        self.check_features(image, text, present)
        q = len(present)
        if not len(self.snapshot) or not q:
            return SearchResult(np.zeros((q, 0), np.int64), np.zeros((q, 0), np.int32))
        image = image if image.shape[1] == self.model.image_dim else np.zeros((q, self.model.image_dim), np.float32)
        text = text if text.shape[1] == self.model.text_dim else np.zeros((q, self.model.text_dim), np.float32)
        return self.index.search_packed(self.encode(image, text, present), k)

    def search(self, image: np.ndarray, text: np.ndarray, present: np.ndarray, k: int) -> SearchAnswer:
        """:meth:`search_rows`, with record ids and label names.

        Raises:
            SearchRefused: k out of range or malformed queries.
        """
        result = self.search_rows(image, text, present, k)
        snap = self.snapshot
        hits: list[list[Hit]] = []
        for rows, dists in zip(result.indices, result.distances, strict=True):
            ids, labels = snap.record_ids(rows), snap.record_labels(rows)
            hits.append([Hit(ids[j], int(rows[j]), int(dists[j]), None if labels is None else tuple(labels[j]))
                         for j in range(len(rows))])
        return SearchAnswer(hits, self.model.version, snap.generation, len(snap), snap.has_ids)


def open_view(state_dir: Path, archive: Archive) -> ArchiveView:
    """The current model and archive of a site, paired (raises ModelNotReady, ArchiveError, SearchRefused)."""
    return ArchiveView(load_site_model(state_dir), archive.open())


def reencode(model: SiteModel, archive: Archive) -> ArchiveSnapshot:
    """Bring the archive to ``model``'s codes (no-op if it already has them); retried if it changes meanwhile."""
    while True:
        snap = archive.open()
        if snap.model_version == model.version:
            return snap
        logger.info("re-encoding %d archive records from model %s to %s", len(snap), snap.model_version,
                    model.version)
        codes = model.encode_packed(snap.image, snap.text, snap.present)
        new = archive.replace_codes(snap, codes, model_version=model.version)
        if new is not None:
            return new


class SearchEngine:
    """The live view of a serving site, refreshed on a new model or archive generation.

    Args:
        state_dir: the site's state folder (``settings.json``, ``trainer.pt``).
        archive: its archive.
        on_swap: called with the new view after each swap (metrics).
    """

    def __init__(self, state_dir: Path, archive: Archive, on_swap=None) -> None:  # noqa: ANN001
        self.state_dir, self.archive = state_dir, archive
        self.on_swap = on_swap or (lambda view: None)
        self._lock = threading.Lock()  # one refresh at a time
        model = load_site_model(state_dir)
        self.view = ArchiveView(model, reencode(model, archive))
        self._stamp = model.stamp
        self.on_swap(self.view)

    def refresh(self) -> bool:
        """Swap in a new view if the model snapshot or the archive changed; True when it swapped.

        Re-encoding and index building happen here, in the caller's (background) thread, while
        searches keep using the old view.
        """
        with self._lock:
            view = self.view
            model = view.model
            stamp = snapshot_stamp(self.state_dir)
            if stamp != self._stamp:
                candidate = load_site_model(self.state_dir)
                self._stamp = candidate.stamp
                if candidate.version != model.version:
                    model = candidate
            if model is view.model and self.archive.current_generation() == view.snapshot.generation:
                return False
            new = ArchiveView(model, reencode(model, self.archive))
            new.index.prepare()
            self.view = new
            logger.info("search view swapped: model %s, %s, %d records", model.version, new.snapshot.generation,
                        len(new.snapshot))
            self.on_swap(new)
            return True
