"""A site too slow for a phase loses that round, not its membership: it takes part in the next one."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import grpc
import torch

from participant.client import CoordinatorError
from participant.site import RoundReport, round_moved_on
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b", "site-c"]
TRAIN = {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1, "shared_epochs": 1, "seed": 1}


def test_refusals_that_mean_the_round_moved_on() -> None:
    assert round_moved_on(CoordinatorError("ShareKeys", grpc.StatusCode.FAILED_PRECONDITION,
                                           "round 1 is in phase masked_input, not share_keys"))
    assert round_moved_on(CoordinatorError("AdvertiseKeys", grpc.StatusCode.FAILED_PRECONDITION,
                                           "round 1 is not in progress (current round: 2)"))
    assert not round_moved_on(CoordinatorError("SubmitMaskedInput", grpc.StatusCode.INVALID_ARGUMENT,
                                               "vector has 10 values, expected 12"))
    assert not round_moved_on(CoordinatorError("Join", grpc.StatusCode.PERMISSION_DENIED, "not enrolled"))


def test_site_that_misses_the_train_timeout_rejoins_next_round(tmp_path: Path) -> None:
    # Prepare: three sites, two are enough for a round; site-c trains too slowly in round 1
    torch.set_num_threads(1)
    first = write_site_files(tmp_path, SITES, seed=2)[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=2, min_sites=2, train=TRAIN, train_timeout_s=3.0,
                             phase_timeout_s=3.0, dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    reports: dict[str, list[RoundReport]] = {name: [] for name in SITES}
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port, on_round=reports[name].append) for name in SITES]
        slow = daemons[2]
        train = slow._train

        def slow_first_round(noise_cohort: int):  # noqa: ANN202
            if slow.after_round == 0:
                time.sleep(5.0)  # past the 3 s train timeout: the others advertise and the phase closes
            return train(noise_cohort)

        slow._train = slow_first_round  # type: ignore[method-assign]
        codes = run_daemons(daemons, 120)
        assert engine.state.completed_rounds == 2
    # Assert: every daemon exited normally; site-c lost round 1 and took part in round 2
    assert codes == [0, 0, 0]
    slow_reports = {r.round: r for r in reports["site-c"]}
    assert not slow_reports[1].completed and "moved on" in slow_reports[1].detail
    assert slow_reports[2].completed
    assert all(r.completed for r in reports["site-a"])
