"""Secure-aggregation stages and the one table of allowed transitions (shared by client and server).

A party's stage is the phase it is in. The client enters a phase by performing it (``advertise`` moves it
to ADVERTISE_KEYS, ``share_keys`` to SHARE_KEYS, ...); the server collects a phase's messages while in it and
closes it to move on. IDLE is a client that has not started a round; DONE and ABORTED end a round, and a
client may start its next round from them.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from security.errors import StageOutOfOrder


class Stage(enum.StrEnum):
    """Phases of one secure-aggregation round (DESIGN.md section 2, phases 2-5; 5a is the consistency check)."""

    IDLE = "idle"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_ACTIVE = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)

TRANSITIONS: Mapping[Stage, frozenset[Stage]] = MappingProxyType({
    Stage.IDLE: frozenset({Stage.ADVERTISE_KEYS}),
    Stage.ADVERTISE_KEYS: frozenset({Stage.SHARE_KEYS, Stage.ABORTED}),
    Stage.SHARE_KEYS: frozenset({Stage.MASKED_INPUT, Stage.ABORTED}),
    # UNMASK straight from MASKED_INPUT only in the semi-honest mode (``SecAggConfig.consistency_check=False``)
    Stage.MASKED_INPUT: frozenset({Stage.CONSISTENCY_CHECK, Stage.UNMASK, Stage.ABORTED}),
    Stage.CONSISTENCY_CHECK: frozenset({Stage.UNMASK, Stage.ABORTED}),
    Stage.UNMASK: frozenset({Stage.DONE, Stage.ABORTED}),
    Stage.DONE: frozenset({Stage.ADVERTISE_KEYS}),
    Stage.ABORTED: frozenset({Stage.ADVERTISE_KEYS}),
})
"""Allowed moves ``current -> next``; anything else raises StageOutOfOrder."""


def is_active(stage: Stage) -> bool:
    """True while a round is in progress (not IDLE, DONE or ABORTED)."""
    return stage in _ACTIVE


def check_transition(current: Stage, target: Stage) -> None:
    """Raise StageOutOfOrder unless ``current -> target`` is in :data:`TRANSITIONS`."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        raise StageOutOfOrder(f"cannot move to stage {target} from stage {current}; "
                              f"allowed next: {allowed}")


def require_stage(current: Stage, expected: Stage, *, action: str) -> None:
    """Raise StageOutOfOrder unless the party is in ``expected`` (e.g. a message in the wrong phase)."""
    if current is not expected:
        raise StageOutOfOrder(f"{action} belongs to stage {expected}, but the round is in stage {current}")
