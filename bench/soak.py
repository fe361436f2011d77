"""Scale and fault soak: one real coordinator process and N soak-site processes on 127.0.0.1, SecAgg+.

Run: ``python bench/soak.py --sites 10 50 100 --rounds 5 [--seed 1] [--json out.json] [--work DIR]``.
Cost of the consistency check (issue #16), both modes side by side in one run, without faults:
``python bench/soak.py --sites 10 100 --rounds 5 --consistency on off --no-faults``.

For each N: a throwaway PKI, a coordinator (``pfmh-coordinator serve``, Prometheus metrics on, the
``PFMH_TEST_RECORD_AGGREGATES=1`` hook on) and N ``bench/soak_site.py`` processes (no torch). The
federation is tiny on purpose (method pfmh, prototypes only, 10 classes x 16 bits: 170 values per
upload, privacy off) so N = 100 fits two cores; phase and training timeouts are max(6, N / 10) s,
``min_sites`` is 0.6 N. Injected faults (seeded; see ``plan_faults``):

- per round, ``max(2, N // 20)`` sites SIGKILL themselves just before one protocol step (advertise,
  share_keys, masked_input, unmask, result, in turn) and are restarted 0.5-2 s later;
- per round one site is slow (sleeps phase_timeout + 2 s before a step) and ``N // 10`` sites get a
  network delay of 0.05-1.5 s before a step;
- round 2 is made to abort: half the cohort is slow before unmask, so secrets cannot be reconstructed;
- once ``rounds // 2`` rounds have completed, the coordinator is SIGKILLed 0.5-3 s into a round and
  restarted 2 s later on the same port (it resumes from its state_dir; sites reconnect with backoff).

Afterwards ``soak_verify.verify`` checks the invariants (exact sums, aborted rounds reveal nothing, no
completed round lost). Reported per N: rounds/hour (completed rounds over the wall time from the first
round's start to the last completion, faults included), coordinator CPU seconds per completed round and
as % of one core, the coordinator's peak RSS (VmHWM, max over both incarnations), bytes per site per
round (site side: protobuf payload each surviving site sent + received in a completed round; coordinator
side: ``pfmh_bytes_{received,sent}_total`` / N / completed rounds, all traffic), rounds and faults.
Exit status 1 if any invariant is violated or a run did not finish.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soak_plan import ABORT_ROUND, Settings, plan_faults  # noqa: E402
from bench.soak_verify import verify  # noqa: E402
from federation.config_files import coordinator_document, write_toml  # noqa: E402
from security.pki import Role, create_ca  # noqa: E402
from security.pki_issue import issue_certificate  # noqa: E402

FED, DIMS, BITS, FRACTION_BITS = "soakfed", (8, 6, 10), 16, 20
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    popen: subprocess.Popen
    cpu_s: float = 0.0
    hwm_kb: int = 0


@dataclass
class Run:
    """Everything measured while one soak runs."""

    coordinators: list[Proc] = field(default_factory=list)
    sites: dict[str, subprocess.Popen] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    site_kills: int = 0
    handled: set[int] = field(default_factory=set)  # pids of exited site processes already counted
    crashes: list[str] = field(default_factory=list)
    bytes_by_incarnation: list[float] = field(default_factory=list)
    t_first_round: float | None = None
    cpu_at_first_round: float = 0.0
    t_last_completion: float | None = None
    completed_before_kill: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _coordinator_config(names: list[str], s: Settings, port: int, metrics_port: int) -> dict[str, Any]:
    return coordinator_document(
        sites=names, metrics_listen=f"127.0.0.1:{metrics_port}",
        server={"listen": f"127.0.0.1:{port}", "long_poll_s": 5.0, "grace_s": 1.0, "max_workers": 2 * s.sites + 16,
                "liveness_s": 10.0, "gather_s": 3.0, "max_message_mb": 16},
        federation={"federation_id": FED, "image_dim": DIMS[0], "text_dim": DIMS[1], "num_classes": DIMS[2],
                    "rounds": s.rounds, "min_sites": math.ceil(0.6 * s.sites), "phase_timeout_s": s.phase_timeout_s,
                    "train_timeout_s": s.train_timeout_s, "train": {"bits": BITS, "hidden": 16, "width": 8},
                    "secagg": {"fraction_bits": FRACTION_BITS, "consistency_check": s.consistency_check},
                    "privacy": {"mode": "off"}})


def _proc_sample(proc: Proc) -> None:
    """Update CPU seconds (utime + stime) and peak RSS (VmHWM) of a live process from /proc."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        proc.cpu_s = (int(stat[11]) + int(stat[12])) / TICKS
        for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                proc.hwm_kb = max(proc.hwm_kb, int(line.split()[1]))


def _scrape_bytes(metrics_port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("pfmh_bytes_received_total{", "pfmh_bytes_sent_total{")))


