"""Secure-aggregation configuration (validated at construction) and the per-round plan derived from it.

Safety rules enforced here (violations raise :class:`UnsafeConfiguration` or :class:`OverflowRisk`):

- threshold ``t >= 2``: with t = 1 every single share is the secret itself;
- ``t <= m`` where ``m = min(k, n - 1) + 1`` is the number of holders of a site's shares (its k graph
  neighbours and itself): otherwise no secret can ever be reconstructed;
- ``t > m / 2``: two disjoint groups of holders could otherwise each reconstruct one of a site's two
  secrets (mask key and self seed) and together unmask its individual input;
- with the consistency check (default, active coordinator): ``2t > m + c`` where ``c`` is the number of
  colluding sites tolerated (``colluders``): two different survivor views signed by t holders each would
  need ``2(t - c)`` honest holders, more than the ``m - c`` there are (docs/PRIVACY.md, "Secure aggregation
  against an active coordinator"); without it (semi-honest mode, honest-but-curious coordinator only):
  ``c < t``;
- ``k`` even and >= 2 (Harary graph), default ``ceil(2 log2 n)`` rounded up to even;
- fixed point: ``n * ceil(max_abs_value * 2^f) < 2^63`` (see ``security.fixed_point``).

Default ``t = max(floor(m/2) + 1, ceil(2m/3))``: a 2/3 majority of each neighbourhood must survive, which
tolerates about one third dropouts while keeping t above the m/2 safety bound (for m = 3 this gives 2).
With ``colluders`` given, t is raised to ``floor((m + c) / 2) + 1`` when that is larger; with ``colluders``
left ``None`` the plan tolerates the largest c the bound allows for its t (``2t - m - 1``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from security.errors import UnsafeConfiguration, UnsafeSetting
from security.fixed_point import MAX_FRACTION_BITS, check_overflow
from security.neighbours import default_neighbours, neighbourhood_size
from security.prg import MAX_STREAM_VALUES, PrgAlgorithm


def default_threshold(holders: int) -> int:
    """``max(floor(m/2) + 1, ceil(2m/3))`` capped at m, for m = number of share holders."""
    return min(holders, max(holders // 2 + 1, math.ceil(2 * holders / 3)))


def max_colluders(holders: int, threshold: int, *, consistency_check: bool) -> int:
    """Largest number of colluding sites the round tolerates (see the module docstring)."""
    return 2 * threshold - holders - 1 if consistency_check else threshold - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """Parameters of one round for a cohort of ``cohort_size`` sites."""

    cohort_size: int
    neighbours: int
    holders: int
    threshold: int
    colluders: int = 0

    @property
    def full_graph(self) -> bool:
        """True when every site neighbours every other one (plain SecAgg)."""
        return self.holders == self.cohort_size


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggConfig:
    """Secure aggregation settings shared by the coordinator and all sites of a federation.

    Args:
        federation_id: federation name, bound into every key derivation and signature.
        vector_length: d, number of float64 values each site aggregates.
        fraction_bits: f, fixed-point fraction bits (resolution 2^-f). More bits = finer sums, smaller range.
        max_abs_value: bound on every input value's magnitude (DP clipping upstream must ensure it).
        neighbours: SecAgg+ degree k (even); ``None`` = ``ceil(2 log2 n)`` rounded up to even. Larger k costs
            more masking work and resists more collusion; k >= n - 1 is plain SecAgg.
        threshold: Shamir threshold t per neighbourhood; ``None`` = ``default_threshold(m)``. Larger t
            tolerates fewer dropouts but needs larger coalitions to break privacy.
        prg: stream cipher for masks. AES-256-CTR runs about 2x faster than ChaCha20 on CPUs with AES-NI and
            no AVX-512 (dev machine: 1e7 values x 17 masks in ~0.30 s vs ~0.57 s of CPU); both are secure.
        colluders: c, the number of colluding sites (with the coordinator) the round must tolerate;
            ``None`` = the largest the threshold allows. Larger c needs a larger t.
        consistency_check: survivors sign the survivor view and reveal shares only with t signatures on it
            (secure against a coordinator that lies about dropouts). ``False`` is the semi-honest protocol:
            one round trip and about k signatures fewer, and safe only if the coordinator follows it.

    Raises:
        UnsafeConfiguration: an out-of-range or unsafe value (the message names the field and the fix).
        OverflowRisk: a single value could already overflow (max_abs_value * 2^f >= 2^63).
    """

    federation_id: str
    vector_length: int
    fraction_bits: int = 24
    max_abs_value: float = 2.0**20
    neighbours: int | None = None
    threshold: int | None = None
    prg: PrgAlgorithm = PrgAlgorithm.CHACHA20
    colluders: int | None = None
    consistency_check: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.federation_id, str) or not self.federation_id:
            raise UnsafeSetting("federation_id", f"federation_id={self.federation_id!r} must be a non-empty string")
        if not _is_int(self.vector_length) or not 1 <= self.vector_length <= MAX_STREAM_VALUES:
            raise UnsafeConfiguration(f"vector_length={self.vector_length!r} must be an int in "
                                      f"[1, {MAX_STREAM_VALUES}]")
        if not _is_int(self.fraction_bits) or not 0 <= self.fraction_bits <= MAX_FRACTION_BITS:
            raise UnsafeSetting("fraction_bits", f"fraction_bits={self.fraction_bits!r} must be an int in "
                                f"[0, {MAX_FRACTION_BITS}]")
        check_overflow(1, self.max_abs_value, self.fraction_bits)
        k, t = self.neighbours, self.threshold
        if k is not None and (not _is_int(k) or k < 2 or k % 2):
            raise UnsafeSetting("neighbours", f"neighbours={k!r} must be an even int >= 2, or None for the default")
        if t is not None and (not _is_int(t) or t < 2):
            raise UnsafeSetting("threshold", f"threshold={t!r} must be an int >= 2 (t=1 makes every share the "
                                f"secret itself), or None for the default")
        if k is not None and t is not None and 2 * t <= k + 1:
            raise UnsafeConfiguration(f"threshold={t} <= half of the {k + 1} holders (k={k} + self); "
                                      f"raise threshold above {(k + 1) / 2}")
        c = self.colluders
        if c is not None and (not _is_int(c) or c < 0):
            raise UnsafeSetting("colluders", f"colluders={c!r} must be an int >= 0, or None for the largest allowed")
        if not isinstance(self.consistency_check, bool):
            raise UnsafeConfiguration(f"consistency_check={self.consistency_check!r} must be a bool")
        if not isinstance(self.prg, PrgAlgorithm):
            raise UnsafeSetting("prg", f"prg={self.prg!r} must be one of {[p.value for p in PrgAlgorithm]}")

    def plan(self, cohort_size: int) -> RoundPlan:
        """Resolve k and t for a cohort of ``cohort_size`` sites and check them and the overflow bound.

        Raises:
            UnsafeConfiguration: fewer than 2 sites, t > holders, t <= holders / 2, or more colluders than
                the bound allows (``2t > m + c`` with the consistency check, ``c < t`` without).
            OverflowRisk: ``cohort_size * max_abs_value * 2^f`` could reach 2^63.
        """
        if not _is_int(cohort_size) or cohort_size < 2:
            raise UnsafeConfiguration(f"cohort of {cohort_size!r} sites < 2; secure aggregation needs >= 2")
        k = self.neighbours if self.neighbours is not None else default_neighbours(cohort_size)
        holders = neighbourhood_size(cohort_size, k)
        c = self.colluders
        t = self.threshold
        if t is None:
            t = default_threshold(holders)
            if c is not None:
                t = max(t, (holders + c) // 2 + 1 if self.consistency_check else c + 1)
        if t > holders:
            raise UnsafeConfiguration(f"threshold={t} > {holders} holders per site (n={cohort_size}, k={k}); "
                                      f"lower threshold or raise neighbours / the cohort size")
        if 2 * t <= holders:
            raise UnsafeConfiguration(f"threshold={t} <= half of the {holders} holders per site; "
                                      f"raise threshold above {holders / 2}")
        allowed = max_colluders(holders, t, consistency_check=self.consistency_check)
        if c is not None and c > allowed:
            rule = (f"2t > m + c, i.e. 2*{t} > {holders} + {c}" if self.consistency_check
                    else f"c < t, i.e. {c} < {t}")
            raise UnsafeConfiguration(f"colluders={c} breaks {rule} (n={cohort_size}, k={k}, m={holders} holders); "
                                      f"at most {allowed} colluders with threshold {t}: raise threshold "
                                      f"(to {(holders + c) // 2 + 1 if self.consistency_check else c + 1}) "
                                      f"or lower colluders")
        check_overflow(cohort_size, self.max_abs_value, self.fraction_bits)
        return RoundPlan(cohort_size=cohort_size, neighbours=k, holders=holders, threshold=t,
                         colluders=allowed if c is None else c)
