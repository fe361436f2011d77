"""A networked round (real site daemons, real coordinator, secure aggregation over mTLS) gives the same
global prototypes as the in-process simulation with the same data and seeds."""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from participant.config import SiteConfig, SiteTls
from participant.config import SitePrivacy as SitePrivacyConfig
from participant.site import SiteDaemon
from pfmh_model.data import save_h5
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.partition import partition_dataset
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import train_config
from tests.netfed import FED, coordinator, coordinator_config, make_pki

SITES = ["site-a", "site-b", "site-c"]
TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1, "seed": 3}


@pytest.mark.parametrize("method", ["pfmh", "fedhap"])
def test_networked_round_equals_in_process_simulation(tmp_path: Path, method: str) -> None:
    # Prepare: one dataset, one partition, written as each site's own file
    torch.set_num_threads(1)
    dataset = generate("tiny", seed=5)
    parts = partition_dataset(dataset, num_sites=3, alpha=1.0, seed=5)
    (tmp_path / "data").mkdir()
    for name, part in zip(SITES, parts, strict=True):
        save_h5(part, tmp_path / "data" / f"{name}.h5")
    make_pki(tmp_path, SITES)
    cfg = coordinator_config(tmp_path, SITES, rounds=1, train=TRAIN, method=method,
                             dims=(dataset.image_dim, dataset.text_dim, dataset.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    # Execute: the network
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [SiteDaemon(SiteConfig(
            site=name, federation_id=FED, coordinator=f"127.0.0.1:{port}", data=f"data/{name}.h5",
            tls=SiteTls(ca_cert=f"pki/{name}/ca.crt", cert=f"pki/{name}/tls.crt", key=f"pki/{name}/tls.key",
                        signing_key=f"pki/{name}/signing.key", crl="pki/ca/crl.pem"),
            state_dir=f"state/{name}", privacy=SitePrivacyConfig(require_dp=False)), base=tmp_path)
            for name in SITES]
        codes: list[int] = []
        threads = [threading.Thread(target=lambda d=d: codes.append(d.run())) for d in daemons]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        networked = engine.state.prototypes
        assert engine.state.completed_rounds == 1
    assert codes == [0, 0, 0]
    # Execute: the same round in one process
    federation = Federation(parts, FederationConfig(method=Method(method), rounds=1, share_mode=ShareMode.PROTOTYPES,
                                                    train=train_config(TRAIN)))
    federation.run_round()
    # Assert: equal within fixed-point precision (2^-20 per value, summed over 3 sites)
    assert networked is not None
    np.testing.assert_allclose(networked, federation.state.prototypes, atol=1e-4)
    # and every site kept a ledger entry saying what left it without DP, and an archive index
    for name in SITES:
        ledger = (tmp_path / "state" / name / "ledger.jsonl").read_text()
        assert "upload_without_dp" in ledger
        assert (tmp_path / "state" / name / "index.npz").is_file()
