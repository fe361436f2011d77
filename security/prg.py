"""Cryptographic PRG: expand a 32-byte seed into uniform uint64 masks with a ``cryptography`` stream cipher.

The keystream of ChaCha20 (default) or AES-256-CTR under key = seed and an all-zero nonce/counter block is
written with ``update_into`` over a zero buffer straight into a reused uint64 array, so each 8 keystream bytes
are one uniform element of Z_2^64 (little-endian). Nothing here uses ``numpy.random`` or ``random``.

Security:
    The nonce is fixed, which is safe only because every seed keys exactly one stream: pairwise and self-mask
    seeds are derived or drawn fresh per round and per pair (HKDF bound to federation, round and both ids, or
    ``os.urandom``). Never expand one seed for two different purposes. ChaCha20's 32-bit block counter limits
    one stream to 2^32 * 64 bytes = 256 GiB, i.e. 3.4e10 values. AES-256-CTR is the faster choice on CPUs
    with AES-NI; both are standard PRFs under their usual assumptions.

References:
    RFC 8439 (ChaCha20); NIST SP 800-38A (CTR mode); Bonawitz et al., CCS 2017, Sec. 4 (PRG-expanded masks).
"""
from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from security.errors import InvalidMessage, KeyFormatError

SEED_BYTES = 32
DEFAULT_BLOCK_VALUES = 1 << 16
"""Values per cache block (512 KiB): keystream and target slice stay in L2 while all streams are added."""
MAX_STREAM_VALUES = (2**32 * 64) // 8
_ZERO_NONCE = bytes(16)


class PrgAlgorithm(enum.StrEnum):
    """Stream cipher used as PRG. Both sides of a round must use the same one (it is part of SecAggConfig)."""

    CHACHA20 = "chacha20"
    AES256_CTR = "aes256-ctr"


class MaskSeed:
    """A 32-byte PRG seed (self-mask seed or pairwise seed). Its repr never shows the bytes."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != SEED_BYTES:
            size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
            raise KeyFormatError(f"mask seed must be {SEED_BYTES} bytes, got {size}")
        self._raw = raw

    @classmethod
    def generate(cls, rng_source: Callable[[int], bytes] = os.urandom) -> MaskSeed:
        """Draw a fresh seed from ``rng_source`` (``os.urandom`` unless a test injects another)."""
        return cls(rng_source(SEED_BYTES))

    def export_secret_bytes(self) -> bytes:
        """The raw seed, for Shamir sharing only; callers must never log or persist it unsealed."""
        return self._raw

    def __repr__(self) -> str:
        return "MaskSeed(<secret>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskSeed) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((MaskSeed, self._raw))


def _stream(seed: MaskSeed, algorithm: PrgAlgorithm) -> CipherContext:
    key = seed.export_secret_bytes()
    if algorithm is PrgAlgorithm.CHACHA20:
        return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()


def add_streams(target: npt.NDArray[np.uint64], terms: Sequence[tuple[MaskSeed, int]], *,
                algorithm: PrgAlgorithm = PrgAlgorithm.CHACHA20,
                block_values: int = DEFAULT_BLOCK_VALUES) -> None:
    """In place: ``target += sum(sign * PRG(seed) for seed, sign in terms)  (mod 2^64)``.

    Works block by block (all streams advance together), so the keystream buffer and the target slice stay
    in cache; memory traffic is one pass over ``target`` whatever the number of terms.

    Shape:
        target: (d,) uint64, C-contiguous, modified in place.

    Raises:
        InvalidMessage: ``target`` is not a contiguous 1-D uint64 array, a sign is not +-1, or d too long.
    """
    if not isinstance(target, np.ndarray) or target.dtype != np.uint64 or target.ndim != 1 \
            or not target.flags.c_contiguous or not target.flags.writeable:
        raise InvalidMessage("add_streams needs a writeable C-contiguous 1-D uint64 array")
    if target.size > MAX_STREAM_VALUES:
        raise InvalidMessage(f"vector of {target.size} values > {MAX_STREAM_VALUES} per PRG stream")
    if any(sign not in (1, -1) for _, sign in terms):
        raise InvalidMessage("every mask term needs sign +1 or -1")
    if block_values < 1:
        raise InvalidMessage(f"block_values={block_values} must be >= 1")
    streams = [(_stream(seed, algorithm), sign) for seed, sign in terms]
    if not streams or target.size == 0:
        return
    width = min(block_values, target.size)
    zeros = memoryview(bytearray(width * 8))
    key_block = np.empty(width, dtype=np.uint64)
    key_bytes = key_block.data.cast("B")
    for start in range(0, target.size, width):
        chunk = target[start:start + width]
        n = chunk.size
        keys = key_block if n == width else key_block[:n]
        for stream, sign in streams:
            stream.update_into(zeros[:n * 8], key_bytes)
            if sign > 0:
                np.add(chunk, keys, out=chunk)
            else:
                np.subtract(chunk, keys, out=chunk)


def expand(seed: MaskSeed, length: int, *,
           algorithm: PrgAlgorithm = PrgAlgorithm.CHACHA20) -> npt.NDArray[np.uint64]:
    """Return PRG(seed) as a new (length,) uint64 array (for tests and one-off use)."""
    if length < 0:
        raise InvalidMessage(f"length={length} must be >= 0")
    out = np.zeros(length, dtype=np.uint64)
    add_streams(out, [(seed, 1)], algorithm=algorithm)
    return out
