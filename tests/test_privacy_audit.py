"""The empirical privacy audit (bench/privacy_audit.py) on the real site code path; slow, so not in the default run."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "privacy_audit.py"


def _audit():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("privacy_audit", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_lower_bound_is_zero_for_identical_worlds_and_large_for_separated_ones():
    audit = _audit()
    rng = np.random.default_rng(0)
    same = audit.epsilon_lower_bound(rng.normal(size=400), rng.normal(size=400))
    apart = audit.epsilon_lower_bound(np.zeros(400), np.ones(400))
    assert same < 0.5
    assert apart > 3.0  # 0 errors in 200 test trials per world: the Clopper-Pearson bound allows about 4.6


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["dp_sgd", "frozen"])
def test_audit_bound_stays_below_the_accountant_with_dp_and_shows_the_leak_without(chain):
    audit = _audit()
    on = audit.run_audit(chain=chain, dp=True, sigma=1.0, trials=150, progress=False)
    off = audit.run_audit(chain=chain, dp=False, sigma=1.0, trials=150, progress=False)
    assert on["epsilon_lower_95"] <= on["epsilon_accountant"]
    assert math.isinf(off["epsilon_accountant"])
    assert off["epsilon_lower_95"] > 2.5  # the audit has power: without DP the canary is found every time
