"""Exceptions of the security package: one base class and narrow subclasses, never bare ``ValueError``.

Every message gives the offending value, the limit and the fix, e.g. "epsilon would reach 8.3 >
epsilon_max 8.0 at round 12; raise epsilon_max or noise_multiplier". Checks raise; nothing in ``security``
returns ``False`` to signal a failed verification. The gRPC error-mapping interceptor maps these
classes to status codes.
"""
from __future__ import annotations

import enum


class SecurityError(Exception):
    """Base class of every error raised by the ``security`` package."""


class InvalidMessage(SecurityError):
    """A protocol message is malformed: wrong round, unknown or duplicate sender, wrong length or field."""


class StageOutOfOrder(SecurityError):
    """A protocol step was called in a stage that does not allow it (the message names both stages)."""


class RoundAborted(SecurityError):
    """The round cannot finish safely (e.g. fewer than t survivors); nothing is revealed.

    Attributes:
        reason: short human-readable cause, also used as a metric label by callers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"round aborted: {reason}")
        self.reason = reason


class DecryptionFailed(SecurityError):
    """An AEAD ciphertext failed authentication (tampered, wrong key, nonce or associated data)."""


class SignatureInvalid(SecurityError):
    """A signature did not verify under the expected public key."""


class ShareInvalid(SecurityError):
    """Secret shares are inconsistent, malformed, too few, or fail their integrity tag."""


class OverflowRisk(SecurityError):
    """A fixed-point sum could leave the int64 range (n * max|v| * 2^f >= 2^63), or a value is too large."""


class UnsafeConfiguration(SecurityError):
    """A configuration would void a security guarantee (threshold too low, neighbourhood too small, ...)."""


class UnsafeSetting(UnsafeConfiguration):
    """One named setting (``.setting``, a field name) has an unsafe or out-of-range value."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class KeyFormatError(SecurityError):
    """Key material could not be loaded: wrong type, length or encoding."""


class BudgetExceeded(SecurityError):
    """A differential-privacy release would push epsilon past the configured ``epsilon_max``."""


class LedgerTampered(SecurityError):
    """The signed hash-chained ledger failed verification.

    Attributes:
        reason: what failed (e.g. ``"hash_mismatch"``, ``"bad_signature"``, ``"seq_gap"``, ``"wrong_site"``).
        seq: sequence number of the first bad entry, or ``None`` when not tied to one entry.
    """

    def __init__(self, reason: str, seq: int | None = None, detail: str = "") -> None:
        where = f" at seq {seq}" if seq is not None else ""
        tail = f": {detail}" if detail else ""
        super().__init__(f"ledger tampered ({reason}){where}{tail}")
        self.reason = reason
        self.seq = seq
        self.detail = detail


class PkiError(SecurityError):
    """A PKI operation failed for a user-correctable reason (missing CA, bad name, existing dir, ...)."""


class RejectReason(enum.StrEnum):
    """Why a peer certificate was rejected; values double as metric labels and gRPC error details."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_CA = "unknown_ca"
    REVOKED = "revoked"
    WRONG_ROLE = "wrong_role"
    ID_MISMATCH = "id_mismatch"
    MALFORMED = "malformed"


class CertificateRejected(SecurityError):
    """A peer certificate failed verification.

    Attributes:
        reason: a :class:`RejectReason` code.
        detail: human-readable explanation with the value, the limit and the fix.
    """

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        tail = f": {detail}" if detail else ""
        super().__init__(f"certificate rejected ({reason.value}){tail}")
        self.reason = reason
        self.detail = detail
