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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfmh-demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="created afresh, its contents are replaced (default: %(default)s)")
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
                   help="sigma of DP-SGD on the shared model, only with --share-mode prototypes+model "
                        "(default: %(default)s)")
    p.add_argument("--epsilon-max", type=float, default=8.0, help="each site's privacy budget (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, split and weights (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=1200,
                   help="give up, and stop everything, after this long (default: %(default)s)")
    return p


def _site_names(n: int) -> list[str]:
    if not 2 <= n <= 26:
        raise SystemExit("pfmh-demo: error: --sites must be within 2..26")
    return list(SITES[:n]) if n <= len(SITES) else [f"site-{chr(97 + i)}" for i in range(n)]


def prepare(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """CA, certificates, data and configs under ``args.workdir``; returns (coordinator config, sites)."""
    from pfmh_model.data import save_h5
    from pfmh_model.partition import partition_dataset
    from pfmh_model.synthetic import generate
    from security.pki import create_ca

    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sites = _site_names(args.sites)
    ca = create_ca(federation_id="demo", out_dir=work / "pki")
    for name in ("coordinator", *sites):  # each makes its own keys; the CA only signs their requests
        enrol(ca, work / "pki" / name, name)
    dataset = generate(args.preset, seed=args.seed)
    print(f"dataset: {dataset.describe()}")
    parts = partition_dataset(dataset, num_sites=len(sites), alpha=args.alpha, seed=args.seed)
    (work / "data").mkdir()
    for site, part in zip(sites, parts, strict=True):
        save_h5(part, work / "data" / f"{site}.h5")
        print(f"  {site}: {len(part.train)} train, {len(part.database)} archive, {len(part.query)} queries")
    coordinator_toml = work / "coordinator.toml"
    coordinator_toml.write_text(f"""# written by pfmh-demo
sites = [{", ".join(f'"{s}"' for s in sites)}]
state_dir = "state/coordinator"

[tls]
ca_cert = "pki/ca/ca.crt"
cert = "pki/coordinator/tls.crt"
key = "pki/coordinator/tls.key"
crl = "pki/ca/crl.pem"

[server]
listen = "127.0.0.1:0"
long_poll_s = 5.0

[federation]
federation_id = "demo"
image_dim = {dataset.image_dim}
text_dim = {dataset.text_dim}
num_classes = {dataset.num_classes}
method = "pfmh"
share_mode = "{args.share_mode}"
rounds = {args.rounds}
min_sites = {len(sites)}
train_timeout_s = 600.0
phase_timeout_s = 60.0

[federation.train]
bits = {args.bits}
personal_epochs = {args.epochs}
shared_epochs = {args.epochs}
seed = {args.seed}

[federation.privacy]
mode = "{args.dp}"
noise_multiplier = {args.noise_multiplier}
dp_sgd_noise_multiplier = {args.dp_sgd_noise_multiplier}
delta = 1e-5
""")
    for site in sites:
        (work / f"site-{site}.toml").write_text(f"""# written by pfmh-demo
site = "{site}"
federation_id = "demo"
coordinator = "127.0.0.1:PORT"
server_name = "localhost"
data = "data/{site}.h5"
state_dir = "state/{site}"
threads = 1

[tls]
ca_cert = "pki/{site}/ca.crt"
cert = "pki/{site}/tls.crt"
key = "pki/{site}/tls.key"
signing_key = "pki/{site}/signing.key"
crl = "pki/ca/crl.pem"

[privacy]
epsilon_max = {args.epsilon_max}
require_dp = {"true" if args.dp != "off" else "false"}
""")
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


def _pump(proc: subprocess.Popen, prefix: str) -> None:
    assert proc.stdout is not None  # noqa: S101 - Popen was created with stdout=PIPE
    for line in proc.stdout:
        print(f"[{prefix}] {line.rstrip()}", flush=True)


def _start(cmd: list[str], prefix: str, env: dict[str, str]) -> tuple[subprocess.Popen, threading.Thread]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    pump = threading.Thread(target=_pump, args=(proc, prefix), daemon=True)
    pump.start()
    return proc, pump


def _stop(proc: subprocess.Popen, grace_s: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run(args: argparse.Namespace) -> int:
    coordinator_toml, sites = prepare(args)
    work = args.workdir
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    port_file = work / "coordinator.port"
    coordinator, _ = _start([sys.executable, "-m", "coordinator.cli", "serve", "--config", str(coordinator_toml),
                             "--port-file", str(port_file), "--log-level", "WARNING"], "coordinator", env)
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        while not port_file.is_file():
            if coordinator.poll() is not None or time.monotonic() - started > 120:
                print("pfmh-demo: error: the coordinator did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        port = port_file.read_text().strip()
        for site in sites:
            toml = work / f"site-{site}.toml"
            toml.write_text(toml.read_text().replace("127.0.0.1:PORT", f"127.0.0.1:{port}"))
            proc, _ = _start([sys.executable, "-m", "participant.cli", "join", "--site", site, "--config", str(toml),
                              "--log-level", "WARNING"], site, env)
            procs.append(proc)
        for proc in procs:
            remaining = args.timeout_s - (time.monotonic() - started)
            proc.wait(max(remaining, 1))
    except subprocess.TimeoutExpired:
        print(f"pfmh-demo: error: not finished after {args.timeout_s:.0f}s; stopping", file=sys.stderr)
        return 1
    finally:
        codes = [_stop(p) for p in procs]
        _stop(coordinator)
    print(f"\npfmh-demo: {len(sites)} sites finished with exit codes {codes} in {time.monotonic() - started:.0f}s")
    return _summary(work, sites) if all(c == 0 for c in codes) else 1


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
