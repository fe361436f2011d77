"""X25519 key agreement with HKDF-SHA256 key derivation bound to a :class:`SessionContext`.

Two purposes, separated by the HKDF ``info`` label, derive from one X25519 shared secret ``Z``::

    share key  = HKDF(Z, salt=SALT, info="pfmh-secagg-v1/share-key\\0"  || ctx.to_bytes(), 32 bytes)
    mask seed  = HKDF(Z, salt=SALT, info="pfmh-secagg-v1/mask-seed\\0"  || ctx.to_bytes(), 32 bytes)

For share encryption ``ctx = (federation, round, sender, recipient)`` (direction-specific key); for pairwise
masks ``ctx = SessionContext.pair(...)`` so both ends derive the same seed.

Security:
    Private keys are drawn from ``rng_source`` (``os.urandom``) and are fresh per round; they leave this
    module only via :meth:`AgreementPrivateKey.export_secret_bytes` for Shamir sharing. A peer key that
    yields an all-zero shared secret (low-order point) is rejected.

References:
    RFC 7748 (X25519); RFC 5869 (HKDF); Bonawitz et al., CCS 2017, Sec. 3 (key agreement, pairwise masks).
"""
from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from security.context import SessionContext
from security.errors import KeyFormatError
from security.prg import MaskSeed
from security.share_encryption import ShareKey

KEY_BYTES = 32
SALT = b"pfmh-federation secure aggregation v1"
_SHARE_LABEL = b"pfmh-secagg-v1/share-key\x00"
_MASK_LABEL = b"pfmh-secagg-v1/mask-seed\x00"


class AgreementPublicKey:
    """An X25519 public key (32 raw bytes)."""

    __slots__ = ("_key",)

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> AgreementPublicKey:
        """Load 32 raw bytes; raise KeyFormatError on a wrong length."""
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise KeyFormatError(f"X25519 public key must be {KEY_BYTES} raw bytes")
        return cls(X25519PublicKey.from_public_bytes(raw))

    def to_bytes(self) -> bytes:
        """The 32 raw bytes (what AdvertiseKeys carries and the site signs)."""
        return self._key.public_bytes_raw()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgreementPublicKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"AgreementPublicKey({self.to_bytes().hex()[:16]}...)"


class AgreementPrivateKey:
    """An X25519 private key. Its repr hides the key."""

    __slots__ = ("_key",)

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls, rng_source: Callable[[int], bytes] = os.urandom) -> AgreementPrivateKey:
        """A fresh key from ``rng_source`` (32 bytes, clamped by X25519 itself)."""
        return cls.from_secret_bytes(rng_source(KEY_BYTES))

    @classmethod
    def from_secret_bytes(cls, raw: bytes) -> AgreementPrivateKey:
        """Load 32 raw bytes (e.g. reconstructed from Shamir shares)."""
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise KeyFormatError(f"X25519 private key must be {KEY_BYTES} raw bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def export_secret_bytes(self) -> bytes:
        """The raw private key, for Shamir sharing only; never log or persist it unsealed."""
        return self._key.private_bytes_raw()

    def public_key(self) -> AgreementPublicKey:
        """The matching public key."""
        return AgreementPublicKey(self._key.public_key())

    def __repr__(self) -> str:
        return "AgreementPrivateKey(<secret>)"


def _derive(private_key: AgreementPrivateKey, peer_public_key: AgreementPublicKey, label: bytes,
            context: SessionContext) -> bytes:
    try:
        shared = private_key._key.exchange(peer_public_key._key)
    except ValueError as exc:  # all-zero output: low-order peer point
        raise KeyFormatError(f"peer X25519 key of {context.recipient!r}/{context.sender!r} is a low-order "
                             f"point; reject that advertisement") from exc
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=SALT, info=label + context.to_bytes())
    return hkdf.derive(shared)


def derive_share_key(*, private_key: AgreementPrivateKey, peer_public_key: AgreementPublicKey,
                     context: SessionContext) -> ShareKey:
    """AES-GCM key for shares sent from ``context.sender`` to ``context.recipient`` (same on both ends)."""
    return ShareKey(_derive(private_key, peer_public_key, _SHARE_LABEL, context))


def derive_mask_seed(*, private_key: AgreementPrivateKey, peer_public_key: AgreementPublicKey,
                     context: SessionContext) -> MaskSeed:
    """Pairwise mask seed; build ``context`` with :meth:`SessionContext.pair` so both ends agree."""
    return MaskSeed(_derive(private_key, peer_public_key, _MASK_LABEL, context))
