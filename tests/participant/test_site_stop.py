"""``pfmh-participant join`` as a real process: with no coordinator it retries, naming the address at the
default log level, and SIGINT/SIGTERM stop it within about a second, with one line and no traceback; a
call in flight to a live coordinator is cancelled by the stop event as fast."""
from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from federation.config_files import site_document, write_toml
from participant.client import STOP_CHECK_S, CoordinatorClient, Stopped
from proto import federation_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.netfed import FED, coordinator, coordinator_config, site_daemon, write_site_files

SITE = "site-a"


def _free_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _site_toml(tmp: Path, port: int) -> Path:
    return write_toml(tmp / "site.toml", site_document(site=SITE, federation_id=FED, coordinator=f"127.0.0.1:{port}",
                                                       data=f"data/{SITE}.h5", privacy={"require_dp": False},
                                                       retry={"initial_s": 8.0, "max_s": 8.0}))


def _read_until_long_backoff(proc: subprocess.Popen, timeout_s: float, min_sleep_s: float = 3.0) -> str:
    """stderr of ``proc`` up to the first retry line announcing a sleep of at least ``min_sleep_s``."""
    assert proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    seen, deadline = "", time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, f"no long backoff in:\n{seen}"
        if selector.select(timeout=0.5):
            line = proc.stderr.readline()
            seen += line
            sleep = re.search(r"retrying in ([0-9.]+)s", line)
            if sleep and float(sleep.group(1)) >= min_sleep_s:
                return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_join_with_no_coordinator_retries_naming_the_address_and_stops_on_a_signal(
        tmp_path: Path, sig: signal.Signals) -> None:
    # Prepare: the real CLI at its default log level, pointed at a port where nothing listens
    write_site_files(tmp_path, [SITE, "site-b"])
    port = _free_port()
    toml = _site_toml(tmp_path, port)
    proc = subprocess.Popen([sys.executable, "-m", "participant.cli", "join", "--site", SITE, "--config", str(toml)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        retries = _read_until_long_backoff(proc, timeout_s=120)  # it is now sleeping >= 3 s before a retry
        # Execute
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    # Assert
    assert f"Join: coordinator 127.0.0.1:{port}: UNAVAILABLE" in retries
    assert "WARNING" in retries
    assert seconds < 2.0, f"took {seconds:.2f}s to stop"
    assert proc.returncode == 0
    assert out.strip().splitlines() == [f"{SITE}: stopped ({sig.name})"]
    assert "Traceback" not in err


def test_the_stop_event_cancels_a_long_poll_in_flight(tmp_path: Path) -> None:
    # Prepare: a live coordinator whose WaitForRound long-polls for 30 s (one of two sites is here)
    first = write_site_files(tmp_path, [SITE, "site-b"])[0]
    cfg = coordinator_config(tmp_path, [SITE, "site-b"], dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, long_poll_s=30.0))
    with coordinator(tmp_path, cfg) as (port, _):
        daemon = site_daemon(tmp_path, SITE, port)
        client: CoordinatorClient = daemon.client
        daemon.join()
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                client.call("WaitForRound", pb.WaitForRoundRequest(federation_id=FED, after_round=0), timeout_s=60)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)  # the call is in flight, the server holds it
        assert waiter.is_alive()
        # Execute
        started = time.monotonic()
        daemon.stop.set()
        waiter.join(5)
        seconds = time.monotonic() - started
        client.close()
    # Assert
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Stopped)
    assert seconds < STOP_CHECK_S + 0.5
