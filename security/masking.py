"""Apply and remove secure-aggregation masks on uint64 fixed-point vectors (arithmetic mod 2^64).

Site ``u`` with encoded input ``x_u`` uploads::

    y_u = x_u + PRG(b_u) + sum_{v in N(u)} sign(u, v) * PRG(s_uv)   (mod 2^64),
    sign(u, v) = +1 if v > u else -1   (site ids compared as strings)

Because ``s_uv = s_vu`` and ``sign(u, v) = -sign(v, u)``, pairwise masks cancel in the sum over any set that
contains both ends of every pair. The server removes what does not cancel: self masks ``PRG(b_u)`` of
survivors and the pairwise masks that survivors ``v`` added for dropped neighbours ``u``.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
    Sec. 4 (double masking).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from security.errors import InvalidMessage
from security.prg import MaskSeed, PrgAlgorithm, add_streams


def pairwise_sign(site: str, peer: str) -> int:
    """+1 if ``peer`` sorts after ``site``, -1 if before; the two ids must differ."""
    if site == peer:
        raise InvalidMessage(f"site {site!r} cannot pair with itself")
    return 1 if peer > site else -1


@dataclass(frozen=True, slots=True)
class PairwiseMask:
    """The pairwise mask that ``site`` added to its upload for its pair with ``peer``."""

    seed: MaskSeed
    site: str
    peer: str

    @property
    def sign(self) -> int:
        """+1 or -1, see :func:`pairwise_sign`."""
        return pairwise_sign(self.site, self.peer)


def _check(vector: npt.NDArray[np.uint64]) -> None:
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint64 or vector.ndim != 1:
        raise InvalidMessage("masks apply to a 1-D uint64 fixed-point vector; encode it first")


def apply_masks(vector: npt.NDArray[np.uint64], *, self_seed: MaskSeed, pairwise: Sequence[PairwiseMask],
                algorithm: PrgAlgorithm) -> npt.NDArray[np.uint64]:
    """In place: add the self mask and every pairwise mask of one site; returns ``vector``.

    Shape:
        vector: (d,) uint64, C-contiguous and writeable (the site's encoded input).

    Raises:
        InvalidMessage: wrong dtype/shape, or pairwise masks of different sites.
    """
    _check(vector)
    if len({m.site for m in pairwise}) > 1:
        raise InvalidMessage("apply_masks takes the pairwise masks of a single site")
    add_streams(vector, [(self_seed, 1)] + [(m.seed, m.sign) for m in pairwise], algorithm=algorithm)
    return vector


def remove_masks(total: npt.NDArray[np.uint64], *, self_seeds: Sequence[MaskSeed],
                 pairwise: Sequence[PairwiseMask], algorithm: PrgAlgorithm) -> npt.NDArray[np.uint64]:
    """In place: subtract survivors' self masks and the uncancelled pairwise masks; returns ``total``.

    Shape:
        total: (d,) uint64, the mod-2^64 sum of the survivors' uploads.
    """
    _check(total)
    terms = [(seed, -1) for seed in self_seeds] + [(m.seed, -m.sign) for m in pairwise]
    add_streams(total, terms, algorithm=algorithm)
    return total
