"""Item 5 of issue #15: the commands the README and docs/ tell a reader to run work from a fresh clone.

Every ``./run ...`` command in a code span or fenced block is parsed by the real argparse parser it reaches
(a console script's ``build_parser``, or a bench script's ``main`` stopped right after parsing), so a
renamed or removed option turns this red. Nothing is run. A bare ``python bench/...`` is refused: on a
fresh clone ``python`` is not the project's venv, ``./run python ...`` is.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
RUN_TASKS = {"test", "help"}  # ./run's own tasks besides demo (a console script) and installed commands


def _code(text: str) -> list[str]:
    """The text of every fenced block line and inline code span (which may wrap over lines)."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = [m.group(2).replace("\n", " ") for para in rest.split("\n\n")  # CommonMark: `x` or ``x`` spans
             for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", para, re.S)]
    lines = [ln for block in fenced for ln in block.replace("\\\n", " ").splitlines()]
    return lines + spans


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for code in _code(doc.read_text()):
            for m in re.finditer(r"(?:^|\s)(\./run\s+[^#;|]*)", code):
                found.append((f"{doc.name}: {m.group(1).strip()}", m.group(1).strip()))
    return found


COMMANDS = _commands()


class _Parsed(Exception):
    pass


def _parse_bench(path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run ``path``'s ``main`` only as far as its ``parse_args`` (then stop), with ``argv``."""
    seen: list[argparse.Namespace] = []
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        seen.append(original(self, args, namespace))
        raise _Parsed

    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    main = module.main
    with pytest.raises(_Parsed):
        main(argv) if main.__code__.co_argcount else main()
    return seen[0]


def test_docs_name_commands() -> None:
    assert len(COMMANDS) >= 20


def test_no_bare_python_bench_commands() -> None:
    bare = [f"{doc.name}: {code}" for doc in DOCS for code in _code(doc.read_text())
            if re.search(r"(?:^|\s)python3? bench/", code) and "./run python bench/" not in code]
    assert not bare, f"use ./run python bench/... (a fresh clone has no venv python on PATH): {bare}"


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_documented_command_parses(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = shlex.split(command)[1:]
    if argv in ([], ["<command>", "[args]"]) or argv[0] in RUN_TASKS:
        return  # ./run's own usage line; `./run test ...` passes its arguments to pytest
    task, args = argv[0], argv[1:]
    if task == "python":
        script = REPO_ROOT / args[0]
        assert script.is_file(), f"{command}: no such script {args[0]}"
        _parse_bench(script, args[1:], monkeypatch)
        return
    name = "pfmh-demo" if task == "demo" else task
    assert name in SCRIPTS, f"{command}: {task} is neither a ./run task nor a console script"
    module = importlib.import_module(SCRIPTS[name].split(":")[0])
    parser = (getattr(module, "build_parser", None) or module._parser)()
    if args in (["--help"], ["-h"]):
        parser.format_help()
        return
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{command} is rejected by the real {name} parser")
