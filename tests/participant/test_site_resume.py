"""A restarted site daemon resumes from its one-file checkpoint: weights, last round and global prototypes."""
from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from federation.plan import FederationSettings
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b"]
TRAIN = {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1, "shared_epochs": 1, "seed": 4}


@pytest.mark.parametrize("share_mode", ["prototypes", "prototypes+model"])
def test_restarted_daemon_restores_round_prototypes_and_weights(tmp_path: Path, share_mode: str) -> None:
    # Prepare: a two-round federation run to the end by real daemons
    torch.set_num_threads(1)
    first = write_site_files(tmp_path, SITES, seed=6)[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=2, train=TRAIN, share_mode=share_mode,
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port) for name in SITES]
        assert run_daemons(daemons, 120) == [0, 0]
        assert engine.state.completed_rounds == 2
    # the site with the most blends in its search average (with prototypes only, both have none)
    pick = max(range(len(SITES)), key=lambda i: daemons[i].search_average.rounds)
    before = daemons[pick]
    assert (before.search_average.rounds > 0) == (share_mode == "prototypes+model")  # the average is exercised
    state = tmp_path / "state" / SITES[pick]
    # Execute: a new daemon for the same site, set up from the settings it saved (no coordinator needed)
    after = site_daemon(tmp_path, SITES[pick], port)
    after.site_index = before.site_index  # what Join would have told it
    after._setup(FederationSettings.from_json((state / "settings.json").read_text()))
    try:
        # Assert: one checkpoint file, and everything the old daemon ended with
        assert sorted(p.name for p in state.iterdir() if "trainer" in p.name) == ["trainer.pt"]
        assert stat.S_IMODE(state.stat().st_mode) == 0o700  # the daemon created it private
        assert after.after_round == before.after_round == 2
        np.testing.assert_array_equal(after.prototypes, before.prototypes)
        assert np.abs(after.prototypes).sum() > 0
        # with the model federated, the validated search model (the average of its choices over both rounds)
        # and its round count; with prototypes only, a site has one shared model and nothing to average
        if share_mode == "prototypes":
            assert before.searching is after.searching is None and after.search_average.state is None
        else:
            # what it searched with, and a validated site's average of its blends (search_choice.next_search_model)
            assert before.settings.keeps_local_model
            assert after.search_average.rounds == before.search_average.rounds
            for name in ("searching", "search_average"):
                mine, restored = getattr(before, name), getattr(after, name)
                mine, restored = (mine.state, restored.state) if name == "search_average" else (mine, restored)
                assert (mine is None) == (restored is None)
                for key, value in (mine or {}).items():
                    assert torch.equal(value, restored[key]), (name, key)
            # a round cut short after training leaves it searching with the last finished round's model again
            after.trainer.train_shared(after.data.train, prototypes=after.prototypes,
                                       global_prototypes=after.prototypes, epochs=1)
            trained = after.trainer.shared_state()
            assert not all(torch.equal(trained[k], v) for k, v in after.searching.items())
            after._restore_search_model()
            for key, value in after.trainer.shared_state().items():
                assert torch.equal(value, after.searching[key]), key
        for model in ("personal", "shared"):
            np.testing.assert_array_equal(after.trainer.encode(after.data.query, model=model),
                                          before.trainer.encode(before.data.query, model=model))
    finally:
        after.privacy.close()
        after.client.close()
