"""Item 5 of issue #15: the example configs in deploy/config/ carry every key of the plan's schema."""
from __future__ import annotations

import tomllib
from typing import Any

import pytest

from coordinator.config import CoordinatorConfig
from participant.config import SiteConfig
from proto.settings import key_paths
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "deploy" / "config"


def _paths(table: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in table.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths += _paths(value, f"{prefix}{key}.")
    return paths


EXAMPLES = [("coordinator.toml", CoordinatorConfig)] + [
    (p.name, SiteConfig) for p in sorted(CONFIG.glob("site-*.toml"))]


@pytest.mark.parametrize(("name", "schema"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_config_carries_every_key(name: str, schema: type) -> None:
    # Prepare
    written = set(_paths(tomllib.loads((CONFIG / name).read_text())))
    expected = set(key_paths(schema))
    # Assert: nothing missing (a new field needs its example), nothing the loader would refuse
    assert not expected - written, f"deploy/config/{name} lacks {sorted(expected - written)}"
    assert not written - expected, f"deploy/config/{name} has unknown keys {sorted(written - expected)}"


def test_there_are_site_examples() -> None:
    assert len(EXAMPLES) >= 2
