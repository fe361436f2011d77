"""A site state folder made the way ``join`` leaves it (settings.json, trainer.pt, archive), without a federation.

The trainer is the real one with its initial weights (drawn from ``seed``): an untrained network
spreads records over many distinct codes, so a test can tell a record from its neighbours, while a
briefly trained one maps this tiny dataset onto a few dozen class codes. ``completed_rounds`` is
written into the snapshot as the site daemon does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from federation.plan import FederationSettings, PrivacySettings
from participant.archive_ops import index_after_federation
from pfmh_model.data import MultiModalDataset, Split, save_h5
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import make_trainer
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate

TRAIN = {"bits": 64, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1}


def dataset_with_ids(seed: int = 0) -> MultiModalDataset:
    data = generate("tiny", seed=seed)
    db = data.database
    ids = np.array([f"rec-{i:05d}" for i in range(len(db))], dtype=object)
    database = Split(db.image, db.text, db.labels, ids=ids)
    return MultiModalDataset(data.name, data.train, database, data.query, class_names=data.class_names)


def settings_for(data: MultiModalDataset, train: dict | None = None) -> FederationSettings:
    return FederationSettings(federation_id="testfed", image_dim=data.image_dim, text_dim=data.text_dim,
                              num_classes=data.num_classes, method="pfmh", share_mode="prototypes", rounds=1,
                              min_sites=1, train=dict(train or TRAIN), privacy=PrivacySettings(mode="off"))


def write_model(state: Path, data: MultiModalDataset, *, seed: int = 0, completed_rounds: int = 1,
                after_round: int = 1, train: dict | None = None) -> None:
    """settings.json and trainer.pt in ``state``; ``seed`` changes the weights (another model version)."""
    settings = settings_for(data, train)
    state.mkdir(parents=True, exist_ok=True)
    (state / "settings.json").write_text(settings.to_json())
    trainer = make_trainer(dataclasses.replace(settings.train, seed=seed), image_dim=data.image_dim,
                           text_dim=data.text_dim, num_classes=data.num_classes)
    # The snapshot is checked against the federation's TrainConfig, so store it under that config.
    target = make_trainer(settings.train, image_dim=data.image_dim, text_dim=data.text_dim,
                          num_classes=data.num_classes)
    target.load_shared_state(trainer.shared_state())
    target.save_snapshot(state / "trainer.pt", extra={"after_round": after_round,
                                                      "completed_rounds": completed_rounds, "prototypes": None})


def make_site(tmp: Path, *, with_ids: bool = True, completed_rounds: int = 1) -> tuple[Path, MultiModalDataset]:
    """site.toml, data, PKI and a state folder with a model and an archive; returns (site.toml, data)."""
    data = dataset_with_ids() if with_ids else generate("tiny", seed=0)
    (tmp / "data").mkdir(exist_ok=True)
    save_h5(data, tmp / "data" / "site.h5")
    ca = create_ca(federation_id="testfed", out_dir=tmp / "pki")
    issue_certificate(ca=ca, role=Role.SITE, name="site-a")
    state = tmp / "state" / "site-a"
    write_model(state, data, completed_rounds=completed_rounds)
    index_after_federation(state, data)
    toml = tmp / "site.toml"
    toml.write_text("""site = "site-a"
federation_id = "testfed"
coordinator = "127.0.0.1:1"
data = "data/site.h5"
state_dir = "state/site-a"

[tls]
ca_cert = "pki/site-a/ca.crt"
cert = "pki/site-a/tls.crt"
key = "pki/site-a/tls.key"
signing_key = "pki/site-a/signing.key"
""")
    return toml, data
