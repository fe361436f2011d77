"""Opacus accountant adapter: epsilon equals Opacus' own, pinned values, composition, state, lazy import."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from security.accountant import (
    AccountantKind,
    AccountingStep,
    OpacusAccountant,
    PrivacyAccountant,
    epsilon_for,
)
from security.errors import UnsafeConfiguration
from tests.conftest import REPO_ROOT

# Reference values computed by Opacus 1.6.0 itself (RDPAccountant / PRVAccountant, default orders/errors).
RDP_SIGMA1_Q1_10STEPS = 19.05359753163139      # sigma=1.0, q=1, 10 steps, delta=1e-5
RDP_SIGMA5_Q1_20STEPS = 4.161624306053592      # sigma=5.0, q=1, 20 steps, delta=1e-5
RDP_MIXED = 4.557056019943262                  # 20 x (5.0, q=1) + 1000 x (1.1, q=0.01), delta=1e-5
PRV_SIGMA1_Q1_10STEPS = 17.867304149298032     # PRV upper bound, same release as the first


def _exact_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Exact epsilon of `steps` Gaussian releases (Balle & Wang 2018, Thm. 8), mu = sqrt(T)/sigma."""
    mu = math.sqrt(steps) / sigma

    def gap(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta)

    return float(brentq(gap, 0.0, 100.0))


def test_rdp_epsilon_equals_opacus_exactly() -> None:
    # Prepare
    from opacus.accountants import RDPAccountant
    ours, theirs = OpacusAccountant("rdp"), RDPAccountant()
    # Execute
    for _ in range(10):
        ours.step(noise_multiplier=1.0, sample_rate=1.0)
        theirs.step(noise_multiplier=1.0, sample_rate=1.0)
    # Assert
    assert ours.epsilon(1e-5) == theirs.get_epsilon(delta=1e-5) == RDP_SIGMA1_Q1_10STEPS
    assert epsilon_for([(5.0, 1.0, 20)], 1e-5, "rdp") == RDP_SIGMA5_Q1_20STEPS


def test_prv_epsilon_equals_opacus_and_bounds_the_exact_gaussian() -> None:
    # Prepare
    prv = OpacusAccountant(AccountantKind.PRV)
    # Execute
    prv.step(noise_multiplier=1.0, sample_rate=1.0, steps=10)
    eps = prv.epsilon(1e-5)
    # Assert: Opacus' number; an upper bound on the exact value and tighter than RDP.
    exact = _exact_gaussian_epsilon(1.0, 10, 1e-5)
    assert eps == pytest.approx(PRV_SIGMA1_Q1_10STEPS, rel=1e-9)
    assert exact <= eps <= exact + 0.05
    assert eps < RDP_SIGMA1_Q1_10STEPS


def test_heterogeneous_composition_of_prototypes_and_dp_sgd() -> None:
    # Prepare: per round one prototype release (q=1) then 50 DP-SGD steps (q=0.01), interleaved.
    from opacus.accountants import RDPAccountant
    ours, theirs = OpacusAccountant(), RDPAccountant()
    for _ in range(20):
        for acc in (ours, theirs):
            acc.step(noise_multiplier=5.0, sample_rate=1.0)
        ours.step(noise_multiplier=1.1, sample_rate=0.01, steps=50)
        for _ in range(50):
            theirs.step(noise_multiplier=1.1, sample_rate=0.01)
    # Execute
    eps = ours.epsilon(1e-5)
    # Assert: same as Opacus stepped one by one, as the grouped order, and more than either part alone.
    assert eps == pytest.approx(theirs.get_epsilon(delta=1e-5), rel=1e-12)
    assert eps == pytest.approx(RDP_MIXED, rel=1e-12)
    assert eps == pytest.approx(epsilon_for([(5.0, 1.0, 20), (1.1, 0.01, 1000)], 1e-5), rel=1e-12)
    assert eps > RDP_SIGMA5_Q1_20STEPS
    assert eps > epsilon_for([(1.1, 0.01, 1000)], 1e-5)
    assert len(ours.history) == 40 and ours.num_steps == 1020


def test_history_is_run_length_encoded_and_read_only() -> None:
    # Prepare
    acc = OpacusAccountant()
    # Execute
    acc.step(noise_multiplier=2.0, sample_rate=1.0)
    acc.step(noise_multiplier=2.0, sample_rate=1.0, steps=3)
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    # Assert
    assert acc.history == ((2.0, 1.0, 4), (1.0, 0.1, 1))
    assert isinstance(acc.history[0], AccountingStep)
    assert isinstance(acc.history, tuple)
    assert isinstance(acc, PrivacyAccountant)
    assert OpacusAccountant().epsilon(1e-5) == 0.0


def test_state_dict_round_trips_through_json_and_copy_is_independent() -> None:
    # Prepare
    acc = OpacusAccountant("rdp")
    acc.step(noise_multiplier=3.0, sample_rate=1.0, steps=7)
    acc.step(noise_multiplier=1.0, sample_rate=0.05, steps=100)
    # Execute
    restored = OpacusAccountant("rdp")
    restored.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    twin = acc.copy()
    twin.step(noise_multiplier=3.0, sample_rate=1.0)
    # Assert
    assert restored.history == acc.history
    assert restored.epsilon(1e-6) == acc.epsilon(1e-6)
    assert acc.num_steps == 107 and twin.num_steps == 108


@pytest.mark.parametrize("state", [
    {"version": 1, "mechanism": "prv", "history": []},                 # wrong mechanism
    {"version": 2, "mechanism": "rdp", "history": []},                 # wrong version
    {"mechanism": "rdp", "history": []},                               # missing key
    {"version": 1, "mechanism": "rdp", "history": [[1.0, 1.0]]},       # short entry
    {"version": 1, "mechanism": "rdp", "history": [[0.0, 1.0, 1]]},    # sigma 0
    {"version": 1, "mechanism": "rdp", "history": [[1.0, 1.0, 1.5]]},  # fractional steps
])
def test_load_state_dict_refuses_bad_state(state: dict[str, object]) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        OpacusAccountant("rdp").load_state_dict(state)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [
    (0.0, 1.0, 1, 1e-5), (float("nan"), 1.0, 1, 1e-5), (1.0, 0.0, 1, 1e-5), (1.0, 1.5, 1, 1e-5),
    (1.0, 1.0, 0, 1e-5), (1.0, 1.0, 1, 0.0), (1.0, 1.0, 1, 1.0),
])
def test_invalid_releases_raise(sigma: float, q: float, steps: int, delta: float) -> None:
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        epsilon_for([(sigma, q, steps)], delta)


def test_importing_security_loads_neither_torch_nor_opacus_until_epsilon_is_asked() -> None:
    # Prepare: import every security module in a fresh interpreter, then ask for an epsilon.
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import security\n"
        "names = [m.name for m in pkgutil.walk_packages(security.__path__, 'security.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "before = sorted({k.split('.')[0] for k in sys.modules} & {'torch', 'opacus'})\n"
        "from security.accountant import OpacusAccountant\n"
        "acc = OpacusAccountant()\n"
        "acc.step(noise_multiplier=1.0, sample_rate=1.0, steps=10)\n"
        "print(json.dumps({'names': names, 'before': before, 'eps': acc.epsilon(1e-5)}))\n"
    )
    # Execute
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Assert
    assert "security.accountant" in result["names"]
    assert result["before"] == []
    assert result["eps"] == RDP_SIGMA1_Q1_10STEPS
