"""A coordinator process killed (SIGKILL) mid-round and restarted resumes; no completed round is lost."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from coordinator.config import load_config
from federation.config_files import coordinator_document, toml_text, write_toml
from proto import federation_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.netfed import FED, ScriptedSite, complete_round, join_sites, make_pki

SITES = ["site-a", "site-b", "site-c"]
CONFIG = coordinator_document(
    sites=SITES, server={"listen": "127.0.0.1:0", "long_poll_s": 1.0, "grace_s": 1.0, "liveness_s": 3.0,
                         "gather_s": 0.5},
    federation={"federation_id": FED, "image_dim": 8, "text_dim": 6, "num_classes": 3, "rounds": 3, "min_sites": 3,
                "phase_timeout_s": 5.0, "train_timeout_s": 10.0, "train": {"bits": 8, "hidden": 16, "width": 8},
                "privacy": {"mode": "off"}})
TOML = toml_text(CONFIG)


def _start(tmp: Path) -> tuple[subprocess.Popen, int]:
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--config", str(tmp / "c.toml"),
                             "--port-file", str(port_file), "--log-level", "WARNING"], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not port_file.is_file():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "coordinator did not start"
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def _sites(tmp: Path, port: int, pki) -> list[ScriptedSite]:  # noqa: ANN001
    cfg = load_config(tmp / "c.toml")
    return join_sites(port, pki, cfg, SITES)


def test_killed_coordinator_resumes_without_losing_or_reusing_rounds(tmp_path: Path) -> None:
    # Prepare
    pki = make_pki(tmp_path, SITES)
    write_toml(tmp_path / "c.toml", CONFIG)
    proc, port = _start(tmp_path)
    try:
        sites = _sites(tmp_path, port, pki)
        first = complete_round(sites, 0)[0]
        # Execute: round 2 starts, keys are advertised, then the coordinator is killed
        configs = [s.wait_round(first.round) for s in sites]
        for s, c in zip(sites, configs, strict=True):
            s.advertise(c)
        interrupted = configs[0].round
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for s in sites:
            s.close()
        proc, port = _start(tmp_path)
        sites = _sites(tmp_path, port, pki)
        # Assert: round 1 survived the crash; the interrupted round's number is never reused
        status = sites[0].stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert status.completed_rounds == 1
        resumed = complete_round(sites, interrupted)[0]
        assert resumed.round > interrupted > first.round
        assert resumed.completed_rounds == 2
        before = first.prototypes.ravel()
        assert before.size and np.all(np.isfinite(before))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    # Assert: the persisted history holds both completed rounds
    import json

    history = json.loads((tmp_path / "state" / "coordinator" / "rounds.json").read_text())["history"]
    assert [h["round"] for h in history if h["outcome"] == "completed"] == [first.round, resumed.round]
    assert FED == "testfed"
