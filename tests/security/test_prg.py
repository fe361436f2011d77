"""PRG: ChaCha20/AES-CTR keystream as uint64, known answer, block independence, validation."""
from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from security.errors import InvalidMessage, KeyFormatError
from security.prg import MaskSeed, PrgAlgorithm, add_streams, expand


def test_chacha20_matches_rfc8439_test_vector() -> None:
    # Prepare: RFC 8439 A.1 test vector 1 (zero key, zero nonce, counter 0) starts 76 b8 e0 ad a0 f1 3d 90
    seed = MaskSeed(bytes(32))
    # Execute
    first = expand(seed, 2, algorithm=PrgAlgorithm.CHACHA20)
    # Assert
    assert int(first[0]) == int.from_bytes(bytes.fromhex("76b8e0ada0f13d90"), "little")


def test_aes_ctr_matches_cryptography_directly() -> None:
    # Prepare
    seed = MaskSeed(bytes(range(32)))
    stream = Cipher(algorithms.AES(bytes(range(32))), modes.CTR(bytes(16))).encryptor().update(bytes(80))
    # Execute
    out = expand(seed, 10, algorithm=PrgAlgorithm.AES256_CTR)
    # Assert
    assert out.tobytes() == stream


@settings(max_examples=20, deadline=None)
@given(length=st.integers(0, 3000), block=st.integers(1, 700), signs=st.lists(st.sampled_from([1, -1]), max_size=4))
def test_blocked_accumulation_equals_whole_streams(length: int, block: int, signs: list[int]) -> None:
    # Prepare
    seeds = [MaskSeed(bytes([i + 1]) * 32) for i in range(len(signs))]
    target = np.arange(length, dtype=np.uint64)
    expected = target.copy()
    for seed, sign in zip(seeds, signs, strict=True):
        stream = expand(seed, length)
        expected = expected + stream if sign > 0 else expected - stream
    # Execute
    add_streams(target, list(zip(seeds, signs, strict=True)), block_values=block)
    # Assert
    np.testing.assert_array_equal(target, expected)


def test_streams_are_seed_and_algorithm_specific_and_cover_the_full_range() -> None:
    # Prepare
    a, b = MaskSeed(b"a" * 32), MaskSeed(b"b" * 32)
    # Execute
    xa, xb = expand(a, 100_000), expand(b, 100_000)
    xa_aes = expand(a, 100_000, algorithm=PrgAlgorithm.AES256_CTR)
    # Assert: different streams; top values of Z_2^64 are reached (unlike a randint(0, 2^64 - 1) generator)
    assert not np.array_equal(xa, xb) and not np.array_equal(xa, xa_aes)
    assert np.array_equal(xa, expand(a, 100_000))
    assert int(xa.max()) > 2**64 - 2**50
    assert 0.49 < float(np.mean(xa >> np.uint64(63))) < 0.51


def test_invalid_inputs_raise() -> None:
    # Prepare
    seed = MaskSeed(bytes(32))
    # Execute / Assert
    with pytest.raises(KeyFormatError):
        MaskSeed(b"short")
    with pytest.raises(InvalidMessage):
        add_streams(np.zeros(4, dtype=np.int64), [(seed, 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        add_streams(np.zeros(8, dtype=np.uint64)[::2], [(seed, 1)])
    with pytest.raises(InvalidMessage, match="sign"):
        add_streams(np.zeros(4, dtype=np.uint64), [(seed, 2)])
    with pytest.raises(InvalidMessage):
        expand(seed, -1)


def test_seed_repr_hides_material() -> None:
    # Prepare
    seed = MaskSeed.generate()
    # Execute
    text = repr(seed)
    # Assert
    assert seed.export_secret_bytes().hex() not in text and "secret" in text
