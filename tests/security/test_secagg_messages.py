"""Protocol messages: validation, vector round trip, share-pair packing, reprs without payloads."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from security.errors import InvalidMessage
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    UnmaskRequest,
    UnmaskResponse,
    pack_share_pair,
    unpack_share_pair,
)


def test_masked_input_round_trips_a_uint64_vector() -> None:
    # Prepare
    vector = np.array([0, 1, 2**64 - 1, 12345], dtype=np.uint64)
    # Execute
    message = MaskedInput.from_vector("fed", 2, "site-a", vector)
    # Assert
    np.testing.assert_array_equal(message.vector(), vector)
    assert message.vector_length == 4 and len(message.data) == 32
    assert "32 bytes" in repr(message) and str(2**64 - 1) not in repr(message)


def test_messages_are_frozen_and_validated() -> None:
    # Prepare
    adv = AdvertiseKeys("fed", 1, "a", b"c" * 32, b"s" * 32, b"g" * 64)
    # Execute / Assert
    with pytest.raises(dataclasses.FrozenInstanceError):
        adv.round = 2  # type: ignore[misc]
    bad = [
        lambda: AdvertiseKeys("fed", 1, "a", b"c" * 31, b"s" * 32, b"g" * 64),
        lambda: AdvertiseKeys("fed", -1, "a", b"c" * 32, b"s" * 32, b"g" * 64),
        lambda: AdvertiseKeys("", 1, "a", b"c" * 32, b"s" * 32, b"g" * 64),
        lambda: AdvertiseKeys("fed", 1, "a", b"c" * 32, b"s" * 32, b"g" * 63),
        lambda: KeyDirectory("fed", 1, [adv]),  # type: ignore[arg-type]
        lambda: EncryptedShare("fed", 1, "a", "b", b"n" * 12, b"x" * 15),
        lambda: EncryptedShare("fed", 1, "a", "", b"n" * 12, b"x" * 16),
        lambda: MaskedInput("fed", 1, "a", b"x" * 7),
        lambda: UnmaskRequest("fed", 1, ["a"], ()),  # type: ignore[arg-type]
        lambda: UnmaskResponse("fed", 1, "a", (b"x",), ()),  # type: ignore[arg-type]
        lambda: RevealedShare("", b"x"),
    ]
    for make in bad:
        with pytest.raises(InvalidMessage):
            make()


def test_share_pair_packing() -> None:
    # Prepare
    a, b = b"mask-key-share", b"self-seed-share"
    # Execute
    packed = pack_share_pair(a, b)
    # Assert
    assert unpack_share_pair(packed) == (a, b)
    with pytest.raises(InvalidMessage):
        unpack_share_pair(b"\x00\x00\x01\x00abc")


def test_revealed_share_repr_hides_the_share() -> None:
    # Execute / Assert
    assert "secretbytes" not in repr(RevealedShare("a", b"secretbytes"))
