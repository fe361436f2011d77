"""Crash-safe coordinator state: the last completed round's global state and the round counter.

Two files under ``state_dir``, each replaced atomically (write to a temporary file, fsync,
``os.replace``, fsync the folder), so a crash leaves either the old or the new version:

- ``checkpoint.npz``: global prototypes and shared model after the last completed round, and
  ``completed_rounds``. Written once per completed round.
- ``rounds.json``: the highest round number ever started (write-ahead, before a round's config
  is sent) and the history of round outcomes. A restarted coordinator never reuses a round
  number, so messages of a round cut short by the crash can never be replayed into a new one.

The history is also the round log that ``pfmh-coordinator audit`` holds the sites' ledgers against
(``security.ledger_audit.RoundWitness``). Each entry has ``round``, ``outcome`` and ``cohort``;
a completed round adds ``inputs`` (the sites whose masked inputs entered the revealed sum) and an
aborted one ``inputs_received`` (whose masked inputs had arrived; none entered a revealed sum); both
add ``dp`` (every input had to carry a DP release). The round in flight is written ahead as
``open_round`` with its cohort; a restart logs it as ``interrupted``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from durable.atomic_file import atomic_write as write_atomically


def atomic_write(path: Path, data: bytes) -> None:
    """Replace one of the coordinator's state files atomically (``durable.atomic_file``), private to its user."""
    write_atomically(path, data, mode=0o600)


@dataclass
class CoordinatorState:
    """What survives a restart."""

    completed_rounds: int = 0
    last_round_started: int = 0
    prototypes: np.ndarray | None = None
    shared_model: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    open_round: dict | None = None  # {"round", "cohort"} of the round in flight, written ahead


class StateStore:
    """Loads and saves ``CoordinatorState`` under one folder."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.checkpoint = self.dir / "checkpoint.npz"
        self.rounds = self.dir / "rounds.json"

    def load(self) -> CoordinatorState:
        state = CoordinatorState()
        if self.rounds.is_file():
            meta = json.loads(self.rounds.read_text())
            state.last_round_started = int(meta["last_round_started"])
            state.history = list(meta.get("history", []))
            open_round = meta.get("open_round")
            if open_round and all(h.get("round") != open_round["round"] for h in state.history):
                # the coordinator stopped mid-round: nothing of it was revealed, but its cohort may have recorded
                state.history.append({**open_round, "outcome": "interrupted"})
        if self.checkpoint.is_file():
            with np.load(self.checkpoint, allow_pickle=False) as data:
                state.completed_rounds = int(data["completed_rounds"])
                state.prototypes = data["prototypes"] if data["prototypes"].size else None
                state.shared_model = data["shared_model"] if data["shared_model"].size else None
        return state

    def save_round_started(self, state: CoordinatorState) -> None:
        self._save_meta(state)

    def save_round_outcome(self, state: CoordinatorState, *, completed: bool) -> None:
        """Checkpoint first, then the history: a crash in between replays nothing and loses nothing."""
        if completed:
            import io

            buffer = io.BytesIO()
            np.savez(buffer, completed_rounds=np.array(state.completed_rounds),
                     prototypes=np.zeros(0) if state.prototypes is None else state.prototypes,
                     shared_model=np.zeros(0) if state.shared_model is None else state.shared_model)
            atomic_write(self.checkpoint, buffer.getvalue())
        self._save_meta(state)

    def _save_meta(self, state: CoordinatorState) -> None:
        meta = {"last_round_started": state.last_round_started, "completed_rounds": state.completed_rounds,
                "history": state.history, "open_round": state.open_round}
        atomic_write(self.rounds, json.dumps(meta, indent=1).encode())
