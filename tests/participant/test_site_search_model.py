"""A site daemon of a prototypes+model federation searches with the model its federation's search_model names
(``pfmh_model.search_choice``): real coordinator and daemons on 127.0.0.1, secure aggregation over mTLS."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from participant.site_model import load_site_model
from pfmh_model.training import flatten_state
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b", "site-c"]
TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 2, "seed": 3, "lr": 1e-2}


@pytest.mark.parametrize("search_model", ["aggregate", "local", "validated"])
def test_a_site_searches_with_the_model_its_federation_names(tmp_path: Path, search_model: str) -> None:
    # Prepare: three sites, the shared model federated
    torch.set_num_threads(1)
    parts = write_site_files(tmp_path, SITES, seed=5)
    first = parts[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=2, train=TRAIN, share_mode="prototypes+model",
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5),
                  federation=replace(cfg.federation, search_model=search_model))
    reports: dict[str, list] = {name: [] for name in SITES}
    searched_after: dict[str, list[np.ndarray]] = {name: [] for name in SITES}  # the model loaded after each round
    daemons: list = []

    def on_round(name: str):  # noqa: ANN202
        def record(report) -> None:  # noqa: ANN001
            reports[name].append(report)
            daemon = daemons[SITES.index(name)]
            searched_after[name].append(flatten_state(daemon.trainer.shared_state()))
        return record

    # Execute
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons.extend(site_daemon(tmp_path, name, port, on_round=on_round(name)) for name in SITES)
        assert run_daemons(daemons, 300) == [0, 0, 0]
        aggregate = engine.state.shared_model.astype(np.float32)
    # Assert: the model each site's archive and search use is the aggregate or the site's own, as named
    for name, daemon, part in zip(SITES, daemons, parts, strict=True):
        last = reports[name][-1]
        assert last.completed
        # a federated pfmh shared model trains at a constant rate (methods.shared_lr_is_constant)
        assert daemon.trainer.constant_shared_lr
        assert daemon.trainer.shared_opt.param_groups[0]["lr"] == pytest.approx(TRAIN["lr"])
        searched = flatten_state(load_site_model(tmp_path / "state" / name).trainer.shared_state())
        is_aggregate = bool(np.allclose(searched, aggregate, atol=1e-6))
        if search_model == "aggregate":
            assert is_aggregate and "searching with" not in last.detail
            assert daemon.validation is None and len(daemon.data.train) == len(part.train)
            continue
        expected = "local" if search_model == "local" or "searching with the local model" in last.detail \
            else "aggregate"
        assert f"searching with the {expected} model" in last.detail
        assert daemon.metrics.searches_with_local_model._value.get() == (expected == "local")
        np.testing.assert_allclose(searched, searched_after[name][-1], atol=1e-6)  # the snapshot holds it
        if search_model == "local":
            assert not is_aggregate
            assert daemon.validation is None  # nothing to decide, so nothing held out
        if search_model == "validated":
            # it held out a tenth of its training records (the simulation's rows) and scored both candidates
            assert "prototype margin" in last.detail
            assert len(daemon.validation) == max(2, round(0.1 * len(part.train)))
            assert len(daemon.data.train) + len(daemon.validation) == len(part.train)
            # a blend is searched with as the average of the site's blends so far, round 2's weighing twice round
            # 1's (search_choice.next_search_model); the aggregate as it is
            blends = sum("searching with the local model" in r.detail for r in reports[name])
            assert daemon.search_average.rounds == blends
            assert is_aggregate == (expected == "aggregate")
            if expected == "local":
                assert f"averaged over {blends} rounds" in last.detail
                np.testing.assert_allclose(flatten_state(daemon.search_average.state), searched, atol=1e-6)
            if blends == 2:
                first, now = searched_after[name]
                assert not np.allclose(now, first, atol=1e-4)
