"""``pfmh-participant``: ``enroll``/``install`` (site-held keys), ``join``, ``search``, ``archive``,
``serve-search`` and ``budget``."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from participant.archive import ArchiveError
from participant.client import CoordinatorError, CoordinatorUnreachable, Stopped
from participant.config import load_config
from participant.search_errors import ModelNotReady, SearchRefused
from participant.site import SiteMismatch
from pfmh_model.errors import ModelError
from proto.settings import SettingsError
from security.errors import SecurityError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfmh-participant", description="A site of a pfmh federation.")
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="take part in the federation until it finishes")
    join.add_argument("--site", required=True, help="this site's id (must match the config and certificate)")
    join.add_argument("--config", required=True, type=Path, help="site.toml")
    join.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                      help="log level (default: %(default)s)")
    enroll = sub.add_parser("enroll", help="make this site's TLS and signing keys here, and a request for the CA")
    enroll.add_argument("--site", required=True, help="this site's id, [a-z0-9-]{1,63}")
    enroll.add_argument("--federation", required=True, help="the federation id (as in the CA)")
    enroll.add_argument("--dir", required=True, type=Path, help="this site's key folder (created 0700)")
    enroll.add_argument("--host", action="append", help="SAN IP/DNS (repeatable; default 127.0.0.1, localhost)")
    enroll.add_argument("--renew", action="store_true",
                        help="new TLS key and request, same signing key (the site's ledger keeps verifying)")
    install = sub.add_parser("install", help="install the certificate the CA signed for this site's request")
    install.add_argument("--dir", required=True, type=Path, help="the key folder given to enroll")
    install.add_argument("--cert", required=True, type=Path, help="the signed certificate (PEM)")
    install.add_argument("--ca", required=True, type=Path, help="the federation CA certificate (PEM)")
    search = sub.add_parser("search", help="search this site's archive with the learned binary codes")
    search.add_argument("--config", required=True, type=Path, help="site.toml")
    search.add_argument("--query-file", type=Path, default=None,
                        help="HDF5 record file of new records (I and/or T, optional ids; docs/RETRIEVAL.md)")
    search.add_argument("--query", type=int, nargs="*", default=None,
                        help="instead: row numbers of the site's own query split (none given: all, reporting mAP)")
    search.add_argument("-k", type=int, default=10, help="results per query (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="one JSON document on stdout")
    from participant.archive_cli import add_archive_commands

    add_archive_commands(sub)
    try:
        from participant.budget_cli import add_budget_command
    except ImportError:  # pragma: no cover
        pass
    else:
        add_budget_command(sub)
    return parser


def join(args: argparse.Namespace) -> int:
    from participant.site import SiteDaemon

    cfg = load_config(args.config)
    if args.site != cfg.site:
        raise SettingsError(f"--site {args.site!r} does not match site = {cfg.site!r} in {args.config}")
    from federation.identity import OwnIdentity, check_identity
    from security.pki import Role

    tls = cfg.tls
    check_identity(args.config, OwnIdentity(tls.ca_cert, tls.cert, tls.key, tls.crl, tls.signing_key), role=Role.SITE,
                   federation_id=cfg.federation_id, name=cfg.site)
    daemon_class = SiteDaemon
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun (docs/DEPLOY.md): only rank 0 goes on
        from participant.distributed_site import start_ranks

        lead = start_ranks(cfg, args.config.resolve().parent)
        if lead is None:
            return 0
        cfg, daemon_class = lead
    stop = threading.Event()
    received: list[str] = []
    running: list = []  # the daemon, once built

    def on_signal(number: int, _frame) -> None:  # noqa: ANN001
        received.append(signal.Signals(number).name)
        stop.set()
        if running and running[0].interruptible:  # building the trainer or training: no wait would notice
            raise Stopped("stopped while building the trainer or training")

    def show(report) -> None:  # noqa: ANN001
        status = "ok" if report.completed else "skipped"
        mean_ap = "-" if report.map is None else f"{report.map:.3f}"
        print(f"{cfg.site}: round {report.round} {status}  mAP {mean_ap}  epsilon {report.epsilon:.3f}  "
              f"sent {report.bytes_sent:,} B  received {report.bytes_received:,} B  {report.seconds:.1f}s  "
              f"{report.detail}", flush=True)

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    if cfg.metrics_listen:
        host, _, port = cfg.metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        daemon = daemon_class(cfg, base=args.config.resolve().parent, stop=stop, on_round=show, registry=registry)
        if daemon_class is SiteDaemon:  # one process; under torchrun the other ranks train in step with rank 0
            running.append(daemon)
        code = daemon.run()
    except Stopped:  # before it had joined, or while building its trainer: nothing to leave yet
        code = 0
    if received:
        print(f"{cfg.site}: stopped ({received[0]})", flush=True)
    # Everything is closed. Interpreter shutdown would garbage-collect the ~300k objects torch and the
    # trainer leave behind for seconds (8 s for 3 sites on 2 loaded cores); frozen, they are skipped.
    gc.freeze()
    return code


def enroll(args: argparse.Namespace) -> int:
    from security.pki_csr import create_request

    csr = create_request(federation_id=args.federation, name=args.site, directory=args.dir,
                         hosts=args.host or ("127.0.0.1", "localhost"), renew=args.renew)
    kept = "kept" if args.renew else "made"
    print(f"{args.site}: new TLS key, signing key {kept}, private keys in {args.dir} (mode 0600, keep them here)")
    print(f"send {csr} to the federation CA ('pfmh-ca sign --csr {csr.name} --expect {args.site}'), then run "
          f"'pfmh-participant install --dir {args.dir} --cert <signed.crt> --ca <ca.crt>'")
    return 0


def install(args: argparse.Namespace) -> int:
    from security.pki_csr import install_certificate

    identity = install_certificate(directory=args.dir, cert_pem=args.cert.read_bytes(),
                                   ca_cert_pem=args.ca.read_bytes())
    print(f"installed the certificate of {identity.site_id!r} (serial {identity.serial:x}, valid until "
          f"{identity.not_after.isoformat()}) in {args.dir}; restart this site's 'join' to use it")
    return 0


def search(args: argparse.Namespace) -> int:
    from participant.search_cli import run_search

    return run_search(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"),
                        format="%(asctime)s participant %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "join":
            return join(args)
        if args.command == "search":
            return search(args)
        if args.command in ("enroll", "install"):
            return enroll(args) if args.command == "enroll" else install(args)
        if args.command in ("archive", "serve-search"):
            from participant.archive_cli import run_archive_command
            return run_archive_command(args)
        from participant.budget_cli import run_budget
        return run_budget(args)
    except (SettingsError, SecurityError, OSError, ModelError, SiteMismatch, CoordinatorError,
            CoordinatorUnreachable, ArchiveError, SearchRefused, ModelNotReady) as exc:
        print(f"pfmh-participant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handler
        print("pfmh-participant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
