"""The site's trained model as the retrieval service sees it: loaded from the state folder, versioned.

A model version names the codes a model makes: ``r<round>-<digest>``, the federation round the
snapshot was taken after and the first 12 hex digits of SHA-256 over the shared model's weights.
Two snapshots with the same weights have the same version, so an archive is re-encoded only when
the codes would really change. A model is usable for search only after at least one completed
federation round (``completed_rounds`` in the trainer snapshot); a federation whose rounds were
all skipped leaves an untrained model, and search refuses it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from participant.search_errors import ModelNotReady
from pfmh_model.packed_codes import pack_codes
from pfmh_model.record_file import RecordBatch
from pfmh_model.training import SiteTrainer, flatten_state


@dataclass(frozen=True)
class SiteModel:
    """A loaded shared model with its version.

    Attributes:
        trainer: holds the shared network (only ``encode`` is used here).
        version: ``r<round>-<digest>`` (module docstring).
        completed_rounds: federation rounds this site completed.
        stamp: (mtime_ns, size) of the snapshot file it was loaded from, to notice a new one.
    """

    trainer: SiteTrainer
    version: str
    completed_rounds: int
    stamp: tuple[int, int]

    @property
    def bits(self) -> int:
        return int(self.trainer.config.bits)

    @property
    def image_dim(self) -> int:
        return int(self.trainer.shared.image_dim)

    @property
    def text_dim(self) -> int:
        return int(self.trainer.shared.text_dim)

    def encode_packed(self, image: np.ndarray, text: np.ndarray, present: np.ndarray,
                      batch_size: int = 4096) -> np.ndarray:
        """Packed binary codes of records with the shared model (absent modalities gated off).

        The same codes as ``SiteTrainer.encode`` (eval mode, no gradients), called per request
        without its per-call overhead.

        Shape:
            - image: (n, image_dim); text: (n, text_dim); present: (n, 2) bool
            - output: (n, ceil(bits / 64)) uint64
        """
        import torch

        net = self.trainer.shared
        if net.training:
            net.eval()
        parts = []
        with torch.inference_mode():
            for s in range(0, len(present), batch_size):
                # copies: memory-mapped archive features are read-only
                img = torch.from_numpy(np.array(image[s:s + batch_size], np.float32))
                txt = torch.from_numpy(np.array(text[s:s + batch_size], np.float32))
                mask = torch.from_numpy(np.array(present[s:s + batch_size], np.float32))
                parts.append(pack_codes(net(img, txt, present=mask).numpy()))
        if not parts:
            return np.zeros((0, -(-self.bits // 64)), np.uint64)
        return np.concatenate(parts)

    def encode_batch(self, batch: RecordBatch) -> np.ndarray:
        return self.encode_packed(batch.image, batch.text, batch.present)


def model_version(trainer: SiteTrainer, after_round: int) -> str:
    """``r<round>-<digest>`` of the trainer's shared model."""
    weights = np.ascontiguousarray(flatten_state(trainer.shared_state()), dtype="<f8")
    return f"r{after_round}-{hashlib.sha256(weights.tobytes()).hexdigest()[:12]}"


def snapshot_stamp(state_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of ``trainer.pt``, or None when there is none."""
    try:
        st = os.stat(state_dir / "trainer.pt")
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def load_site_model(state_dir: Path) -> SiteModel:
    """The shared model from ``settings.json`` and ``trainer.pt`` in the site's state folder.

    Raises:
        ModelNotReady: no snapshot yet, or no completed round in it.
    """
    from federation.plan import FederationSettings
    from participant.local_release import LocalRelease  # the same per-record norms the daemon trained with
    from pfmh_model.trainer_factory import make_trainer

    stamp = snapshot_stamp(state_dir)
    if stamp is None or not (state_dir / "settings.json").is_file():
        raise ModelNotReady(f"no trained model in {state_dir}: run `pfmh-participant join` first")
    settings = FederationSettings.from_json((state_dir / "settings.json").read_text())
    trainer = make_trainer(settings.train, image_dim=settings.image_dim, text_dim=settings.text_dim,
                           num_classes=settings.num_classes, **LocalRelease.dp_models(settings),
                           method=settings.method, fedhap=settings.fedhap)
    progress = trainer.load_snapshot(state_dir / "trainer.pt")
    completed = int(progress.get("completed_rounds", 0))
    if completed < 1:
        raise ModelNotReady(f"the model in {state_dir} has no completed federation round (every round was "
                            "skipped or none ran): its codes would be meaningless; run `pfmh-participant join` "
                            "until a round completes")
    return SiteModel(trainer, model_version(trainer, int(progress.get("after_round", 0))), completed, stamp)
