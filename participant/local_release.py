"""One site's work in a round, from its records to its upload vector: training, the DP chain, the statistics.

The site daemon, the privacy audit (``bench/privacy_audit.py``) and the DP-utility benchmark all call
``LocalRelease.compute``, so what is audited is what a site uploads. The chain in force (docs/PRIVACY.md):

- DP off: PFMH / FedHAP train as in the paper; exact statistics (nothing is claimed).
- ``statistics_encoder = "dp_sgd"``: the model whose codes make the statistics (PFMH's personal model,
  FedHAP's hashing network) is trained with Opacus DP-SGD; the statistics are computed with that model,
  clipped to the stated sensitivity and noised. The shared model, when it is federated, is DP-SGD-trained
  too. Models that never leave the site (PFMH's shared model in prototype mode) train without DP.
- ``statistics_encoder = "frozen"``: the statistics come from a model that never saw the site's records
  (public weights, or the common seed-initialised network), so the stated sensitivity holds as it is.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from federation.plan import FederationSettings
from participant.dp_sgd import (
    planned_release,
    train_encoder_dp_sgd,
    train_fedhap_dp_sgd,
    train_shared_dp_sgd,
)
from participant.privacy import ENCODER_MECHANISM, PROTOTYPE_MECHANISM, Release, SitePrivacy
from pfmh_model.aggregation import UploadLayout
from pfmh_model.data import Split
from pfmh_model.fedhap import FedHAPTrainer
from pfmh_model.local_round import make_upload, train_fedavg_site, train_fedhap_site, train_pfmh_site
from pfmh_model.methods import Method
from pfmh_model.network import HashNet
from pfmh_model.prototypes import PrototypeStats, complete_prototypes
from pfmh_model.training import SiteTrainer
from security.dp_config import DPMode
from security.dp_sensitivity import l2_sensitivity
from security.errors import SecurityError


class FrozenEncoderError(SecurityError):
    """The frozen encoder named by the federation is missing or is not the one it names (fatal)."""


def load_frozen_encoder(like: HashNet, path: Path | None, sha256: str) -> HashNet:
    """The frozen statistics encoder: ``like`` at its common initial weights, or weights from ``path``.

    Call before the trainer is trained or restored, so ``like`` holds the seed-initialised weights that
    every site builds identically (data-independent).

    Raises:
        FrozenEncoderError: ``sha256`` is set and ``path`` is missing or hashes differently.
    """
    encoder = copy.deepcopy(like)
    if sha256:
        if path is None or not path.is_file():
            raise FrozenEncoderError(f"the federation names a frozen encoder (sha256 {sha256[:12]}...) but "
                                     f"privacy.frozen_encoder in site.toml is {str(path or '')!r}: no such file")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256.lower():
            raise FrozenEncoderError(f"{path} has sha256 {digest[:12]}..., the federation names {sha256[:12]}...: "
                                     "not the agreed frozen encoder")
        encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    encoder.eval()
    for param in encoder.parameters():
        param.requires_grad_(False)
    return encoder


class LocalRelease:
    """Computes a site's upload vector and the DP releases it makes.

    Args:
        settings: the federation's settings.
        trainer: the site's trainer, built with ``dp_personal`` / ``dp_compatible`` as ``dp_models`` says.
        privacy: the site's privacy state (its accountant and ledger).
        layout: the upload layout.
        frozen_encoder: required when ``privacy.statistics_encoder`` is "frozen" and DP is on.
    """

    def __init__(self, settings: FederationSettings, trainer: SiteTrainer, privacy: SitePrivacy,
                 layout: UploadLayout, *, frozen_encoder: HashNet | None = None) -> None:
        if trainer.config != settings.train:  # e.g. a bare TrainConfig: "auto" weights resolved without DP
            raise ValueError(f"the trainer's TrainConfig {trainer.config} is not the plan's {settings.train}: build "
                             "it from settings.train (trainer_factory.make_trainer)")
        self.settings, self.trainer, self.privacy, self.layout = settings, trainer, privacy, layout
        p = settings.privacy
        self.dp = p.mode is not DPMode.OFF and settings.uses_prototypes
        self.encoder_dp_sgd = self.dp and p.trains_encoder_with_dp_sgd
        self.frozen = frozen_encoder if (self.dp and not self.encoder_dp_sgd) else None
        if self.dp and not self.encoder_dp_sgd and self.frozen is None:
            raise FrozenEncoderError("privacy.statistics_encoder is \"frozen\" but no frozen encoder was given")
        self.shared_dp_sgd = settings.uses_dp_sgd

    @staticmethod
    def dp_models(settings: FederationSettings) -> dict[str, bool]:
        """Which of the trainer's models DP-SGD trains (so they need per-record norms): make_trainer kwargs."""
        encoder = settings.privacy.trains_encoder_with_dp_sgd and settings.uses_prototypes
        fedhap = settings.method is Method.FEDHAP
        return {"dp_compatible": settings.uses_dp_sgd or (encoder and fedhap),
                "dp_personal": encoder and not fedhap}

    @property
    def chain(self) -> str:
        """The chain in force, as written into every ledger entry."""
        if not self.dp:
            return "none (DP off)"
        if self.encoder_dp_sgd:
            model = "hashing network" if self.settings.method is Method.FEDHAP else "personal model"
            return f"dp_sgd: statistics from the {model}, trained with DP-SGD"
        sha = self.settings.privacy.frozen_encoder_sha256
        return f"frozen: statistics from {'weights sha256 ' + sha if sha else 'the seed-initialised network'}"

    def _dp_sgd_release(self, n: int, epochs: int, mechanism: str) -> Release:
        p = self.settings.privacy
        return planned_release(self.trainer, n, noise_multiplier=p.dp_sgd_noise_multiplier,
                               max_grad_norm=p.dp_sgd_max_grad_norm, epochs=epochs, mechanism=mechanism)

    def _encoder_epochs(self) -> int:
        cfg = self.trainer.config
        return cfg.personal_epochs + cfg.shared_epochs if self.settings.method is Method.FEDHAP else cfg.personal_epochs

    def planned(self, n_records: int) -> list[Release]:
        """The DP releases this round's upload makes, in the order they are accounted (checked before training)."""
        releases = []
        if self.encoder_dp_sgd:
            releases.append(self._dp_sgd_release(n_records, self._encoder_epochs(), ENCODER_MECHANISM))
        if self.dp:
            releases.append(Release(PROTOTYPE_MECHANISM, self.settings.privacy.noise_multiplier,
                                    l2_sensitivity(label_cap=self.privacy.label_cap), 1.0, 1))
        if self.shared_dp_sgd:
            releases.append(self._dp_sgd_release(n_records, self.trainer.config.shared_epochs,
                                                 "dp_sgd_shared_model"))
        return releases

    def not_covered(self) -> str:
        """What leaves the site this round without DP (written into the ledger); docs/PRIVACY.md section 4."""
        gaps = ["the record count and feature sizes sent at join", "the per-site mAP reported each round"]
        if self.settings.uses_prototypes and not self.dp:
            gaps.append("prototype statistics (DP off)")
        if self.layout.model_size and not self.shared_dp_sgd:
            gaps.append("shared model update (no DP-SGD)")
        return "; ".join(gaps)

    def _noisy(self, codes: np.ndarray, labels: np.ndarray, noise_cohort: int) -> PrototypeStats:
        noisy = self.privacy.prototype_vector(codes, labels, noise_cohort=noise_cohort)
        return PrototypeStats.from_vector(noisy, self.settings.num_classes, self.trainer.config.bits)

    def _train_dp(self, trainer: SiteTrainer, train: Split, targets: np.ndarray, epochs: int) -> None:
        p = self.settings.privacy
        kwargs = {"noise_multiplier": p.dp_sgd_noise_multiplier, "max_grad_norm": p.dp_sgd_max_grad_norm,
                  "epochs": epochs}
        if isinstance(trainer, FedHAPTrainer):
            train_fedhap_dp_sgd(trainer, train, global_codes=targets, **kwargs)
        else:
            train_encoder_dp_sgd(trainer, train, global_prototypes=targets, **kwargs)

    def compute(self, train: Split, global_prototypes: np.ndarray, *, noise_cohort: int = 1) -> np.ndarray:
        """Train for one round and return the upload vector (DP noise already added where DP is on).

        Args:
            train: the site's training records.
            global_prototypes: the broadcast prototypes (PFMH) or class codes (FedHAP), (C, b).
            noise_cohort: distributed mode's m for this round (``security.dp_cohort.noise_cohort``).
        """
        t, s = self.trainer, self.settings
        if s.method is Method.FEDAVG:
            train_fedavg_site(t, train)
            return make_upload(t, len(train), None, self.layout).to_vector(self.layout)
        if isinstance(t, FedHAPTrainer):
            if self.encoder_dp_sgd:
                self._train_dp(t, train, global_prototypes, self._encoder_epochs())
                stats = self._noisy(np.where(t.encode(train, model="shared") >= 0, 1.0, -1.0), train.labels,
                                    noise_cohort)
            else:
                stats, _ = train_fedhap_site(t, train, global_prototypes)
                if self.frozen is not None:  # votes of the frozen encoder's sign codes
                    stats = self._noisy(np.where(self._frozen_codes(train) >= 0, 1.0, -1.0), train.labels,
                                        noise_cohort)
            return make_upload(t, len(train), stats, self.layout).to_vector(self.layout)
        if self.encoder_dp_sgd:
            self._train_dp(t, train, global_prototypes, t.config.personal_epochs)
            stats = self._noisy(t.encode(train, model="personal"), train.labels, noise_cohort)
            if not self.shared_dp_sgd:  # the shared model stays on the site: it may use the exact local stats
                completed = complete_prototypes(t.prototype_statistics(train), global_prototypes)
                t.train_shared(train, prototypes=completed, global_prototypes=global_prototypes)
        else:
            stats, _ = train_pfmh_site(t, train, global_prototypes, train_shared=not self.shared_dp_sgd)
            if self.frozen is not None:
                stats = self._noisy(self._frozen_codes(train), train.labels, noise_cohort)
        if self.shared_dp_sgd:
            p = s.privacy
            train_shared_dp_sgd(t, train, global_prototypes=global_prototypes,
                                noise_multiplier=p.dp_sgd_noise_multiplier, max_grad_norm=p.dp_sgd_max_grad_norm,
                                epochs=t.config.shared_epochs)
        return make_upload(t, len(train), stats, self.layout).to_vector(self.layout)

    def _frozen_codes(self, train: Split) -> np.ndarray:
        assert self.frozen is not None
        device = next(self.frozen.parameters()).device
        with torch.no_grad():
            return self.frozen(torch.from_numpy(np.ascontiguousarray(train.image, dtype=np.float32)).to(device),
                               torch.from_numpy(np.ascontiguousarray(train.text, dtype=np.float32)).to(device)
                               ).cpu().numpy()
