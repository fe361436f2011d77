"""A networked round (real site daemons, real coordinator, secure aggregation over mTLS) gives the same
global prototypes as the in-process simulation with the same data and seeds."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from participant.archive import Archive
from participant.site_model import load_site_model
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.trainer_factory import train_config
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b", "site-c"]
TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1, "seed": 3}


@pytest.mark.parametrize("method", ["pfmh", "fedhap"])
def test_networked_round_equals_in_process_simulation(tmp_path: Path, method: str) -> None:
    # Prepare: one dataset, one partition, written as each site's own file
    torch.set_num_threads(1)
    parts = write_site_files(tmp_path, SITES, seed=5)
    first = parts[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=1, train=TRAIN, method=method,
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    # Execute: the network
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port) for name in SITES]
        codes = run_daemons(daemons, 300)
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
        archive = Archive(tmp_path / "state" / name / "archive").open()
        assert len(archive) == len(parts[SITES.index(name)].database)
        assert archive.model_version == load_site_model(tmp_path / "state" / name).version
