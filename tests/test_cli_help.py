"""Item 5 of issue #15: every option of every console script has help text, with its real default."""
from __future__ import annotations

import argparse
import importlib
import tomllib
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ["pfmh-coordinator", "pfmh-participant", "pfmh-ca", "pfmh-simulate", "pfmh-demo", "pfmh-datagen"]


def _parser(script: str) -> argparse.ArgumentParser:
    target = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"][script]
    module = importlib.import_module(target.split(":")[0])
    build = getattr(module, "build_parser", None) or module._parser
    return build()


def _walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield name, action


def _options() -> list[tuple[str, argparse.Action]]:
    return [item for script in SCRIPTS for item in _walk(_parser(script), script)]


def _id(item: tuple[str, argparse.Action]) -> str:
    name, action = item
    return f"{name} {action.option_strings[-1] if action.option_strings else action.dest}"


OPTIONS = _options()


@pytest.mark.parametrize("item", OPTIONS, ids=[_id(o) for o in OPTIONS])
def test_option_has_help_with_its_default(item: tuple[str, argparse.Action]) -> None:
    name, action = item
    assert action.help and action.help.strip(), f"{_id(item)} has no help text"
    flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._CountAction))
    has_default = action.default is not None and action.default is not argparse.SUPPRESS and not action.required
    if has_default and not flag and action.option_strings:
        assert "%(default)s" in action.help, f"{_id(item)}: help {action.help!r} does not show its default"


def test_every_script_is_walked() -> None:
    assert {name.split()[0] for name, _ in OPTIONS} == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_renders(script: str) -> None:
    # Execute: a bad %(...)s placeholder fails only when the help is shown, so show every (sub)command's help
    parser = _parser(script)
    subs = [sub for a in parser._actions if isinstance(a, argparse._SubParsersAction) for sub in a.choices.values()]
    texts = [p.format_help() for p in [parser, *subs]]
    # Assert
    assert all("%(" not in t for t in texts)


def test_audit_help_names_the_real_command_only() -> None:
    # Prepare
    parser = _parser("pfmh-coordinator")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # Execute
    text = commands.choices["audit"].format_help()
    # Assert: no stale "until the daemon's CLI hooks these in" advice, no reST markup, the real examples
    assert "python -m" not in text and "``" not in text and "Until the daemon" not in text
    assert "pfmh-coordinator audit verify --state-dir" in text
