"""``pfmh-demo``: a whole federation on this machine, as separate processes on 127.0.0.1.

Creates a federation CA, then has every party make its own keys and a CSR that the CA signs (the CSR
flow of docs/DEPLOY.md in one step), the built-in synthetic dataset split over the sites
(non-IID), a coordinator config and one config per site; starts ``pfmh-coordinator serve`` and
one ``pfmh-participant join`` per site; streams their per-round mAP, bytes and epsilon; then
verifies the privacy ledgers and stops everything. Everything lives under ``--workdir``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pfmh_model.methods import DEFAULT_SHARE_MODE, ShareMode

SITES = ("hospital-a", "hospital-b", "hospital-c")
STOP_GRACE_S = 10.0  # after SIGTERM, how long a child may take to stop before it is killed
_WRITTEN_BY = "written by pfmh-demo"  # the first line of its coordinator.toml
_MARKER = ".pfmh-demo"  # in every workdir it made: the only non-empty folders it may replace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfmh-demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="created afresh; a folder an earlier pfmh-demo made is replaced, any other non-empty one "
                        "refused (default: %(default)s)")
    p.add_argument("--preset", default="small",
                   help="synthetic dataset preset: tiny, small, mirflickr (default: %(default)s)")
    p.add_argument("--sites", type=int, default=3, help="number of sites, at most 26 (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="Dirichlet concentration of the non-IID split (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=4, help="federated rounds (default: %(default)s)")
    p.add_argument("--bits", type=int, default=32, help="code length (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5,
                   help="local epochs for each of the personal and shared model (default: %(default)s)")
    p.add_argument("--share-mode", default=DEFAULT_SHARE_MODE.value, choices=[m.value for m in ShareMode],
                   help="what sites share besides prototype statistics (default: %(default)s)")
    p.add_argument("--dp", default="local", choices=["off", "local", "distributed"],
                   help="DP mode (default: %(default)s)")
    p.add_argument("--noise-multiplier", type=float, default=4.0,
                   help="sigma of the prototype-statistics noise (default: %(default)s)")
    p.add_argument("--dp-sgd-noise-multiplier", type=float, default=3.0,
                   help="sigma of DP-SGD on the encoder of the prototype statistics, and on the shared model "
                        "when it is federated (default: %(default)s)")
    p.add_argument("--epsilon-max", type=float, default=8.0, help="each site's privacy budget (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, split and weights (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=1200,
                   help="give up, and stop everything, after this long (default: %(default)s)")
    return p


def _site_names(n: int) -> list[str]:
    if not 2 <= n <= 26:
        raise SystemExit("pfmh-demo: error: --sites must be within 2..26")
    return list(SITES[:n]) if n <= len(SITES) else [f"site-{chr(97 + i)}" for i in range(n)]


def _clear_workdir(work: Path) -> None:
    """Empty ``work`` for a new run; refuse a path that is not a folder this demo made (``--workdir .``, ``~``)."""
    if work.is_dir() and any(work.iterdir()):
        config = work / "coordinator.toml"  # workdirs of older versions carry no marker, only this
        if not ((work / _MARKER).is_file() or (config.is_file() and config.read_text(
                errors="replace").startswith(f"# {_WRITTEN_BY}"))):
            raise SystemExit(f"pfmh-demo: error: --workdir {work} is not empty and was not made by pfmh-demo "
                             f"(no {_MARKER} in it); choose a new folder or empty that one")
        shutil.rmtree(work)
    elif work.exists() and not work.is_dir():
        raise SystemExit(f"pfmh-demo: error: --workdir {work} is a file, not a folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / _MARKER).write_text(f"{_WRITTEN_BY}: this folder is replaced by the next run with this --workdir\n")


def prepare(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """CA, certificates, data and configs under ``args.workdir``; returns (coordinator config, sites)."""
    from federation.config_files import coordinator_document, site_document, write_toml
    from pfmh_model.data import save_h5
    from pfmh_model.errors import ConfigError
    from pfmh_model.partition import partition_dataset
    from pfmh_model.synthetic import generate
    from security.pki import create_ca

    work = args.workdir
    sites = _site_names(args.sites)
    _clear_workdir(work)
    ca = create_ca(federation_id="demo", out_dir=work / "pki")
    for name in ("coordinator", *sites):  # each makes its own keys; the CA only signs their requests
        enrol(ca, work / "pki" / name, name)
    try:
        dataset = generate(args.preset, seed=args.seed)
    except ConfigError as exc:
        raise SystemExit(f"pfmh-demo: error: --preset: {exc}") from None
    print(f"dataset: {dataset.describe()}")
    parts = partition_dataset(dataset, num_sites=len(sites), alpha=args.alpha, seed=args.seed)
    (work / "data").mkdir()
    for site, part in zip(sites, parts, strict=True):
        save_h5(part, work / "data" / f"{site}.h5")
        print(f"  {site}: {len(part.train)} train, {len(part.database)} archive, {len(part.query)} queries")
    federation = {"federation_id": "demo", "image_dim": dataset.image_dim, "text_dim": dataset.text_dim,
                  "num_classes": dataset.num_classes, "method": "pfmh", "share_mode": args.share_mode,
                  "rounds": args.rounds, "min_sites": len(sites), "train_timeout_s": 600.0, "phase_timeout_s": 60.0,
                  "train": {"bits": args.bits, "personal_epochs": args.epochs, "shared_epochs": args.epochs,
                            "seed": args.seed},
                  "privacy": {"mode": args.dp, "noise_multiplier": args.noise_multiplier,
                              "dp_sgd_noise_multiplier": args.dp_sgd_noise_multiplier, "delta": 1e-5}}
    coordinator_toml = write_toml(work / "coordinator.toml", coordinator_document(
        sites=sites, federation=federation, server={"listen": "127.0.0.1:0", "long_poll_s": 5.0}),
        comment=_WRITTEN_BY)
    for site in sites:  # the coordinator's port is filled in once it listens (run)
        write_toml(work / f"site-{site}.toml", site_document(
            site=site, federation_id="demo", coordinator="127.0.0.1:PORT", data=f"data/{site}.h5",
            server_name="localhost", threads=1,
            privacy={"epsilon_max": args.epsilon_max, "require_dp": args.dp != "off"}), comment=_WRITTEN_BY)
    return coordinator_toml, sites


def enrol(ca, directory: Path, name: str) -> None:  # noqa: ANN001 - a security.pki.CertificateAuthority
    """The CSR flow in one step, as each party would run it on its own machine (docs/DEPLOY.md):
    ``pfmh-participant enroll`` at the site, ``pfmh-ca sign`` at the CA, ``pfmh-participant install``."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from security.pki import Role
    from security.pki_csr import create_request, install_certificate, sign_request

    role = Role.COORDINATOR if name == "coordinator" else Role.SITE
    csr = create_request(federation_id=ca.federation_id, name=name, directory=directory, role=role)
    cert = sign_request(ca=ca, csr_pem=csr.read_bytes(), expected_name=name, allowed_roles=(role,))
    install_certificate(directory=directory, cert_pem=cert.public_bytes(Encoding.PEM),
                        ca_cert_pem=ca.cert.public_bytes(Encoding.PEM), allowed_roles=(role,))


