"""The site ledger's record types: one frozen dataclass per record kind, written by the site, read by the audit.

``participant.privacy.SitePrivacy`` appends ``record.to_record()`` to the signed ledger
(``security.ledger.Ledger.append``); ``security.ledger_audit`` and ``coordinator.audit`` read entries back
with :func:`read_record`. The JSON form is the dataclass's fields plus ``"kind"``; optional fields that are
None are left out, so a ledger written before they existed reads the same.

Kinds:
    ``dp_release`` (:class:`DpRelease`): one DP mechanism of one upload, with the epsilon the site's
    accountant gave after it; ``upload_without_dp`` (:class:`UploadWithoutDp`): something left the site
    without DP (the federation runs with DP off); ``dp_sum`` (:class:`DpSum`): distributed mode only, after
    a completed round, the noise multiplier the decoded sum really carried (informative; it charges nothing).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from security.errors import SecurityError

PROTOTYPE_MECHANISM = "gaussian_prototype_statistics"
DP_SGD_MECHANISM = "dp_sgd_shared_model"
ENCODER_MECHANISM = "dp_sgd_statistics_encoder"
MECHANISMS = (PROTOTYPE_MECHANISM, DP_SGD_MECHANISM, ENCODER_MECHANISM)
COVERED = {
    PROTOTYPE_MECHANISM: "per-class prototype sums and counts of this site (each record's contribution "
                         "scaled to a fixed L2 sensitivity given the encoder, Gaussian noise before masking)",
    DP_SGD_MECHANISM: "the shared model's update (per-record gradient clipping and noise by Opacus DP-SGD)",
    ENCODER_MECHANISM: "the encoder that computes the released statistics (per-record gradient clipping and "
                       "noise by Opacus DP-SGD, Poisson batches from the OS CSPRNG)",
}
CHOICES: dict[str, tuple[str, ...]] = {"mechanism": MECHANISMS, "mode": ("local", "distributed"),
                                       "accountant": ("rdp", "prv")}


class MalformedRecord(SecurityError):
    """A ledger record that is not one of the known kinds with the fields and types of its schema."""


def _type_error(name: str, value: object, tp: type) -> str | None:
    numeric = tp is float and isinstance(value, int | float)
    if value is None or isinstance(value, bool) or not (numeric or isinstance(value, tp)):
        return f"field {name!r} = {value!r} is missing or not {tp.__name__}"
    if name in CHOICES and value not in CHOICES[name]:
        return f"field {name!r} = {value!r} is not one of {CHOICES[name]}"
    return None


def _base_type(field: dataclasses.Field[Any]) -> type:
    """``int``, ``float`` or ``str`` of a field annotated ``T`` or ``T | None`` (annotations are strings here)."""
    return {"int": int, "float": float, "str": str}[str(field.type).split(" | ")[0]]


class _Record:
    """JSON form of the record dataclasses: ``{"kind": KIND, **fields}`` without the None optionals."""

    __slots__ = ()
    KIND: ClassVar[str]
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_record(self) -> dict[str, Any]:
        """The JSON-able mapping appended to the ledger."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"kind": self.KIND, **{k: v for k, v in fields.items() if v is not None or k not in self.OPTIONAL}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Any:
        """The typed record; raises MalformedRecord naming the first bad, missing or unknown field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(record) - set(fields) - {"kind"})
        if unknown:
            raise MalformedRecord(f"field {unknown[0]!r} is not part of a {cls.KIND} record")
        for name, f in fields.items():
            if f.default is dataclasses.MISSING or record.get(name) is not None:
                if (bad := _type_error(name, record.get(name), _base_type(f))) is not None:
                    raise MalformedRecord(bad)
        return cls(**{name: float(record[name]) if _base_type(f) is float else record[name]
                      for name, f in fields.items() if record.get(name) is not None})


@dataclass(frozen=True, slots=True)
class DpRelease(_Record):
    """One DP mechanism's release in one round, as the site's accountant charged it.

    Attributes:
        noise_multiplier: sigma (noise std / sensitivity); sensitivity: the L2 bound the noise is scaled to;
        sample_rate: Poisson sampling rate q (1 for the statistics); steps: compositions of this release;
        epsilon: the accountant's epsilon at ``delta`` after this release (the whole history's);
        covered / not_covered: what this DP release protects and what leaves the site without it;
        encoder_chain: which model computed the released statistics; noise_cohort / colluding_sites:
        distributed mode's m = t - c for a prototype release (None otherwise).
    """

    KIND: ClassVar[str] = "dp_release"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("noise_cohort", "colluding_sites")

    round: int
    mechanism: str
    mode: str
    noise_multiplier: float
    sensitivity: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    epsilon_max: float
    accountant: str
    covered: str
    not_covered: str
    encoder_chain: str = ""
    noise_cohort: int | None = None
    colluding_sites: int | None = None

    @property
    def budget_left(self) -> float:
        """``epsilon_max - epsilon`` after this release, never below 0."""
        return max(0.0, self.epsilon_max - self.epsilon)


@dataclass(frozen=True, slots=True)
class UploadWithoutDp(_Record):
    """Something left the site in ``round`` without DP (``what`` says what)."""

    KIND: ClassVar[str] = "upload_without_dp"

    round: int
    what: str


@dataclass(frozen=True, slots=True)
class DpSum(_Record):
    """Distributed mode, after a completed round: the noise multiplier the decoded sum of ``contributors``
    inputs carried, ``sigma * sqrt((contributors - colluding_sites) / noise_cohort)``."""

    KIND: ClassVar[str] = "dp_sum"

    round: int
    contributors: int
    noise_cohort: int
    colluding_sites: int
    sum_noise_multiplier: float


LedgerRecord = DpRelease | UploadWithoutDp | DpSum
KINDS: dict[str, type[DpRelease] | type[UploadWithoutDp] | type[DpSum]] = {
    c.KIND: c for c in (DpRelease, UploadWithoutDp, DpSum)}


def read_record(record: Mapping[str, Any]) -> LedgerRecord:
    """The typed record of a ledger entry's ``record`` mapping.

    Raises:
        MalformedRecord: an unknown kind, or a field missing, of the wrong type, out of its choices or unknown.
    """
    kind = record.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedRecord(f"kind {kind!r} is not one of {tuple(KINDS)}")
    return cls.from_record(record)  # type: ignore[no-any-return]
