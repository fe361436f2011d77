"""Replace a file atomically, so a crash leaves either the old version or the new one, never half.

The writer fills a temporary file in the target's folder; on success it is fsynced, renamed over
the target (``os.replace``) and the folder is fsynced; on any error it is removed. The temporary
name keeps the target's suffix because some writers pick the format from it (``np.savez`` adds
``.npz`` to other names, matplotlib reads ``.png``).
"""
from __future__ import annotations

import os
import secrets
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
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(6)}.tmp{target.suffix}")
    # Created like a plain open() would (0666 less the umask), not mkstemp's 0600: data files are
    # read by the deploy containers' own uid.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
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
