"""The round log in ``rounds.json`` (coordinator.persistence): the round in flight is written ahead with its
cohort, so a coordinator stopped mid-round still has a witness for the releases its cohort recorded."""
from __future__ import annotations

import json
from pathlib import Path

from coordinator.audit import round_witnesses
from coordinator.persistence import CoordinatorState, StateStore


def test_round_stopped_mid_flight_is_logged_as_interrupted(tmp_path: Path) -> None:
    # Prepare: round 1 completed; round 2 started (written ahead) when the coordinator stopped
    store = StateStore(tmp_path)
    state = CoordinatorState(completed_rounds=1, last_round_started=2, history=[
        {"round": 1, "outcome": "completed", "cohort": ["a", "b"], "inputs": ["a", "b"], "dp": True}],
        open_round={"round": 2, "cohort": ["a", "b"]})
    store.save_round_started(state)
    # Execute: a restarted coordinator loads it
    loaded = store.load()
    witnesses = round_witnesses(loaded.history)
    # Assert: round 2 is a witness with its cohort and no input in any sum
    assert json.loads((tmp_path / "rounds.json").read_text())["open_round"] == {"round": 2, "cohort": ["a", "b"]}
    assert [h["outcome"] for h in loaded.history] == ["completed", "interrupted"]
    assert witnesses[2].cohort == frozenset({"a", "b"}) and not witnesses[2].inputs
    assert witnesses[1].inputs == frozenset({"a", "b"}) and witnesses[1].dp is True
    # Assert: once the round has an outcome, nothing is added on load
    loaded.history[-1] = {"round": 2, "outcome": "aborted", "cohort": ["a", "b"], "inputs_received": ["a"]}
    loaded.open_round = None
    store.save_round_outcome(loaded, completed=False)
    assert [h["outcome"] for h in store.load().history] == ["completed", "aborted"]