class _Children:
    """The demo's processes, each in its own process group (a terminal's Ctrl-C reaches only the demo,
    which then stops them in order); their output is shown with a prefix and kept in ``logs/<name>.log``."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}
        self.pumps: list[threading.Thread] = []
        self.quiet = threading.Event()  # set while stopping: lines go to the log files only
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                process_group=0)
        self.procs[name] = proc
        pump = threading.Thread(target=self._pump, args=(proc, name), daemon=True)
        pump.start()
        self.pumps.append(pump)
        return proc

    def _pump(self, proc: subprocess.Popen, name: str) -> None:
        assert proc.stdout is not None  # noqa: S101 - Popen was created with stdout=PIPE
        with open(self.logs / f"{name}.log", "a", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not self.quiet.is_set():
                    print(f"[{name}] {line.rstrip()}", flush=True)

    def exited(self) -> dict[str, int]:
        return {name: code for name, proc in self.procs.items() if (code := proc.poll()) is not None}

    def stop(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """SIGTERM to every child at once, SIGKILL to any still running after ``grace_s``; returns those killed."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline, killed = time.monotonic() + grace_s, []
        try:
            for name, proc in self.procs.items():
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    killed.append(name)
        finally:  # a second Ctrl-C while waiting: kill the rest, never leave one behind
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        for pump in self.pumps:
            pump.join(1.0)
        return killed


