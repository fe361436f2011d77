"""Privacy accounting: a ``PrivacyAccountant`` interface and its Opacus adapter (RDP default, PRV option).

One accountant per site composes every release it makes: prototype releases (q = 1, once per round) and,
when the shared model is federated, DP-SGD steps (q = batch / n). Both are (subsampled) Gaussian mechanisms,
so the heterogeneous history ``[(sigma, q, steps), ...]`` composes: RDP adds per order, PRV convolves.

RDP conversion: for RDP orders alpha, epsilon(delta) = min over alpha of the RDP-to-DP bound Opacus applies
(Balle et al. 2020, Thm. 21 of arXiv:1905.09982); for q = 1 the Gaussian's RDP is alpha / (2 sigma^2)
(Mironov 2017, Prop. 7). PRV (Gopi et al. 2021) returns its numerical upper bound on epsilon.

Layering: this module is the single named exemption of house rule 1. Importing it loads neither opacus nor
torch; opacus (whose package ``__init__`` imports torch) is imported inside :func:`epsilon_for` only.

References:
    Mironov, "Renyi Differential Privacy", CSF 2017; Balle et al., "Hypothesis Testing Interpretations and
    Renyi Differential Privacy", AISTATS 2020; Gopi, Lee & Wutschitz, "Numerical Composition of Differential
    Privacy", NeurIPS 2021 (arXiv:2106.02848). Opacus ``opacus/accountants/{rdp,prv}.py``.
"""
from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Self

import numpy as np

from security.errors import UnsafeConfiguration

__all__ = ["AccountantKind", "AccountingStep", "PrivacyAccountant", "OpacusAccountant", "epsilon_for"]

_STATE_VERSION = 1


class AccountantKind(enum.StrEnum):
    """Accounting method: Renyi DP (default, fast) or privacy random variables (tighter, slower)."""

    RDP = "rdp"
    PRV = "prv"


class AccountingStep(NamedTuple):
    """``steps`` consecutive releases of a Gaussian mechanism with one multiplier and sample rate."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and not isinstance(x, bool)


def _checked_step(noise_multiplier: float, sample_rate: float, steps: int) -> AccountingStep:
    if not (_is_real(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise UnsafeConfiguration(f"noise_multiplier {noise_multiplier!r} must be > 0 and finite; "
                                  "a release without noise cannot be accounted")
    if not (_is_real(sample_rate) and 0.0 < sample_rate <= 1.0):
        raise UnsafeConfiguration(f"sample_rate {sample_rate!r} must be in (0, 1]; use 1.0 for prototype "
                                  "releases and batch_size / n_records for DP-SGD")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise UnsafeConfiguration(f"steps {steps!r} must be an integer >= 1")
    return AccountingStep(float(noise_multiplier), float(sample_rate), int(steps))


def _checked_delta(delta: float) -> float:
    if not (_is_real(delta) and 0.0 < delta < 1.0):
        raise UnsafeConfiguration(f"delta {delta!r} must be in (0, 1); use well below 1/n_records, e.g. 1e-5")
    return float(delta)


def epsilon_for(history: Iterable[tuple[float, float, int]], delta: float,
                kind: AccountantKind | str = AccountantKind.RDP) -> float:
    """Epsilon at ``delta`` of a recorded list of releases ``(sigma, q, steps)``, recomputed from scratch.

    The audit uses this to reproduce reports from the ledger. An empty history costs 0.0. Entries with the
    same (sigma, q) are merged before the Opacus call (composition is commutative), so interleaved
    prototype and DP-SGD releases cost one term each.

    Raises:
        UnsafeConfiguration: a malformed entry or delta outside (0, 1).
        ValueError: an unknown kind (from :class:`AccountantKind`).
    """
    method = AccountantKind(kind)
    try:
        entries = [_checked_step(*entry) for entry in history]
    except TypeError as exc:
        raise UnsafeConfiguration(f"history is malformed ({exc}); expected [(sigma, q, steps), ...]") from exc
    delta = _checked_delta(delta)
    if not entries:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant  # lazy: opacus imports torch (rule 1)

    merged: dict[tuple[float, float], int] = {}  # composition commutes: one entry per (sigma, q)
    for sigma, q, steps in entries:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    inner = RDPAccountant() if method is AccountantKind.RDP else PRVAccountant()
    inner.load_state_dict({"history": [(sigma, q, n) for (sigma, q), n in merged.items()],
                           "mechanism": method.value})
    with np.errstate(divide="ignore"):  # PRV takes log(1 - q) = -inf at q = 1 and compares with it, as meant
        return float(inner.get_epsilon(delta=delta))


class PrivacyAccountant(abc.ABC):
    """Interface: record Gaussian releases, report epsilon at a delta, persist as plain JSON-able state."""

    @property
    @abc.abstractmethod
    def kind(self) -> AccountantKind:
        """The accounting method."""

    @property
    @abc.abstractmethod
    def history(self) -> tuple[AccountingStep, ...]:
        """Run-length encoded releases so far (read-only)."""

    @abc.abstractmethod
    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` releases with noise multiplier sigma and sample rate q."""

    @abc.abstractmethod
    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict` (validated)."""

    @abc.abstractmethod
    def copy(self) -> Self:
        """An independent accountant with the same history (for what-if checks)."""

    @property
    def num_steps(self) -> int:
        """Total number of releases recorded."""
        return sum(entry.steps for entry in self.history)


class OpacusAccountant(PrivacyAccountant):
    """Adapter over Opacus' ``RDPAccountant`` (default) or ``PRVAccountant``; opacus loads on first epsilon.

    Args:
        kind: ``"rdp"`` or ``"prv"``.

    Raises:
        ValueError: unknown kind (from :class:`AccountantKind`).
    """

    def __init__(self, kind: AccountantKind | str = AccountantKind.RDP) -> None:
        self._kind = AccountantKind(kind)
        self._history: list[AccountingStep] = []

    @property
    def kind(self) -> AccountantKind:
        return self._kind

    @property
    def history(self) -> tuple[AccountingStep, ...]:
        return tuple(self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        entry = _checked_step(noise_multiplier, sample_rate, steps)
        last = self._history[-1] if self._history else None
        if last is not None and last[:2] == entry[:2]:
            self._history[-1] = last._replace(steps=last.steps + entry.steps)
        else:
            self._history.append(entry)

    def epsilon(self, delta: float) -> float:
        return epsilon_for(self._history, delta, self._kind)

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "mechanism": self._kind.value,
                "history": [list(entry) for entry in self._history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"version", "mechanism", "history"} - set(state)
        if missing:
            raise UnsafeConfiguration(f"accountant state lacks keys {sorted(missing)}; "
                                      "pass a state_dict() output")
        if state["version"] != _STATE_VERSION or state["mechanism"] != self._kind.value:
            raise UnsafeConfiguration(f"accountant state is version {state['version']!r} for "
                                      f"{state['mechanism']!r}, expected {_STATE_VERSION} for "
                                      f"{self._kind.value!r}; build OpacusAccountant(kind=...) to match")
        try:
            entries = [_checked_step(sigma, q, n) for sigma, q, n in state["history"]]
        except (TypeError, ValueError) as exc:
            raise UnsafeConfiguration(f"accountant history is malformed ({exc}); expected "
                                      "[[sigma, q, steps], ...]") from exc
        self._history = entries

    def copy(self) -> Self:
        twin = type(self)(self._kind)
        twin._history = list(self._history)
        return twin

    def __repr__(self) -> str:
        return f"OpacusAccountant(kind={self._kind.value!r}, steps={self.num_steps})"
