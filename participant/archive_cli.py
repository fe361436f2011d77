"""``pfmh-participant archive add/remove/stats/reencode`` and ``serve-search``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from participant.archive_ops import add_file, archive_of, stats
from participant.config import load_config
from participant.search_engine import reencode
from participant.site_model import load_site_model


def add_archive_commands(sub: argparse._SubParsersAction) -> None:
    archive = sub.add_parser("archive", help="add, remove (erase) or inspect the records of this site's archive")
    verbs = archive.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="encode the records of a record file and append them")
    add.add_argument("--config", required=True, type=Path, help="site.toml")
    add.add_argument("--data", required=True, type=Path, help="HDF5 record file (I and/or T, ids, optional L)")
    remove = verbs.add_parser("remove", help="erase records by id: their codes and features leave the files")
    remove.add_argument("--config", required=True, type=Path, help="site.toml")
    remove.add_argument("--ids", required=True, nargs="+", help="record ids (or numbers, for an archive without ids)")
    for verb, text in (("stats", "records, model version, bytes on disk"),
                       ("reencode", "re-encode with the current model (serve-search does it by itself)")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("--config", required=True, type=Path, help="site.toml")
        if verb == "stats":
            cmd.add_argument("--json", action="store_true", help="print JSON")
    serve = sub.add_parser("serve-search", help="serve search over mutual-TLS gRPC ([search] in site.toml)")
    serve.add_argument("--config", required=True, type=Path, help="site.toml")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level (default: %(default)s)")


def run_archive_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    base = args.config.resolve().parent
    state = base / cfg.state_dir
    if args.command == "serve-search":
        from participant.search_server import serve_until_signal

        return serve_until_signal(cfg, base)
    archive = archive_of(state)
    if args.verb == "add":
        snap, added = add_file(state, args.data)
        print(f"added {added} records: archive {snap.generation} holds {len(snap)} (model {snap.model_version})")
    elif args.verb == "remove":
        snap, removed, missing = archive.remove(list(args.ids))
        print(f"removed {removed} records: archive {snap.generation} holds {len(snap)}; older generations deleted")
        if missing:
            print(f"not in the archive: {' '.join(missing)}")
            return 1
    elif args.verb == "reencode":
        snap = reencode(load_site_model(state), archive)
        print(f"archive {snap.generation}: {len(snap)} records encoded by model {snap.model_version}")
    else:
        figures = stats(archive, archive.open())
        if args.json:
            print(json.dumps(figures, indent=1))
        else:
            for key, value in figures.items():
                print(f"{key}: {value}")
    return 0
