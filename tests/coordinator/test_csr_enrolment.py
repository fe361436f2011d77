"""Issue #16: sites enrolled through the CSR flow (keys made at the site) take part in a full round."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization

from coordinator.local_demo import enrol
from coordinator.server import upload_layout
from proto import federation_pb2 as pb
from security.pki import create_ca
from security.pki_issue import issued_certificates
from tests.netfed import FED, Pki, coordinator, coordinator_config, join_sites

NAMES = ["site-a", "site-b", "site-c"]


def test_csr_enrolled_sites_complete_a_round_and_the_ca_holds_no_site_key(tmp_path: Path) -> None:
    # Prepare: the CA only signs requests; every identity's keys are made in its own folder
    ca = create_ca(federation_id=FED, out_dir=tmp_path / "pki")
    for name in ("coordinator", *NAMES):
        enrol(ca, tmp_path / "pki" / name, name)
    pki = Pki(tmp_path / "pki", ca)
    cfg = coordinator_config(tmp_path, NAMES, rounds=1)
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    with coordinator(tmp_path, cfg) as (port, engine):
        layout = upload_layout(cfg.federation)
        sites = join_sites(port, pki, cfg, NAMES)
        # Execute: one full round over mutual TLS with the CSR-issued certificates and signing keys
        configs = [s.wait_round(0) for s in sites]
        for s, c in zip(sites, configs, strict=True):
            s.advertise(c)
        for s in sites:
            s.share_keys()
        for s in sites:
            s.masked_input(np.ones(layout.length))
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        results = [s.result() for s in sites]
    # Assert: the round completed; the CA folder holds no private key but its own, and issued four certs
    assert all(r.status == pb.READY for r in results) and engine.state.completed_rounds == 1
    keys = [p for p in (tmp_path / "pki" / "ca").rglob("*") if b"PRIVATE KEY" in p.read_bytes()]
    assert keys == [tmp_path / "pki" / "ca" / "ca.key"]
    assert sorted(r.name for r in issued_certificates(tmp_path / "pki")) == sorted(["coordinator", *NAMES])
    for name in NAMES:
        pem = (tmp_path / "pki" / name / "signing.key").read_bytes()
        serialization.load_pem_private_key(pem, password=None)  # made and kept here
