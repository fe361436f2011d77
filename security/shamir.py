"""Shamir t-of-n secret sharing of byte strings over GF(p), p = 2^521 - 1, with an embedded integrity tag.

``split`` appends a 16-byte tag ``SHA-256("pfmh-shamir-v1" || len || secret)[:16]`` to the secret, cuts the
result into 64-byte chunks (each < 2^512 < p) and shares every chunk with its own random polynomial of degree
t - 1 (coefficients uniform in GF(p) by rejection sampling). Share ``i`` holds ``f_c(i)`` for each chunk c.
``combine`` interpolates at 0 from exactly t shares (Lagrange) and checks the tag.

Tamper behaviour: a modified share among the t used changes the reconstructed payload by an offset the
tamperer cannot steer without knowing the secret, so the tag check fails and :class:`ShareInvalid` is raised
(forgery probability about 2^-128). Extra shares beyond the first t (lowest indices) are not used.
Fewer than t shares: refused with ``ShareInvalid``; information-theoretically they reveal nothing about
the secret, tag included.

References:
    A. Shamir, "How to share a secret", CACM 22(11), 1979.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from security.errors import ShareInvalid

PRIME = 2**521 - 1
_CHUNK_BYTES = 64
_VALUE_BYTES = 66
_TAG_BYTES = 16
_MAX_INDEX = 0xFFFF
_HEADER = struct.Struct(">HI")


@dataclass(frozen=True, slots=True, repr=False)
class Share:
    """One holder's share: x-coordinate ``index`` (1..65535), the secret length and one value per chunk."""

    index: int
    secret_length: int
    values: tuple[int, ...]

    def __repr__(self) -> str:
        return f"Share(index={self.index}, secret_length={self.secret_length}, values=<hidden>)"

    def to_bytes(self) -> bytes:
        """``u16 index || u32 secret_length || 66-byte big-endian value per chunk``."""
        return _HEADER.pack(self.index, self.secret_length) + b"".join(
            v.to_bytes(_VALUE_BYTES, "big") for v in self.values)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Parse :meth:`to_bytes` output; raise ShareInvalid on a bad length, index or value."""
        if len(raw) < _HEADER.size:
            raise ShareInvalid(f"share of {len(raw)} bytes is shorter than its {_HEADER.size}-byte header")
        index, secret_length = _HEADER.unpack_from(raw)
        body = raw[_HEADER.size:]
        chunks = _chunk_count(secret_length)
        if len(body) != chunks * _VALUE_BYTES:
            raise ShareInvalid(f"share body is {len(body)} bytes, expected {chunks * _VALUE_BYTES} "
                               f"for a {secret_length}-byte secret")
        values = tuple(int.from_bytes(body[i:i + _VALUE_BYTES], "big")
                       for i in range(0, len(body), _VALUE_BYTES))
        share = cls(index, secret_length, values)
        _check_share(share)
        return share


def _chunk_count(secret_length: int) -> int:
    return -(-(secret_length + _TAG_BYTES) // _CHUNK_BYTES)


def _check_share(share: Share) -> None:
    if not 1 <= share.index <= _MAX_INDEX:
        raise ShareInvalid(f"share index {share.index} outside [1, {_MAX_INDEX}]")
    bad_value = any(not 0 <= v < PRIME for v in share.values)
    if len(share.values) != _chunk_count(share.secret_length) or bad_value:
        raise ShareInvalid(f"share {share.index} has malformed values "
                           f"for a {share.secret_length}-byte secret")


def _tag(secret: bytes) -> bytes:
    return hashlib.sha256(b"pfmh-shamir-v1" + struct.pack(">I", len(secret)) + secret).digest()[:_TAG_BYTES]


def _random_element(rng_source: Callable[[int], bytes]) -> int:
    while True:  # rejection sampling: uniform in [0, p); rejects only p itself, probability 2^-521
        value = int.from_bytes(rng_source(_VALUE_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def split(secret: bytes, *, threshold: int, indices: Sequence[int],
          rng_source: Callable[[int], bytes] = os.urandom) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares recover it.

    Args:
        secret: bytes to share (may be empty; at most 2^32 - 17 bytes).
        threshold: t, with 2 <= t <= len(indices).
        indices: distinct x-coordinates in [1, 65535], one per holder; the shares come back in this order.
        rng_source: source of secret randomness (``os.urandom``).

    Raises:
        ShareInvalid: bad threshold, duplicate or out-of-range indices.
    """
    if len(set(indices)) != len(indices) or any(not 1 <= i <= _MAX_INDEX for i in indices):
        raise ShareInvalid(f"indices must be distinct and in [1, {_MAX_INDEX}], got {list(indices)[:8]}...")
    if not 2 <= threshold <= len(indices):
        raise ShareInvalid(f"threshold={threshold} must be in [2, {len(indices)}] (number of holders)")
    payload = secret + _tag(secret)
    payload += bytes(-len(payload) % _CHUNK_BYTES)
    polys = [[int.from_bytes(payload[c:c + _CHUNK_BYTES], "big")] +
             [_random_element(rng_source) for _ in range(threshold - 1)]
             for c in range(0, len(payload), _CHUNK_BYTES)]
    return [Share(x, len(secret), tuple(_evaluate(poly, x) for poly in polys)) for x in indices]


