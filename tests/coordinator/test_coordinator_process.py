"""The coordinator as a real process on 127.0.0.1: a busy port and a held state dir are refused with one
line, a restart after the last round says the federation is finished and exits 0, a driver that gives up
exits non-zero, and SIGINT/SIGTERM stop it in seconds without a traceback."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.config import load_config
from tests.conftest import REPO_ROOT
from tests.coordinator.test_restart import TOML
from tests.netfed import Pki, complete_round, join_sites, make_pki

SITES = ["site-a", "site-b", "site-c"]


def _serve(tmp: Path, *extra: str, config: str = "c.toml") -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", "serve", "--config", str(tmp / config), *extra]


def _start(tmp: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(_serve(tmp, "--port-file", str(port_file), *extra), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not port_file.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "coordinator did not start"
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def _run(cmd: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)


def _stop(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str, float]:
    """Send ``sig``; (exit code, stdout, stderr, seconds until it exited)."""
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err, time.monotonic() - started


def _pki(tmp: Path) -> Pki:
    """The PKI the ``fed`` fixture made."""
    return Pki(tmp / "pki", None)


@pytest.fixture()
def fed(tmp_path: Path) -> Path:
    make_pki(tmp_path, SITES)
    (tmp_path / "c.toml").write_text(TOML)
    return tmp_path


def test_a_port_held_by_another_program_is_refused_with_one_line(fed: Path) -> None:
    # Prepare
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # Execute
        done = _run(_serve(fed, "--listen", f"127.0.0.1:{port}"))
    # Assert
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"pfmh-coordinator: error: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
        "coordinator, or another program); stop it or choose another server.listen / --listen"]


def test_a_second_coordinator_on_the_same_port_or_state_dir_refuses_to_start(fed: Path) -> None:
    # Prepare
    first, port = _start(fed)
    try:
        # Execute: the same port (SO_REUSEPORT would let it bind), then another port on the same state
        same_port = _run(_serve(fed, "--listen", f"127.0.0.1:{port}"))
        same_state = _run(_serve(fed, "--listen", "127.0.0.1:0"))
        # Assert
        assert same_port.returncode == 2
        assert same_port.stderr.strip().splitlines() == [
            f"pfmh-coordinator: error: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
            "coordinator, or another program); stop it or choose another server.listen / --listen"]
        assert same_state.returncode == 2
        assert same_state.stderr.strip().splitlines() == [
            f"pfmh-coordinator: error: state dir {fed / 'state' / 'coordinator'} is in use by another "
            f"coordinator (pid {first.pid}); one state dir serves one coordinator: stop that one first"]
        assert "serving on port" not in same_port.stdout + same_state.stdout
        assert first.poll() is None
    finally:
        code, _, err, _ = _stop(first)
    assert code == 0 and "Traceback" not in err
    # Assert: the lock goes with the process; the state dir is free again
    again, _ = _start(fed)
    assert _stop(again)[0] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_coordinator_in_a_round_within_seconds(fed: Path, sig: signal.Signals) -> None:
    # Prepare: a round in flight, a site in a long poll
    proc, port = _start(fed)
    sites = join_sites(port, _pki(fed), load_config(fed / "c.toml"), SITES)
    sites[0].advertise(sites[0].wait_round(0))
    # Execute
    code, out, err, seconds = _stop(proc, sig)
    # Assert: grace_s is 1 s in this config
    assert code == 0, err
    assert seconds < 4.0
    assert "Traceback" not in out + err
    assert "draining (0 rounds completed)" in out
    for s in sites:
        s.close()


def test_a_coordinator_restarted_after_the_last_round_says_finished_and_exits_0(fed: Path) -> None:
    # Prepare: a one-round federation, run to its end
    (fed / "c.toml").write_text(TOML.replace("rounds = 3", "rounds = 1"))
    proc, port = _start(fed)
    sites = join_sites(port, _pki(fed), load_config(fed / "c.toml"), SITES)
    complete_round(sites, 0)
    for s in sites:
        s.close()
    assert _stop(proc)[0] == 0
    # Execute
    started = time.monotonic()
    again = _run(_serve(fed), timeout_s=30)
    # Assert
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 30
    assert again.stdout.strip().splitlines() == [
        f"pfmh-coordinator: federation testfed is finished (1 of 1 rounds completed, state in "
        f"{fed / 'state' / 'coordinator'}); not serving"]


INJECT = """
import sys
from coordinator import rounds
def broken(*args, **kwargs):
    raise ValueError("injected: 'rot13' is not a valid PrgAlgorithm")
rounds.SecAggServer = broken
from coordinator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_that_gives_up_makes_the_process_exit_non_zero(fed: Path) -> None:
    # Prepare: the real CLI in a process whose every round raises while starting; sites stay live 30 s
    (fed / "c.toml").write_text(TOML.replace("liveness_s = 3.0", "liveness_s = 30.0"))
    port_file = fed / "port"
    proc = subprocess.Popen([sys.executable, "-c", INJECT, "serve", "--config", str(fed / "c.toml"),
                             "--port-file", str(port_file), "--log-level", "WARNING"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not port_file.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    # Execute: sites join, so rounds start (and fail)
    sites = join_sites(int(port_file.read_text()), _pki(fed), load_config(fed / "c.toml"), SITES)
    out, err = proc.communicate(timeout=60)
    # Assert
    assert proc.returncode == 1
    assert ("pfmh-coordinator: error: 3 rounds in a row failed with an internal error (last: ValueError: "
            "injected: 'rot13' is not a valid PrgAlgorithm); health is NOT_SERVING, stopping") in err
    assert err.count("Traceback") == 1  # the cause's traceback is logged once, not once per round
    assert "round 3 failed with an internal error" in err
    for s in sites:
        s.close()