def run(args: argparse.Namespace) -> int:
    """Prepare, start the coordinator and the sites, and wait until every site is done.

    It stops everything (SIGTERM, then SIGKILL after ``STOP_GRACE_S``) and says why in one line when a
    site or the coordinator exits with an error, at ``--timeout-s``, or on Ctrl-C/SIGTERM (exit 130).
    """
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or `kill <demo>`, even if started with SIGINT ignored
        signal.signal(sig, signal.default_int_handler)
    children: _Children | None = None
    try:
        coordinator_toml, sites = prepare(args)
        work = args.workdir
        children = _Children(work / "logs", dict(os.environ, PYTHONUNBUFFERED="1"))
        code = _federate(args, children, coordinator_toml, sites)
    except KeyboardInterrupt:
        stopping = time.monotonic()
        if children is None:
            print("\npfmh-demo: interrupted while preparing; nothing was running", flush=True)
            return 130
        children.quiet.set()
        killed = children.stop()
        how = f"; killed {', '.join(killed)} after {STOP_GRACE_S:.0f}s" if killed else ""
        print(f"\npfmh-demo: interrupted; stopped the coordinator and {len(children.procs) - 1} sites in "
              f"{time.monotonic() - stopping:.1f}s{how} (their logs: {children.logs})", flush=True)
        return 130
    if code != 0:
        return code
    return _summary(work, sites)


def _federate(args: argparse.Namespace, children: _Children, coordinator_toml: Path, sites: list[str]) -> int:
    """Run the federation; 0 once every site has finished, else 1 after saying why (everything stopped)."""
    work, started = args.workdir, time.monotonic()
    port_file = work / "coordinator.port"
    coordinator = children.start("coordinator", [
        sys.executable, "-m", "coordinator.cli", "serve", "--config", str(coordinator_toml),
        "--port-file", str(port_file), "--log-level", "WARNING"])
    while not port_file.is_file():
        if coordinator.poll() is not None or time.monotonic() - started > 120:
            children.stop()
            print("pfmh-demo: error: the coordinator did not start", file=sys.stderr)
            return 1
        time.sleep(0.2)
    port = port_file.read_text().strip()
    for site in sites:
        toml = work / f"site-{site}.toml"
        toml.write_text(toml.read_text().replace("127.0.0.1:PORT", f"127.0.0.1:{port}"))
        children.start(site, [sys.executable, "-m", "participant.cli", "join", "--site", site, "--config",
                              str(toml), "--log-level", "WARNING"])
    while True:
        exited = children.exited()
        failed = {name: code for name, code in exited.items() if code != 0 and name != "coordinator"}
        why = ""
        if failed:
            why = ", ".join(f"{name} exited with code {code}" for name, code in failed.items())
        elif "coordinator" in exited and not all(site in exited for site in sites):
            why = f"the coordinator exited with code {exited['coordinator']}"
        elif time.monotonic() - started > args.timeout_s:
            why = f"not finished after {args.timeout_s:.0f}s"
        elif all(site in exited for site in sites):
            break
        if why:
            children.stop()
            print(f"pfmh-demo: error: {why}; stopped the federation (logs: {children.logs})", file=sys.stderr)
            return 1
        time.sleep(0.2)
    children.stop()
    codes = [children.procs[site].returncode for site in sites]
    print(f"\npfmh-demo: {len(sites)} sites finished with exit codes {codes} in {time.monotonic() - started:.0f}s")
    return 0


def _summary(work: Path, sites: list[str]) -> int:
    """Verify every site's ledger and show the audit trail the coordinator holds."""
    from security.ledger import verify_ledger
    from security.pki_verify import load_certificate, site_signing_public_key

    for site in sites:
        key = site_signing_public_key(load_certificate(work / "pki" / site / "tls.crt"))
        entries = verify_ledger(work / "state" / site / "ledger.jsonl", public_key=key, site_id=site)
        releases = [e.record for e in entries if e.record.get("kind") == "dp_release"]
        spent = releases[-1]["epsilon"] if releases else 0.0
        print(f"{site}: ledger verified ({len(entries)} signed entries), epsilon spent {spent:.3f}")
    print(f"coordinator's copy of the ledgers: {work / 'state' / 'coordinator' / 'ledgers'}")
    print(f"try: ./run pfmh-participant search --config {work / 'site-hospital-a.toml'} --query 0 1 2")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
