"""``pfmh-coordinator``: ``serve --config coordinator.toml`` and ``audit ...``."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from coordinator.config import load_config
from coordinator.persistence import StateStore
from proto.settings import SettingsError
from security.errors import SecurityError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfmh-coordinator", description="The pfmh-federation coordinator.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mTLS gRPC server and the rounds")
    serve.add_argument("--config", required=True, type=Path, help="coordinator.toml")
    serve.add_argument("--listen", help="override server.listen, e.g. 127.0.0.1:0")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level (default: %(default)s)")
    try:
        from coordinator.audit_cli import add_audit_commands
    except ImportError:  # pragma: no cover - audit module not installed
        pass
    else:
        add_audit_commands(sub)
    return parser


def serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from coordinator.server import run_server
    from federation.identity import OwnIdentity, check_identity
    from security.pki import Role

    cfg = load_config(args.config)
    base = args.config.resolve().parent
    check_identity(args.config, OwnIdentity(cfg.tls.ca_cert, cfg.tls.cert, cfg.tls.key, cfg.tls.crl),
                   role=Role.COORDINATOR, federation_id=cfg.federation.federation_id)
    done = StateStore(base / cfg.state_dir).load().completed_rounds
    if done >= cfg.federation.rounds:  # a restart after the last round: nothing left to serve
        print(f"pfmh-coordinator: federation {cfg.federation.federation_id} is finished ({done} of "
              f"{cfg.federation.rounds} rounds completed, state in {base / cfg.state_dir}); not serving", flush=True)
        return 0
    registry = CollectorRegistry()
    if cfg.metrics_listen:
        host, _, metrics_port = cfg.metrics_listen.rpartition(":")
        start_http_server(int(metrics_port), addr=host or "127.0.0.1", registry=registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with run_server(cfg, base_dir=base, registry=registry, listen=args.listen) as (_, port, engine):
        print(f"pfmh-coordinator: federation {cfg.federation.federation_id} serving on port {port} "
              f"({len(cfg.sites)} enrolled sites, {cfg.federation.rounds} rounds)", flush=True)
        if args.port_file:
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(str(port))
            tmp.replace(args.port_file)
        while not stop.wait(0.5) and not engine.failure:
            pass
        if engine.failure:
            print(f"pfmh-coordinator: error: {engine.failure}; health is NOT_SERVING, stopping", file=sys.stderr,
                  flush=True)
        print(f"pfmh-coordinator: draining ({engine.state.completed_rounds} rounds completed)", flush=True)
    return 1 if engine.failure else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s coordinator %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return serve(args)
        from coordinator.audit_cli import run_audit
        return run_audit(args)
    except (SettingsError, SecurityError, OSError) as exc:
        print(f"pfmh-coordinator: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before serve installed its own handler
        print("pfmh-coordinator: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
