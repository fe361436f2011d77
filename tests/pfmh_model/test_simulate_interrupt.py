"""Ctrl-C on ``pfmh-simulate --workers 2`` stops the run and its worker processes with one line, no traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def test_ctrl_c_stops_the_simulation_and_its_workers_quietly(tmp_path: Path) -> None:
    # Prepare: a long run over two worker processes, in its own process group (as a terminal's Ctrl-C hits)
    cmd = [sys.executable, "-m", "pfmh_model.simulate_cli", "--preset", "tiny", "--sites", "4", "--rounds", "500",
           "--workers", "2", "--bits", "16", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # If the progress line never comes (its format changed), kill the run rather than hang the suite.
    guard = threading.Timer(120, lambda: os.killpg(proc.pid, signal.SIGKILL))
    guard.start()
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait until the workers are training
            lines.append(line)
            if line.startswith("round   2/"):
                break
    finally:
        guard.cancel()
    assert lines and lines[-1].startswith("round   2/"), "".join(lines)[-2000:]
    # Execute
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    rest, _ = proc.communicate(timeout=60)
    # Assert: exit 130 within seconds, one line saying so, and no worker's traceback
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-2000:]
    assert time.monotonic() - started < 20
    assert "pfmh-simulate: interrupted" in output
    assert "Traceback" not in output, output[-3000:]
