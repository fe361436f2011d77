"""Checks before the coordinator serves: its listen address is free and its state folder is its own.

gRPC binds with ``SO_REUSEPORT`` by default, so a second coordinator on the same port would start
and serve beside the first; the server is built with ``grpc.so_reuseport = 0`` and the address is
probed here first, so a busy port gives one clear line instead of gRPC's log line and traceback.
The state folder is held with an exclusive ``fcntl.flock`` on ``<state_dir>/coordinator.lock`` for
the coordinator's lifetime: the kernel drops it when the process ends, however it ends, so a stale
lock file never blocks a restart.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "coordinator.lock"


class AddressInUse(OSError):
    """Another program listens on the coordinator's address."""


class StateDirInUse(OSError):
    """Another coordinator holds the state folder."""


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:47001"`` or ``"[::]:47001"`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means every interface


def require_free(listen: str) -> None:
    """Raise ``AddressInUse`` if something already listens on ``listen`` (port 0 always passes).

    A probe socket with ``SO_REUSEADDR`` (as gRPC sets it) and without ``SO_REUSEPORT`` is bound and
    closed; only "address in use" is reported here, anything else is left to gRPC's own bind.
    """
    host, port = split_listen(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(f"cannot listen on {listen}: the port is already in use (another "
                                       f"coordinator, or another program); stop it or choose another "
                                       f"server.listen / --listen") from None


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[Path]:
    """Hold ``state_dir`` for this process; raise ``StateDirInUse`` naming the holder's pid if taken."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirInUse(f"state dir {state_dir} is in use by another coordinator (pid {holder}); "
                                "one state dir serves one coordinator: stop that one first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
