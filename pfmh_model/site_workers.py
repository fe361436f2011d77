"""The simulation's sites spread over worker processes: process-level parallelism, one thread each.

Each worker is a fresh (spawned) process holding a :class:`~pfmh_model.federation.Federation`
over its group of sites (their global indices keep each site's batch seed), with one torch
thread (``pfmh_model.threads``). The parent keeps the round loop: it sends the global state,
gets every site's upload vector and losses back, aggregates, and broadcasts; each worker validates its
own sites and chooses their search models (``pfmh_model.search_choice``). Nothing but numpy
arrays and small dataclasses crosses a pipe. Groups are balanced by training records.

Why processes and not threads: see ``pfmh_model.threads``. Two one-thread processes on a
2-core machine that is busy elsewhere time-share the free CPU; two intra-op threads wait for
each other at every operator.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pfmh_model.aggregation import GlobalState
from pfmh_model.data import MultiModalDataset, Split
from pfmh_model.errors import ModelError

__all__ = ["SiteWorkers", "balanced_groups"]


def balanced_groups(sizes: Sequence[int], workers: int) -> list[list[int]]:
    """Site indices per worker: largest sites first, each to the group with fewest records so far."""
    groups: list[list[int]] = [[] for _ in range(min(workers, len(sizes)))]
    load = [0] * len(groups)
    for k in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        g = load.index(min(load))
        groups[g].append(k)
        load[g] += sizes[k]
    return [sorted(g) for g in groups if g]


def _serve(conn: Connection, sites: list[MultiModalDataset], config: Any, indices: list[int],
           validation: list[Split] | None) -> None:
    # Ctrl-C reaches the whole process group; the parent reports it and stops us, so a worker leaves
    # quietly (no traceback per worker), as it does when the parent is gone (EOF on the pipe).
    try:
        _serve_commands(conn, sites, config, indices, validation)
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return


def _serve_commands(conn: Connection, sites: list[MultiModalDataset], config: Any, indices: list[int],
                    validation: list[Split] | None) -> None:
    from pfmh_model.federation import Federation
    from pfmh_model.threads import set_threads

    set_threads(1)
    try:
        federation = Federation(sites, config, site_indices=indices, validation=validation)
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc(limit=3)))
        return
    conn.send(("ready", None))
    while True:
        command, arg = conn.recv()
        if command == "stop":
            return
        try:
            if command == "update":
                federation.state = arg
                reply: Any = federation.local_work()
            elif command == "load":  # the aggregate; then each site's search model (``search_choice``)
                federation.load_shared_model(arg)
                reply = federation.search_choice
            elif command == "validate":  # with the state after the round's aggregation (its round number)
                federation.state = arg
                reply = (federation.validate(), federation.best_rounds())
            else:
                reply = federation.site_codes(selected=arg)
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc(limit=3)))
            continue
        conn.send(("ok", reply))


class SiteWorkers:
    """W worker processes, each training a group of the sites (see the module docstring).

    Args:
        sites: every site, in order.
        config: the run's ``FederationConfig`` (each worker runs it with one worker).
        workers: number of processes (at most one per site).
        validation: each site's held-out records, or None; a site's worker validates it.
    """

    def __init__(self, sites: list[MultiModalDataset], config: Any, workers: int,
                 validation: list[Split] | None = None) -> None:
        self.groups = balanced_groups([len(s.train) for s in sites], workers)
        context = mp.get_context("spawn")
        inner = dataclasses.replace(config, workers=1)
        self._conns: list[Connection] = []
        self._procs = []
        for group in self.groups:
            parent, child = context.Pipe()
            slices = None if validation is None else [validation[k] for k in group]
            proc = context.Process(target=_serve, args=(child, [sites[k] for k in group], inner, group, slices),
                                   daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather()  # every worker built its trainers

    def _gather(self) -> list[Any]:
        out = []
        for conn in self._conns:
            try:
                status, value = conn.recv()
            except EOFError as exc:
                raise ModelError("a simulation worker process died; run with --workers 1 to see why") from exc
            if status == "error":
                raise ModelError(f"a simulation worker failed: {value.strip().splitlines()[-1]}")
            out.append(value)
        return out

    def _all(self, command: str, arg: Any = None) -> list[Any]:
        for conn in self._conns:
            conn.send((command, arg))
        return self._gather()

    def _in_site_order(self, per_group: list[list[Any]]) -> list[Any]:
        out: dict[int, Any] = {}
        for group, values in zip(self.groups, per_group, strict=True):
            out.update(zip(group, values, strict=True))
        return [out[k] for k in sorted(out)]

    def local_work(self, state: GlobalState) -> tuple[list[np.ndarray], list[dict]]:
        """Every site's upload vector and losses for a round starting from ``state``, in site order."""
        replies = self._all("update", state)
        uploads = self._in_site_order([r[0] for r in replies])
        losses = self._in_site_order([r[1] for r in replies])
        return uploads, losses

    def load_shared_model(self, vector: np.ndarray) -> tuple[list[str], list] | None:
        """Every site takes the aggregate; returns their search-model choices in site order (None if none)."""
        replies = self._all("load", vector)
        if all(r is None for r in replies):
            return None
        return (self._in_site_order([r[0] for r in replies]), self._in_site_order([r[1] for r in replies]))

    def validate(self, state: GlobalState) -> tuple[list[float | None], list[int | None]]:
        """Every site's validation mAP (``Federation.validate``) after the round that ended in ``state``, and
        its best round so far (``Federation.best_rounds``)."""
        replies = self._all("validate", state)
        return self._in_site_order([r[0] for r in replies]), self._in_site_order([r[1] for r in replies])

    def site_codes(self, *, selected: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._in_site_order(self._all("codes", selected))

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []
