"""``state_dir`` naming a file is refused at load by both daemons, in one line naming the key (it was an
``[Errno 17] File exists`` from deep inside the start, naming neither file nor key)."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import load_config as load_coordinator
from federation.config_files import coordinator_document, site_document, write_toml
from participant.config import load_config as load_site
from proto.settings import SettingsError
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate


def test_both_daemons_refuse_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    # Prepare: a PKI, a data file, and a file where the state folder should be
    ca = create_ca(federation_id="fed", out_dir=tmp_path / "pki")
    for role, name in ((Role.COORDINATOR, "coordinator"), (Role.SITE, "site-a")):
        issue_certificate(ca=ca, role=role, name=name)
    (tmp_path / "site-a.h5").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a folder")
    federation = {"federation_id": "fed", "image_dim": 8, "text_dim": 6, "num_classes": 3, "rounds": 1,
                  "min_sites": 1, "train": {"bits": 8}, "privacy": {"mode": "off"}}
    coordinator = write_toml(tmp_path / "coordinator.toml", coordinator_document(
        sites=["site-a"], federation=federation, state_dir="notes.txt"))
    site = write_toml(tmp_path / "site-a.toml", site_document(
        site="site-a", federation_id="fed", coordinator="127.0.0.1:1", data="site-a.h5", state_dir="notes.txt"))
    # Execute / Assert
    for load, path in ((load_coordinator, coordinator), (load_site, site)):
        with pytest.raises(SettingsError, match=r"state_dir = 'notes.txt': is a file, not a folder$") as err:
            load(path)
        assert str(err.value).startswith(str(path))
