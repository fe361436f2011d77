"""Session context: who talks to whom in which round, bound into every HKDF ``info`` and AEAD associated data.

Canonical encoding (``to_bytes``)::

    b"pfmh-ctx-v1" || u32be(len(federation_id)) || federation_id
                   || u64be(round)
                   || u32be(len(sender)) || sender || u32be(len(recipient)) || recipient

Strings are UTF-8. Length prefixes make the encoding injective (no two contexts share bytes), so a key or
ciphertext made for one (federation, round, sender, recipient) cannot be replayed under another.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from security.errors import InvalidMessage

_MAGIC = b"pfmh-ctx-v1"
_MAX_FIELD_BYTES = 255
BROADCAST = "*"
"""Recipient name for messages addressed to every cohort member (e.g. signed key advertisements)."""


def _field(name: str, value: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"context {name}={value!r} must be a non-empty string; pass the id as text")
    raw = value.encode("utf-8")
    if len(raw) > _MAX_FIELD_BYTES:
        raise InvalidMessage(f"context {name} is {len(raw)} bytes > {_MAX_FIELD_BYTES}; use a shorter id")
    return struct.pack(">I", len(raw)) + raw


@dataclass(frozen=True, slots=True)
class SessionContext:
    """The (federation, round, sender, recipient) a key, seed or ciphertext belongs to.

    Args:
        federation_id: federation name (as in the CA's subject organisation).
        round: round number, >= 0.
        sender: site id of the party that produces the key material or ciphertext.
        recipient: site id of the party it is meant for, or :data:`BROADCAST`.

    Raises:
        InvalidMessage: an empty/non-string id, an id over 255 UTF-8 bytes, or a round outside [0, 2^64).

    Security:
        Both parties must build the same context; for symmetric relations (pairwise mask seeds) use
        :meth:`pair` so the order of the two ids does not depend on who derives it.
    """

    federation_id: str
    round: int
    sender: str
    recipient: str

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or not 0 <= self.round < 2**64:
            raise InvalidMessage(f"context round={self.round!r} must be an int in [0, 2^64); "
                                 "pass the round number")
        for name in ("federation_id", "sender", "recipient"):
            _field(name, getattr(self, name))

    @classmethod
    def pair(cls, federation_id: str, round_number: int, site_a: str, site_b: str) -> SessionContext:
        """Context of an unordered pair: sender is the smaller id, recipient the larger (string order)."""
        if site_a == site_b:
            raise InvalidMessage(f"a pair context needs two different sites, got {site_a!r} twice")
        low, high = sorted((site_a, site_b))
        return cls(federation_id, round_number, low, high)

    def to_bytes(self) -> bytes:
        """Canonical, injective encoding used as HKDF ``info`` suffix and AEAD associated data."""
        return b"".join((
            _MAGIC,
            _field("federation_id", self.federation_id),
            struct.pack(">Q", self.round),
            _field("sender", self.sender),
            _field("recipient", self.recipient),
        ))
