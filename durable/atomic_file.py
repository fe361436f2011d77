"""Replace a file atomically, so a crash leaves either the old version or the new one, never half.

The writer fills a temporary file in the target's folder; on success it is fsynced, renamed over the target
(``os.replace``) and the folder is fsynced, so the rename itself survives a power cut; on any error the
temporary file is removed. The temporary name keeps the target's suffix because some writers pick the
format from it (``np.savez`` adds ``.npz`` to other names, matplotlib reads ``.png``).

This is the project's one atomic writer: ``pfmh_model`` (checkpoints, data, plots), ``security`` (keys,
certificates, the CA's index and CRL), the coordinator's state and the benchmarks all call it. It imports
nothing but the standard library, so every layer may.

Security:
    With ``mode`` the temporary file is created with that mode (never wider, whatever the umask), so a
    private key is not readable by others at any moment. Without it, a new file gets what a plain
    ``open(..., "w")`` would (0666 less the umask): data files are read by the deploy containers' own uid.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``target`` (file and folder fsynced).

    Args:
        target: the file to replace (its folder must exist).
        mode: permission bits of the new file (e.g. ``0o600`` for a private key); None: as a plain write.

    Raises:
        OSError: the folder does not exist or is not writable (no temporary file is left behind).
    """
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(6)}.tmp{target.suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exactly ``mode``, not less by the umask
    finally:
        os.close(fd)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(target.parent)


def atomic_write(target: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace ``target`` with ``data`` atomically, creating its folder if needed (see :func:`atomic_path`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, mode=mode) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries (a rename, a new file), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
