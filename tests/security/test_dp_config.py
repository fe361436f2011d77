"""DPConfig: secure defaults, enum coercion and the cross-field invariants."""
from __future__ import annotations

import dataclasses
import math

import pytest

from security.accountant import AccountantKind
from security.dp_config import DPConfig, DPMode
from security.dp_noise import NoiseMode
from security.errors import UnsafeConfiguration


def test_defaults_are_the_secure_choices() -> None:
    # Execute
    cfg = DPConfig()
    # Assert
    assert cfg.mode is DPMode.LOCAL and cfg.noise_mode is NoiseMode.LOCAL
    assert cfg.accountant is AccountantKind.RDP
    assert cfg.secure_aggregation and cfg.enabled
    assert cfg.sensitivity == math.sqrt(2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.delta = 0.1  # type: ignore[misc]


def test_strings_become_enums() -> None:
    # Execute
    cfg = DPConfig(mode="distributed", accountant="prv", min_cohort=4, label_cap=3)  # type: ignore[arg-type]
    # Assert
    assert cfg.mode is DPMode.DISTRIBUTED and cfg.noise_mode is NoiseMode.DISTRIBUTED
    assert cfg.accountant is AccountantKind.PRV
    assert cfg.sensitivity == pytest.approx(math.sqrt(6.0))


def test_off_mode_needs_no_sigma() -> None:
    # Execute
    cfg = DPConfig(mode=DPMode.OFF, noise_multiplier=0.0)
    # Assert
    assert not cfg.enabled and cfg.noise_mode is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.5}, "delta"),
    ({"epsilon_max": -1.0}, "epsilon_max"),
    ({"label_cap": 0}, "label_cap"),
    ({"min_cohort": 0}, "min_cohort"),
    ({"mode": DPMode.DISTRIBUTED, "secure_aggregation": False}, "secure aggregation"),
])
def test_invalid_settings_raise_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration, match=field):
        DPConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_mode_string_raises() -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        DPConfig(mode="global")  # type: ignore[arg-type]


def test_delta_must_stay_below_one_over_n() -> None:
    # Prepare
    cfg = DPConfig(delta=1e-3)
    # Execute / Assert: n = 999 is fine, n = 1000 reaches 1/n.
    cfg.check_records(999)
    with pytest.raises(UnsafeConfiguration, match="1/n_records"):
        cfg.check_records(1000)
