"""A site whose privacy check refuses the federation's settings (the same in every round) leaves and stops
instead of skipping every round while the coordinator waits out its train timeout."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from participant.privacy import SitePrivacy
from participant.site import SiteMismatch
from security.errors import UnsafeConfiguration
from tests.netfed import coordinator, coordinator_config, site_daemon, write_site_files

SITES = ["site-a", "site-b"]
TRAIN = {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1, "shared_epochs": 1}


def test_unsafe_privacy_settings_make_the_site_leave_and_the_round_end_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: every site's own check refuses (as noise_multiplier = -1 does); the train timeout is long
    def refuse(self, releases, round_number):  # noqa: ANN001, ANN202
        raise UnsafeConfiguration("noise_multiplier -1.0 must be > 0 and finite")

    monkeypatch.setattr(SitePrivacy, "check", refuse)
    first = write_site_files(tmp_path, SITES)[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=3, train=TRAIN, train_timeout_s=600.0,
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    errors: dict[str, BaseException] = {}
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port) for name in SITES]

        def run(daemon) -> None:  # noqa: ANN001
            try:
                daemon.run()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors[daemon.cfg.site] = exc

        threads = [threading.Thread(target=run, args=(d,)) for d in daemons]
        started = time.monotonic()
        # Execute
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        deadline = time.monotonic() + 20
        while engine.state.history == [] and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = time.monotonic() - started
        # Assert: each site stopped with the reason and told the coordinator, whose round ended at once
        assert not any(t.is_alive() for t in threads)
        assert set(errors) == set(SITES) and all(isinstance(e, SiteMismatch) for e in errors.values())
        assert "cannot take part under the federation's privacy settings: noise_multiplier -1.0" in str(
            errors["site-a"])
        assert set(engine.departed) == set(SITES)
        assert "noise_multiplier -1.0" in engine.departed["site-a"]
        assert engine.state.history[0]["outcome"] == "aborted" and engine.finished
        assert seconds < 60  # not the 600 s train timeout
