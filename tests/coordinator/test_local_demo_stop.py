"""``pfmh-demo`` as a real process: SIGINT while the sites train stops the coordinator and every site in
seconds, with one line, no traceback and no process left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SITES = ("hospital-a", "hospital-b", "hospital-c")
STOP_LIMIT_S = 15.0  # the demo kills a child after 10 s; this leaves room for a loaded machine


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc to find the demo's children")
def test_sigint_stops_the_whole_demo_in_seconds_with_one_line(tmp_path: Path) -> None:
    # Prepare: the demo, until every site has joined (they are then training round 1)
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.local_demo", "--preset", "tiny", "--rounds", "50",
                             "--workdir", str(work)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not all((work / "state" / s / "settings.json").is_file() for s in SITES):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        children = _children(proc.pid)
        assert len(children) == 1 + len(SITES)
        # Execute
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    output = "".join(lines)
    # Assert
    assert proc.returncode == 130, output
    assert seconds < STOP_LIMIT_S, f"took {seconds:.1f}s\n{output}"
    assert "Traceback" not in output
    after = output[output.index("pfmh-demo: interrupted"):].strip().splitlines()
    assert len(after) == 1 and after[0].startswith("pfmh-demo: interrupted; stopped the coordinator and 3 sites in")
    assert "killed" not in after[0]  # every child stopped on its own, within the grace
    assert not [pid for pid in children if _alive(pid)]
    for name in ("coordinator", *SITES):  # each child's output is kept
        assert (work / "logs" / f"{name}.log").is_file()
    assert "stopped (SIGTERM)" in (work / "logs" / "hospital-a.log").read_text()
