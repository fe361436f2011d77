"""Binary hash codes packed into uint64 words: the binarisation rule, packing, unpacking and checks.

Binarisation rule (bit 1 is the +1 code, bit 0 the -1 code), by dtype:

- float (continuous or +-1 codes): bit = ``x >= 0``, i.e. the sign with sign(0) = +1, the same rule as
  ``network.binarize``; NaN is refused.
- signed integers (+-1 codes such as int8): bit = ``x > 0``; a 0 is refused as ambiguous.
- bool and unsigned integers ({0, 1} bit arrays): bit = ``x != 0``.

Bit layout: bit ``j`` of a code sits in word ``j // 64`` at bit position ``j % 64`` (least significant
bit first). Pad bits (positions ``bits .. 64 * words - 1``) are 0 in every row, so they never add to a
Hamming distance.
"""
from __future__ import annotations

import numpy as np

from pfmh_model.errors import DataError

WORD_BITS = 64
_MAX_WORDS = 1023            # distances up to 65,472 bits fit the uint16 distance blocks


def words_for(bits: int) -> int:
    """Number of uint64 words that hold ``bits`` bits (``ceil(bits / 64)``)."""
    return -(-bits // WORD_BITS)


def binarize_codes(codes: np.ndarray) -> np.ndarray:
    """Bits of ``codes`` by the module's rule (float: ``x >= 0``; signed: ``x > 0``; bool/unsigned: ``x != 0``).

    Shape:
        - codes: (n, bits) bool, integer or float
        - output: (n, bits) bool

    Raises:
        DataError: codes are not 2-D, not numeric, contain NaN, or are signed integers with a 0.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"codes must be 2-D (n, bits), got shape {codes.shape}; reshape to (n, bits)")
    if codes.dtype == np.bool_ or np.issubdtype(codes.dtype, np.unsignedinteger):
        return codes != 0
    if np.issubdtype(codes.dtype, np.signedinteger):
        if (codes == 0).any():
            raise DataError(f"signed integer codes must be +-1, found {int((codes == 0).sum())} zeros; pass "
                            "{0, 1} bits as bool or unsigned, or real-valued codes as float")
        return codes > 0
    if not np.issubdtype(codes.dtype, np.floating):
        raise DataError(f"codes must be bool, integer or float, got dtype {codes.dtype}")
    if np.isnan(codes).any():
        raise DataError(f"codes contain {int(np.isnan(codes).sum())} NaN values; a NaN has no sign")
    return codes >= 0


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack binary codes into uint64 words (see the module docstring for the rule and bit order).

    Shape:
        - codes: (n, bits) bool, +-1 integers or real values
        - output: (n, ceil(bits / 64)) uint64, pad bits 0

    Raises:
        DataError: codes are not 2-D, have no columns, are not numeric, or contain NaN.
    """
    bits_of = binarize_codes(codes)
    n, bits = bits_of.shape
    if bits == 0:
        raise DataError("codes have 0 bits (shape (n, 0)); a hash code needs at least 1 bit")
    words = words_for(bits)
    padded = np.zeros((n, words * WORD_BITS), dtype=np.bool_)
    padded[:, :bits] = bits_of
    packed_bytes = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed_bytes).view("<u8").astype(np.uint64, copy=False)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: +-1 codes from packed words.

    Shape:
        - packed: (n, ceil(bits / 64)) uint64
        - output: (n, bits) int8 with entries +1 / -1

    Raises:
        DataError: packed has the wrong dtype or width for ``bits``.
    """
    packed = check_packed(packed, "packed")
    if bits < 1 or packed.shape[1] != words_for(bits):
        raise DataError(f"packed has {packed.shape[1]} words but {bits} bits need {words_for(max(bits, 1))}; "
                        "pass the bit length used with pack_codes")
    as_bytes = np.ascontiguousarray(packed.astype("<u8", copy=False)).view(np.uint8)
    unpacked = np.unpackbits(as_bytes, axis=1, count=bits, bitorder="little")
    return (unpacked.astype(np.int8) * 2 - 1).astype(np.int8)


def check_packed(packed: np.ndarray, name: str) -> np.ndarray:
    """``packed`` as a 2-D uint64 array with at least one word per row, or a DataError naming ``name``."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint64 or not 1 <= packed.shape[1] <= _MAX_WORDS:
        raise DataError(f"{name} must be a 2-D uint64 array from pack_codes with 1..{_MAX_WORDS} words "
                        f"per code, got dtype {packed.dtype} shape {packed.shape}")
    return packed
