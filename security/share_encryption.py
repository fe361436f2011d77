"""Authenticated encryption of secret shares between two sites (AES-256-GCM, random 96-bit nonce).

``seal``/``open`` take a :class:`ShareKey` (derived by ``key_agreement.derive_share_key`` from X25519 + HKDF
bound to the same :class:`SessionContext`) and always bind ``context.to_bytes()`` as associated data, so a
ciphertext moved to another round, federation, sender or recipient fails to open.

Security:
    Nonces are 12 bytes from ``rng_source`` (``os.urandom``); with one key per (round, sender, recipient)
    and a handful of messages per key, the random-nonce collision bound (2^-96 per pair) is negligible.
    The coordinator relays ciphertexts and learns only their lengths.

References:
    NIST SP 800-38D (GCM); RFC 5116 (AEAD interface).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from security.context import SessionContext
from security.errors import DecryptionFailed, KeyFormatError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class ShareKey:
    """A 32-byte AES-256-GCM key for one (federation, round, sender, recipient). Its repr hides the bytes."""

    __slots__ = ("_aead",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise KeyFormatError(f"share key must be {KEY_BYTES} bytes; derive it with derive_share_key")
        self._aead = AESGCM(raw)

    def __repr__(self) -> str:
        return "ShareKey(<secret>)"


@dataclass(frozen=True, slots=True)
class Ciphertext:
    """A sealed message: the 12-byte nonce and the ciphertext with its 16-byte GCM tag appended."""

    nonce: bytes
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise DecryptionFailed(f"nonce must be {NONCE_BYTES} bytes")
        if not isinstance(self.data, bytes) or len(self.data) < TAG_BYTES:
            raise DecryptionFailed(f"ciphertext must be bytes of at least {TAG_BYTES} (the GCM tag)")


def seal(*, key: ShareKey, plaintext: bytes, context: SessionContext,
         rng_source: Callable[[int], bytes] = os.urandom) -> Ciphertext:
    """Encrypt and authenticate ``plaintext`` under ``key`` with ``context`` as associated data."""
    nonce = rng_source(NONCE_BYTES)
    return Ciphertext(nonce, key._aead.encrypt(nonce, plaintext, context.to_bytes()))


def open(*, key: ShareKey, ciphertext: Ciphertext, context: SessionContext) -> bytes:
    """Decrypt ``ciphertext``; raise DecryptionFailed if tampered with or made for another key/context.

    Named after the verb pair seal/open; call it module-qualified (``share_encryption.open``).
    """
    try:
        return key._aead.decrypt(ciphertext.nonce, ciphertext.data, context.to_bytes())
    except InvalidTag as exc:
        raise DecryptionFailed(
            f"share ciphertext from {context.sender!r} to {context.recipient!r} in round {context.round} "
            f"failed authentication (tampered, wrong key or wrong context); drop it and treat the sender as "
            f"dropped") from exc
