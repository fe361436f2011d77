"""``durable.atomic_file``: a file is replaced whole or not at all, durably (file and folder fsynced), with the
mode asked for, and no temporary file is left either way."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from durable.atomic_file import atomic_path, atomic_write


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


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path ``os.fsync`` is called on from now on (read back from /proc/self/fd)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_atomic_write_fsyncs_the_file_before_the_rename_and_then_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    synced = _record_fsyncs(monkeypatch)
    # Execute
    atomic_write(tmp_path / "sub" / "state.json", b"{}")
    # Assert: the temporary file (its data) first, then the folder (the rename)
    assert len(synced) == 2 and Path(synced[0]).parent == tmp_path / "sub" and synced[0].endswith(".tmp.json")
    assert synced[1] == str(tmp_path / "sub")
    assert (tmp_path / "sub" / "state.json").read_bytes() == b"{}"


def test_a_private_file_is_never_wider_than_its_mode(tmp_path: Path) -> None:
    # Prepare: a umask that would leave a plain file world-readable
    old = os.umask(0)
    try:
        # Execute
        with atomic_path(tmp_path / "key.pem", mode=0o600) as tmp:
            during = stat.S_IMODE(tmp.stat().st_mode)
            tmp.write_bytes(b"secret")
    finally:
        os.umask(old)
    # Assert
    assert during == 0o600
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_a_mode_wider_than_the_umask_is_given_exactly(tmp_path: Path) -> None:
    # Prepare: a strict umask; a CA certificate is meant to be world-readable
    old = os.umask(0o077)
    try:
        # Execute
        atomic_write(tmp_path / "ca.crt", b"cert", mode=0o644)
    finally:
        os.umask(old)
    # Assert
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644
