"""``load_toml``: a config path that is no readable TOML text is one ``SettingsError`` line naming it
(a non-UTF-8 file was a ``UnicodeDecodeError`` traceback; a folder an ``[Errno 21]``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from proto.settings import SettingsError, load_toml


@dataclass(frozen=True)
class Small:
    rounds: int = 1


def test_a_binary_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b"rounds = 2\n\xf0\x28\x8c\x28\n")
    with pytest.raises(SettingsError, match=r"site.toml: not a TOML text file \(not UTF-8 at byte 11\)$"):
        load_toml(Small, path)


def test_a_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=f"config file {tmp_path} is a folder"):
        load_toml(Small, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("rounds = 2\n")
    path.chmod(0)
    with pytest.raises(SettingsError, match="cannot be read"):
        load_toml(Small, path)


def test_a_valid_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("rounds = 2\n")
    assert load_toml(Small, path) == Small(rounds=2)
