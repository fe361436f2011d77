"""``pfmh-participant``: ``enroll``/``install`` (site-held keys), ``join``, ``search ...``, ``budget ...``."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from participant.client import CoordinatorError, CoordinatorUnreachable
from participant.config import load_config
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
    join.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    search.add_argument("--query", type=int, nargs="*", default=None,
                        help="row numbers of the site's own query split (default: all, reporting mAP)")
    search.add_argument("-k", type=int, default=10, help="results per query")
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
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

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
    daemon = SiteDaemon(cfg, base=args.config.resolve().parent, stop=stop, on_round=show, registry=registry)
    return daemon.run()


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
    from pfmh_model.data import load_h5
    from pfmh_model.evaluation import mean_average_precision
    from pfmh_model.hamming_index import HammingIndex
    from pfmh_model.trainer_factory import make_trainer
    from proto.settings import FederationSettings

    cfg = load_config(args.config)
    base = args.config.resolve().parent
    state = base / cfg.state_dir
    if not (state / "index.npz").is_file() or not (state / "trainer.pt").is_file():
        raise SettingsError(f"no trained model in {state}: run `pfmh-participant join` first")
    settings = FederationSettings.from_json((state / "settings.json").read_text())
    data = load_h5(base / cfg.data)
    trainer = make_trainer(settings.train, image_dim=settings.image_dim, text_dim=settings.text_dim,
                           num_classes=settings.num_classes, dp_compatible=settings.uses_dp_sgd,
                           method=settings.method, fedhap=settings.fedhap)
    trainer.load_snapshot(state / "trainer.pt")
    index = HammingIndex.load(state / "index.npz")
    rows = np.arange(len(data.query)) if args.query is None else np.asarray(args.query, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(data.query)):
        raise SettingsError(f"--query rows must be within 0..{len(data.query) - 1}")
    queries = data.query.subset(rows)
    codes = trainer.encode(queries, model="shared")
    result = index.search(codes, args.k)
    for row, idx, dist in zip(rows[:20], result.indices[:20], result.distances[:20], strict=False):
        hits = [f"{int(i)}(d={int(d)})" for i, d in zip(idx, dist, strict=True)]
        print(f"query {int(row)}: " + " ".join(hits))
    if len(rows) > 20:
        print(f"... {len(rows) - 20} more queries")
    if args.query is None and len(rows):
        value = mean_average_precision(codes, trainer.encode(data.database, model="shared"), queries.labels,
                                       data.database.labels)
        print(f"mAP of {len(rows)} own queries against own archive ({len(index)} codes): {value:.4f}")
    return 0


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
        from participant.budget_cli import run_budget
        return run_budget(args)
    except (SettingsError, SecurityError, OSError, ModelError, SiteMismatch, CoordinatorError,
            CoordinatorUnreachable) as exc:
        print(f"pfmh-participant: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