def _evaluate(poly: list[int], x: int) -> int:
    """Horner's rule, reducing mod p only every 16 steps (x < 2^16 adds at most 16 bits per step)."""
    acc = 0
    for step, coeff in enumerate(reversed(poly), start=1):
        acc = acc * x + coeff
        if not step % 16:
            acc %= PRIME
    return acc % PRIME


def lagrange_at_zero(indices: Sequence[int]) -> tuple[int, ...]:
    """Lagrange basis values L_i(0) mod p for the x-coordinates ``indices`` (distinct, non-zero)."""
    coeffs = []
    for i in indices:
        num, den = 1, 1
        for j in indices:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        coeffs.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(coeffs)


def combine(shares: Sequence[Share], *, threshold: int,
            coefficients: Sequence[int] | None = None) -> bytes:
    """Recover the secret from at least ``threshold`` shares (the ``threshold`` lowest indices are used).

    Args:
        shares: shares of one secret from distinct holders.
        threshold: t used at split time.
        coefficients: optional ``lagrange_at_zero`` of the t lowest indices, to reuse across secrets.

    Raises:
        ShareInvalid: too few shares, duplicate indices, mismatched lengths, or a failed integrity tag.
    """
    if threshold < 2 or len(shares) < threshold:
        raise ShareInvalid(f"{len(shares)} shares < threshold {threshold}; wait for more holders or abort")
    for share in shares:
        _check_share(share)
    if len({s.index for s in shares}) != len(shares):
        raise ShareInvalid("duplicate share indices; each holder may contribute one share")
    if len({s.secret_length for s in shares}) != 1:
        raise ShareInvalid("shares disagree on the secret length; they belong to different secrets")
    used = sorted(shares, key=lambda s: s.index)[:threshold]
    lam = lagrange_at_zero([s.index for s in used]) if coefficients is None else tuple(coefficients)
    if len(lam) != threshold:
        raise ShareInvalid(f"{len(lam)} coefficients given for threshold {threshold}")
    chunks = []
    for c in range(len(used[0].values)):
        value = sum(lam_i * s.values[c] for lam_i, s in zip(lam, used, strict=True)) % PRIME
        if value >> (8 * _CHUNK_BYTES):
            raise ShareInvalid(f"reconstructed chunk exceeds {_CHUNK_BYTES} bytes: a share among indices "
                               f"{[s.index for s in used]} was tampered with or belongs to another secret")
        chunks.append(value.to_bytes(_CHUNK_BYTES, "big"))
    payload = b"".join(chunks)
    length = used[0].secret_length
    secret, tag = payload[:length], payload[length:length + _TAG_BYTES]
    if not hmac.compare_digest(tag, _tag(secret)) or any(payload[length + _TAG_BYTES:]):
        raise ShareInvalid(f"reconstructed secret fails its integrity tag: a share among indices "
                           f"{[s.index for s in used]} was tampered with or belongs to another secret")
    return secret
