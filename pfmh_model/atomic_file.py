"""Replace a file atomically, so a crash leaves either the old version or the new one, never half.

The writer fills a temporary file in the target's folder; on success it is fsynced, renamed over
the target (``os.replace``) and the folder is fsynced; on any error it is removed. The temporary
name keeps the target's suffix because some writers pick the format from it (``np.savez`` adds
``.npz`` to other names, matplotlib reads ``.png``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``target``.

    Raises:
        OSError: the folder does not exist or is not writable (no temporary file is left behind).
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (the rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
