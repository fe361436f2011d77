"""Typed, immutable messages of one secure-aggregation round (fields are str, int, bytes and tuples of them).

A gRPC layer maps each field one-to-one to protobuf. The authenticated sender comes from the peer's TLS
certificate and is passed to the server next to the message; ``site_id``/``sender`` fields inside a message
are only checked against it (and are what signatures and associated data bind to).

Shape:
    MaskedInput.data: vector_length * 8 bytes, little-endian uint64 (the masked fixed-point vector).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from security.context import BROADCAST, SessionContext
from security.errors import InvalidMessage

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
MAX_SHARE_CIPHERTEXT_BYTES = 4096


def _check_header(federation_id: object, round_number: object, *sites: object) -> None:
    if not isinstance(federation_id, str) or not federation_id:
        raise InvalidMessage(f"federation_id={federation_id!r} must be a non-empty string")
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
        raise InvalidMessage(f"round={round_number!r} must be an int >= 0")
    for site in sites:
        if not isinstance(site, str) or not site:
            raise InvalidMessage(f"site id {site!r} must be a non-empty string")


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        got = len(value) if isinstance(value, bytes) else type(value).__name__
        raise InvalidMessage(f"{name} must be {size} bytes, got {got}")


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Phase 2: a site's two fresh X25519 public keys, signed with its certified Ed25519 key."""

    federation_id: str
    round: int
    site_id: str
    share_public_key: bytes
    mask_public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_header(self.federation_id, self.round, self.site_id)
        _check_bytes("share_public_key", self.share_public_key, PUBLIC_KEY_BYTES)
        _check_bytes("mask_public_key", self.mask_public_key, PUBLIC_KEY_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    def context(self) -> SessionContext:
        """The broadcast context the signature binds: (federation, round, site, "*")."""
        return SessionContext(self.federation_id, self.round, self.site_id, BROADCAST)


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """Phase 2 relay: advertisements the coordinator accepted, sorted by site id.

    Either every advertisement (``site_ids`` empty), or, for one recipient in SecAgg+, only its own and its
    graph neighbours' advertisements plus ``site_ids``, the ids of every site that advertised (from which
    the recipient recomputes the public graph). The second form costs O(k + n) bytes instead of O(n * 160).
    """

    federation_id: str
    round: int
    advertisements: tuple[AdvertiseKeys, ...]
    site_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_header(self.federation_id, self.round, *self.site_ids)
        if not isinstance(self.advertisements, tuple) or \
                not all(isinstance(a, AdvertiseKeys) for a in self.advertisements):
            raise InvalidMessage("advertisements must be a tuple of AdvertiseKeys")
        if not isinstance(self.site_ids, tuple):
            raise InvalidMessage("site_ids must be a tuple of site ids")


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """Phase 3: the sender's mask-key share and self-seed share for one recipient, sealed with AES-GCM."""

    federation_id: str
    round: int
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_header(self.federation_id, self.round, self.sender, self.recipient)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)
        size = len(self.ciphertext) if isinstance(self.ciphertext, bytes) else -1
        if not 16 <= size <= MAX_SHARE_CIPHERTEXT_BYTES:
            raise InvalidMessage(f"share ciphertext must be 16..{MAX_SHARE_CIPHERTEXT_BYTES} bytes")

    def context(self) -> SessionContext:
        """The (federation, round, sender, recipient) bound into the key and associated data."""
        return SessionContext(self.federation_id, self.round, self.sender, self.recipient)


@dataclass(frozen=True, slots=True, repr=False)
class MaskedInput:
    """Phase 4: one site's masked fixed-point vector (reveals nothing without the masks)."""

    federation_id: str
    round: int
    site_id: str
    data: bytes

    def __post_init__(self) -> None:
        _check_header(self.federation_id, self.round, self.site_id)
        if not isinstance(self.data, bytes) or len(self.data) % 8:
            raise InvalidMessage("masked data must be bytes holding little-endian uint64 values")

    def __repr__(self) -> str:
        return (f"MaskedInput({self.federation_id!r}, round={self.round}, {self.site_id!r}, "
                f"{len(self.data)} bytes)")

    @classmethod
    def from_vector(cls, federation_id: str, round_number: int, site_id: str,
                    vector: npt.NDArray[np.uint64]) -> MaskedInput:
        """Build from a masked uint64 vector (copied into little-endian bytes)."""
        return cls(federation_id, round_number, site_id, np.asarray(vector, dtype="<u8").tobytes())

    @property
    def vector_length(self) -> int:
        """Number of uint64 values."""
        return len(self.data) // 8

    def vector(self) -> npt.NDArray[np.uint64]:
        """Read-only uint64 view of ``data`` (no copy)."""
        return np.frombuffer(self.data, dtype="<u8").astype(np.uint64, copy=False)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Phase 5: who survived (send their self-seed shares) and who dropped (send their mask-key shares)."""

    federation_id: str
    round: int
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.survivors, tuple) or not isinstance(self.dropouts, tuple):
            raise InvalidMessage("survivors and dropouts must be tuples of site ids")
        _check_header(self.federation_id, self.round, *self.survivors, *self.dropouts)


@dataclass(frozen=True, slots=True, repr=False)
class RevealedShare:
    """One Shamir share (``shamir.Share.to_bytes``) of ``owner``'s secret."""

    owner: str
    share: bytes

    def __post_init__(self) -> None:
        _check_header("x", 0, self.owner)
        if not isinstance(self.share, bytes):
            raise InvalidMessage("share must be bytes")

    def __repr__(self) -> str:
        return f"RevealedShare(owner={self.owner!r}, share=<{len(self.share)} bytes>)"


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Phase 5 answer: survivors' self-seed shares and dropouts' mask-key shares, never both for a site."""

    federation_id: str
    round: int
    site_id: str
    self_seed_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]

    def __post_init__(self) -> None:
        _check_header(self.federation_id, self.round, self.site_id)
        for name in ("self_seed_shares", "mask_key_shares"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(s, RevealedShare) for s in value):
                raise InvalidMessage(f"{name} must be a tuple of RevealedShare")


def pack_share_pair(mask_key_share: bytes, self_seed_share: bytes) -> bytes:
    """Plaintext of an EncryptedShare: ``u32be(len(a)) || a || b``."""
    return len(mask_key_share).to_bytes(4, "big") + mask_key_share + self_seed_share


def unpack_share_pair(plaintext: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`pack_share_pair`; raise InvalidMessage on a malformed plaintext."""
    if len(plaintext) < 4 or int.from_bytes(plaintext[:4], "big") > len(plaintext) - 4:
        raise InvalidMessage("decrypted share pair is malformed")
    split_at = 4 + int.from_bytes(plaintext[:4], "big")
    return plaintext[4:split_at], plaintext[split_at:]
