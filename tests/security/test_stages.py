"""Stage enum and transition table."""
from __future__ import annotations

import pytest

from security.errors import StageOutOfOrder
from security.stages import TRANSITIONS, Stage, check_transition, is_active, require_stage

HAPPY_PATH = [Stage.IDLE, Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK, Stage.DONE]


def test_happy_path_and_aborts_are_allowed() -> None:
    # Execute / Assert: no exception along the protocol order, and every active stage may abort
    for current, target in zip(HAPPY_PATH, HAPPY_PATH[1:], strict=False):
        check_transition(current, target)
    for stage in Stage:
        if is_active(stage):
            check_transition(stage, Stage.ABORTED)
    check_transition(Stage.DONE, Stage.ADVERTISE_KEYS)
    check_transition(Stage.ABORTED, Stage.ADVERTISE_KEYS)


def test_skips_and_reversals_raise_naming_both_stages() -> None:
    # Execute / Assert
    for current in Stage:
        for target in Stage:
            if target not in TRANSITIONS[current]:
                with pytest.raises(StageOutOfOrder, match=f"to stage {target} from stage {current}"):
                    check_transition(current, target)


def test_require_stage() -> None:
    # Execute / Assert
    require_stage(Stage.UNMASK, Stage.UNMASK, action="x")
    with pytest.raises(StageOutOfOrder, match="MaskedInput belongs to stage masked_input"):
        require_stage(Stage.SHARE_KEYS, Stage.MASKED_INPUT, action="MaskedInput")


def test_table_covers_every_stage() -> None:
    # Execute / Assert
    assert set(TRANSITIONS) == set(Stage)
    assert Stage("share_keys") is Stage.SHARE_KEYS
