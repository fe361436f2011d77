"""``federation.config_files``: the TOML it writes reads back as the same mapping, and the daemons load it."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.config_files import coordinator_document, site_document, toml_text, write_toml
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate


def test_any_config_mapping_round_trips_through_tomllib() -> None:
    # Prepare: every value kind, odd strings and keys, tables nested three deep, an empty table
    doc = {"name": 'quote " back \\ tab \t newline \n del \x7f ü', "flag": False, "n": -3, "x": 1e-5,
           "big": 1e16, "ratio": 0.1, "inf": float("inf"), "names": ["a", "b"], "empty": [], "nested": [[1, 2], []],
           "odd key": 1, "table": {"k": 1, "sub": {"deep": {"v": "w"}}, "only": {"sub": {"z": True}}}, "none": {}}
    # Execute
    text = toml_text({**doc, "left_out": None, "table": {**doc["table"], "gone": None}}, comment="two\nlines")
    # Assert
    assert tomllib.loads(text) == doc
    assert text.startswith("# two\n# lines\n")


def test_a_value_toml_cannot_hold_names_its_key_path() -> None:
    with pytest.raises(TypeError, match=r"federation\.train\.bits = b'8'"):
        toml_text({"federation": {"train": {"bits": b"8"}}})


def test_the_daemons_load_what_it_writes(tmp_path: Path) -> None:
    # Prepare: a PKI in the standard layout and a data file (the site's loader checks that it exists)
    from coordinator.config import load_config as load_coordinator
    from participant.config import load_config as load_site

    ca = create_ca(federation_id="fed", out_dir=tmp_path / "pki")
    for role, name in ((Role.COORDINATOR, "coordinator"), (Role.SITE, "site-a"), (Role.SITE, "site-b")):
        issue_certificate(ca=ca, role=role, name=name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "site-a.h5").write_bytes(b"")
    federation = {"federation_id": "fed", "image_dim": 8, "text_dim": 6, "num_classes": 3,
                  "rounds": 2, "min_sites": 2, "train": {"bits": 8}, "privacy": {"mode": "off"},
                  "secagg": {"fraction_bits": 16}}
    # Execute
    coordinator = load_coordinator(write_toml(tmp_path / "coordinator.toml", coordinator_document(
        sites=["site-a", "site-b"], federation=federation, server={"listen": "127.0.0.1:0", "long_poll_s": 1.0},
        metrics_listen="127.0.0.1:9100")))
    site = load_site(write_toml(tmp_path / "site-a.toml", site_document(
        site="site-a", federation_id="fed", coordinator="127.0.0.1:1", data="data/site-a.h5", threads=2,
        privacy={"epsilon_max": 4.0, "require_dp": False})))
    # Assert
    assert coordinator.sites == ("site-a", "site-b") and coordinator.federation.secagg.fraction_bits == 16
    assert (coordinator.server.listen, coordinator.metrics_listen) == ("127.0.0.1:0", "127.0.0.1:9100")
    assert coordinator.tls.crl == "pki/ca/crl.pem" and coordinator.federation.train.bits == 8
    assert (site.tls.signing_key, site.state_dir, site.threads) == ("pki/site-a/signing.key", "state/site-a", 2)
    assert site.privacy.epsilon_max == 4.0 and site.tls.crl == "pki/ca/crl.pem"
