"""docs/RETRIEVAL.md matches the code: its commands parse with the real parsers, its [search] table loads."""
from __future__ import annotations

import re
import shlex
import tomllib

from participant.cli import build_parser
from participant.config import SearchService
from proto.settings import build
from security.ca_cli import _parser as ca_parser
from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "RETRIEVAL.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)


def test_every_documented_command_parses() -> None:
    # Prepare
    lines = [line for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    # Execute / Assert
    assert len(lines) >= 10
    for line in lines:
        argv = shlex.split(line, comments=True)
        parser = build_parser() if argv[0] == "pfmh-participant" else ca_parser()
        assert argv[0] in ("pfmh-participant", "pfmh-ca"), line
        parser.parse_args(argv[1:])


def test_documented_search_table_loads() -> None:
    # Prepare
    (block,) = _blocks("toml")
    # Execute
    table = build(SearchService, tomllib.loads(block)["search"], "search")
    # Assert
    assert table.client_ca and table.cert and table.key and table.reload_s == 5.0