class Soak:
    """One soak run with ``settings.sites`` sites under ``work``."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.s, self.work = settings, work
        self.names = [f"site-{i:03d}" for i in range(settings.sites)]
        self.rng = random.Random(settings.seed)
        self.port, self.metrics_port = _free_port(), _free_port()
        self.run = Run()
        self.env = dict(os.environ, PFMH_TEST_RECORD_AGGREGATES="1", PYTHONPATH=str(ROOT))

    def setup(self) -> None:
        ca = create_ca(federation_id=FED, out_dir=self.work / "pki")
        issue_certificate(ca=ca, role=Role.COORDINATOR, name="coordinator")
        for name in self.names:
            issue_certificate(ca=ca, role=Role.SITE, name=name)
        write_toml(self.work / "coordinator.toml", _coordinator_config(self.names, self.s, self.port,
                                                                       self.metrics_port))
        plans = (plan_faults(self.names, self.s, self.rng, max_round=3 * self.s.rounds + 10) if self.s.faults
                 else {n: {} for n in self.names})
        for name in self.names:
            state = self.work / "sites" / name
            state.mkdir(parents=True)
            (state / "faults.json").write_text(json.dumps(plans[name]))

    def start_coordinator(self) -> None:
        log = open(self.work / "coordinator.log", "a")  # noqa: SIM115 - handed to the child
        popen = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--config",
                                  str(self.work / "coordinator.toml"), "--log-level", "WARNING"],
                                 cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.run.coordinators.append(Proc(popen))
        self.run.bytes_by_incarnation.append(0.0)

    def start_site(self, name: str) -> None:
        state = self.work / "sites" / name
        log = open(state / "site.log", "a")  # noqa: SIM115 - handed to the child
        self.run.sites[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "soak_site.py"), "--site", name, "--coordinator",
             f"127.0.0.1:{self.port}", "--pki", str(self.work / "pki"), "--state", str(state), "--federation", FED,
             "--dims", *map(str, DIMS), "--seed", str(self.s.seed)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _rounds(self) -> dict[str, Any]:
        try:
            return json.loads((self.work / "state" / "coordinator" / "rounds.json").read_text())
        except (OSError, ValueError):
            return {"last_round_started": 0, "history": []}

    def execute(self) -> None:
        """Start everything, inject the coordinator kill, restart killed sites, until all rounds are done."""
        r, s = self.run, self.s
        for name in self.names:  # sites first: they retry Join with backoff until the coordinator is up
            self.start_site(name)
            time.sleep(min(0.2, 10 / s.sites))
        self.start_coordinator()
        deadline, kill_at, finished_at, next_sample = time.monotonic() + s.timeout_s, None, None, 0.0
        while time.monotonic() < deadline:
            now, meta = time.monotonic(), self._rounds()
            current, history = r.coordinators[-1], meta["history"]
            completed = [h["round"] for h in history if h["outcome"] == "completed"]
            if now >= next_sample:
                _proc_sample(current)
                scraped = _scrape_bytes(self.metrics_port) if current.popen.poll() is None else None
                r.bytes_by_incarnation[-1] = scraped if scraped is not None else r.bytes_by_incarnation[-1]
                next_sample = now + 1.0
            if r.t_first_round is None and meta["last_round_started"] >= 1:
                _proc_sample(current)
                r.t_first_round, r.cpu_at_first_round = now, current.cpu_s
            if len(completed) >= s.rounds and finished_at is None:
                _proc_sample(current)
                r.t_last_completion = finished_at = now
            in_flight = meta["last_round_started"] > max([h["round"] for h in history], default=0)
            if (s.faults and len(r.coordinators) == 1 and kill_at is None and in_flight
                    and len(completed) >= max(1, s.rounds // 2) and len(completed) < s.rounds
                    and meta["last_round_started"] > ABORT_ROUND):
                kill_at = now + self.rng.uniform(0.5, 3.0)
            if len(r.coordinators) == 1 and kill_at is not None and now >= kill_at:
                _proc_sample(current)
                before = self._rounds()
                current.popen.send_signal(signal.SIGKILL)
                current.popen.wait(10)
                r.completed_before_kill = [h["round"] for h in before["history"] if h["outcome"] == "completed"]
                r.interrupted = [before["last_round_started"]] if before["last_round_started"] not in [
                    h["round"] for h in before["history"]] else []
                time.sleep(2.0)
                self.start_coordinator()
                continue
            if current.popen.poll() is not None:
                r.crashes.append(f"coordinator exited with {current.popen.returncode}")
                break
            self._tend_sites(now, done=finished_at is not None)
            if finished_at is not None and (all(p.poll() is not None for p in r.sites.values())
                                            or now - finished_at > 60):
                break
            time.sleep(0.2)

    def _tend_sites(self, now: float, *, done: bool) -> None:
        r = self.run
        for name, popen in r.sites.items():
            code = popen.poll()
            if code is None or code == 0 or popen.pid in r.handled:
                continue
            r.handled.add(popen.pid)
            if code == -signal.SIGKILL:
                r.site_kills += 1
            else:
                r.crashes.append(f"{name} exited with {code} (see sites/{name}/site.log)")
            if not done:
                r.restart_at[name] = now + self.rng.uniform(0.5, 2.0)
        for name, when in list(r.restart_at.items()):
            if now >= when:
                del r.restart_at[name]
                self.start_site(name)

    def stop(self) -> None:
        current = self.run.coordinators[-1]
        if current.popen.poll() is None:
            _proc_sample(current)
            current.popen.send_signal(signal.SIGTERM)
            try:
                current.popen.wait(30)
            except subprocess.TimeoutExpired:
                current.popen.kill()
        for popen in self.run.sites.values():
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)

    def report(self) -> dict[str, Any]:
        r, s = self.run, self.s
        bad, facts = verify(self.work, self.names, classes=DIMS[2], bits=BITS, fraction_bits=FRACTION_BITS,
                            completed_before_kill=r.completed_before_kill, interrupted=r.interrupted)
        bad += r.crashes
        done = len(facts["completed_rounds"])
        if done < s.rounds:
            bad.append(f"only {done} of {s.rounds} rounds completed within {s.timeout_s:.0f}s")
        wall = (r.t_last_completion or time.monotonic()) - (r.t_first_round or time.monotonic())
        cpu = sum(p.cpu_s for p in r.coordinators) - r.cpu_at_first_round
        per_site = facts.pop("site_round_bytes")
        return {
            "sites": s.sites, "consistency_check": s.consistency_check, "faults": s.faults,
            "rounds_completed": done, "rounds_aborted": len(facts["aborted_rounds"]),
            "rounds_interrupted": len(facts["interrupted_rounds"]), "wall_s": round(wall, 1),
            "rounds_per_hour": round(done / wall * 3600, 1) if wall > 0 else 0.0,
            "coordinator_cpu_s_per_round": round(cpu / max(done, 1), 2),
            "coordinator_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
            "coordinator_peak_rss_mb": round(max(p.hwm_kb for p in r.coordinators) / 1024, 1),
            "site_bytes_per_round": round(sum(per_site) / len(per_site)) if per_site else 0,
            "coordinator_bytes_per_site_round": round(sum(r.bytes_by_incarnation) / s.sites / max(done, 1)),
            "site_kills_restarts": r.site_kills, "coordinator_kills": len(r.coordinators) - 1,
            "median_round_s": sorted(facts["round_seconds"])[len(facts["round_seconds"]) // 2]
            if facts["round_seconds"] else None,
            "violations": bad, **facts,
        }


def soak(settings: Settings, work: Path) -> dict[str, Any]:
    """Run one soak; always stops every process it started."""
    run = Soak(settings, work)
    run.setup()
    try:
        run.execute()
    finally:
        run.stop()
    return run.report()


COLUMNS = (("sites", "N"), ("consistency_check", "check"), ("rounds_completed", "done"), ("rounds_aborted", "abort"),
           ("rounds_interrupted", "cut"),
           ("rounds_per_hour", "rounds/h"), ("median_round_s", "med s"), ("coordinator_cpu_s_per_round", "cpu s/rnd"),
           ("coordinator_cpu_pct", "cpu %"), ("coordinator_peak_rss_mb", "peak MB"),
           ("site_bytes_per_round", "B/site/rnd"), ("coordinator_bytes_per_site_round", "coord B/site/rnd"),
           ("site_kills_restarts", "kills"), ("coordinator_kills", "coord kills"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scale and fault soak of the networked federation.")
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per N")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--work", type=Path, help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--consistency", nargs="+", choices=["on", "off"], default=["on"],
                        help="run each N with the consistency check on and/or off (semi-honest), side by side")
    parser.add_argument("--no-faults", action="store_true", help="inject no faults (clean cost figures)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="pfmh-soak-") as tmp:
        for n, mode in [(n, mode) for n in args.sites for mode in args.consistency]:
            work = (args.work or Path(tmp)) / f"n{n}-check-{mode}"
            started = time.monotonic()
            result = soak(Settings(n, args.rounds, seed=args.seed, timeout_s=args.timeout_s,
                                   consistency_check=mode == "on", faults=not args.no_faults), work)
            result["total_s"] = round(time.monotonic() - started, 1)
            results.append(result)
            print(f"N={n} check {mode}: {result['rounds_completed']} rounds in {result['total_s']}s, faults "
                  f"{result['faults_fired']}, violations: {result['violations'] or 'none'}", flush=True)
    print(" | ".join(title for _, title in COLUMNS))
    for result in results:
        print(" | ".join(str(result[key]) for key, _ in COLUMNS))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["violations"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
