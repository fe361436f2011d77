"""AES-GCM share sealing: round trip, tampering, wrong key, every context field bound, fresh nonces."""
from __future__ import annotations

import dataclasses
import os

import pytest

from security import share_encryption
from security.context import SessionContext
from security.errors import DecryptionFailed, KeyFormatError
from security.share_encryption import Ciphertext, ShareKey

CTX = SessionContext("fed", 7, "site-a", "site-b")


def test_round_trip_and_fresh_nonces() -> None:
    # Prepare
    key = ShareKey(os.urandom(32))
    # Execute
    one = share_encryption.seal(key=key, plaintext=b"secret share", context=CTX)
    two = share_encryption.seal(key=key, plaintext=b"secret share", context=CTX)
    # Assert
    assert share_encryption.open(key=key, ciphertext=one, context=CTX) == b"secret share"
    assert one.nonce != two.nonce and one.data != two.data


@pytest.mark.parametrize("field", ["federation_id", "round", "sender", "recipient"])
def test_every_context_field_is_bound(field: str) -> None:
    # Prepare
    key = ShareKey(os.urandom(32))
    sealed = share_encryption.seal(key=key, plaintext=b"x", context=CTX)
    other = dataclasses.replace(CTX, **{field: 8 if field == "round" else "other"})
    # Execute / Assert
    with pytest.raises(DecryptionFailed, match="failed authentication"):
        share_encryption.open(key=key, ciphertext=sealed, context=other)


def test_tampered_ciphertext_nonce_or_wrong_key_fail() -> None:
    # Prepare
    key = ShareKey(os.urandom(32))
    sealed = share_encryption.seal(key=key, plaintext=b"abc", context=CTX)
    flipped = bytes([sealed.data[0] ^ 1]) + sealed.data[1:]
    # Execute / Assert
    for bad_key, bad in [(key, Ciphertext(sealed.nonce, flipped)),
                         (key, Ciphertext(bytes(12), sealed.data)),
                         (ShareKey(os.urandom(32)), sealed)]:
        with pytest.raises(DecryptionFailed):
            share_encryption.open(key=bad_key, ciphertext=bad, context=CTX)


def test_malformed_inputs_raise() -> None:
    # Execute / Assert
    with pytest.raises(KeyFormatError):
        ShareKey(b"k" * 16)
    with pytest.raises(DecryptionFailed):
        Ciphertext(b"n" * 11, b"d" * 16)
    with pytest.raises(DecryptionFailed):
        Ciphertext(b"n" * 12, b"d" * 15)
