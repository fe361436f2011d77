"""``atomic_path`` replaces a file whole or not at all, and leaves no temporary file either way."""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from pfmh_model.atomic_file import atomic_path


def test_clean_exit_replaces_target_and_keeps_the_suffix_writers_need(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "codes.npz"
    target.write_bytes(b"old")
    # Execute: np.savez would append ".npz" to a name without it
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp != target
        np.savez(tmp, x=np.arange(3))
    # Assert
    with np.load(target) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["codes.npz"]


def test_new_file_gets_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    # Prepare: what open(..., "w") gives under this process's umask
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    # Execute
    with atomic_path(tmp_path / "atomic.json") as tmp:
        tmp.write_text("{}")
    # Assert: readable by others where the umask allows it (deploy containers run as their own uid)
    assert stat.S_IMODE((tmp_path / "atomic.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "result.json"
    target.write_text("old")
    # Execute
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    # Assert
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_missing_folder_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "absent" / "x.json"):
        pass
