"""X25519 + HKDF: both ends agree, context and purpose separation, low-order points, hidden reprs."""
from __future__ import annotations

import pytest

from security import share_encryption
from security.context import SessionContext
from security.errors import DecryptionFailed, KeyFormatError
from security.key_agreement import (
    AgreementPrivateKey,
    AgreementPublicKey,
    derive_mask_seed,
    derive_share_key,
)


def test_both_ends_derive_the_same_share_key() -> None:
    # Prepare
    a, b = AgreementPrivateKey.generate(), AgreementPrivateKey.generate()
    ctx = SessionContext("fed", 4, "site-a", "site-b")
    # Execute
    key_a = derive_share_key(private_key=a, peer_public_key=b.public_key(), context=ctx)
    key_b = derive_share_key(private_key=b, peer_public_key=a.public_key(), context=ctx)
    sealed = share_encryption.seal(key=key_a, plaintext=b"share", context=ctx)
    # Assert
    assert share_encryption.open(key=key_b, ciphertext=sealed, context=ctx) == b"share"


def test_mask_seeds_agree_and_depend_on_context() -> None:
    # Prepare
    a, b = AgreementPrivateKey.generate(), AgreementPrivateKey.generate()
    ctx = SessionContext.pair("fed", 4, "site-a", "site-b")
    # Execute
    seed_ab = derive_mask_seed(private_key=a, peer_public_key=b.public_key(), context=ctx)
    seed_ba = derive_mask_seed(private_key=b, peer_public_key=a.public_key(), context=ctx)
    other_round = derive_mask_seed(private_key=a, peer_public_key=b.public_key(),
                                   context=SessionContext.pair("fed", 5, "site-a", "site-b"))
    other_fed = derive_mask_seed(private_key=a, peer_public_key=b.public_key(),
                                 context=SessionContext.pair("fed2", 4, "site-a", "site-b"))
    # Assert
    assert seed_ab == seed_ba
    assert seed_ab != other_round and seed_ab != other_fed


def test_share_key_and_mask_seed_are_separated_by_purpose() -> None:
    # Prepare: use the mask seed bytes as an AES key; they must not open a share sealed with the share key
    a, b = AgreementPrivateKey.generate(), AgreementPrivateKey.generate()
    ctx = SessionContext("fed", 1, "a", "b")
    key = derive_share_key(private_key=a, peer_public_key=b.public_key(), context=ctx)
    seed = derive_mask_seed(private_key=a, peer_public_key=b.public_key(), context=ctx)
    sealed = share_encryption.seal(key=key, plaintext=b"x", context=ctx)
    # Execute / Assert
    with pytest.raises(DecryptionFailed):
        share_encryption.open(key=share_encryption.ShareKey(seed.export_secret_bytes()), ciphertext=sealed,
                              context=ctx)


def test_private_key_round_trips_through_secret_bytes() -> None:
    # Prepare
    key = AgreementPrivateKey.generate()
    # Execute
    again = AgreementPrivateKey.from_secret_bytes(key.export_secret_bytes())
    # Assert
    assert again.public_key() == key.public_key()
    assert AgreementPublicKey.from_bytes(key.public_key().to_bytes()) == key.public_key()


def test_low_order_point_and_bad_lengths_are_rejected() -> None:
    # Prepare
    key = AgreementPrivateKey.generate()
    zero_point = AgreementPublicKey.from_bytes(bytes(32))
    # Execute / Assert
    with pytest.raises(KeyFormatError, match="low-order"):
        derive_mask_seed(private_key=key, peer_public_key=zero_point, context=SessionContext("f", 1, "a", "b"))
    with pytest.raises(KeyFormatError):
        AgreementPublicKey.from_bytes(b"\x01" * 31)
    with pytest.raises(KeyFormatError):
        AgreementPrivateKey.from_secret_bytes(b"\x01" * 33)


def test_reprs_hide_secrets() -> None:
    # Prepare
    key = AgreementPrivateKey.generate()
    ctx = SessionContext("f", 1, "a", "b")
    share_key = derive_share_key(private_key=key, peer_public_key=key.public_key(), context=ctx)
    # Execute / Assert
    assert key.export_secret_bytes().hex() not in repr(key) and "secret" in repr(key)
    assert "secret" in repr(share_key)
