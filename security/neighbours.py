"""SecAgg+ communication graph: a public random Harary graph H(k, n), fresh every round.

Construction (Bell et al. 2020, Sec. 3.2): order the advertised sites by ``SHA-256(round_seed || id)`` (a
random relabelling that everybody can recompute), place them on a ring and join each site to the ``k/2``
nearest sites on either side, giving a k-regular undirected graph. With ``n <= k + 1`` sites the graph is
complete (plain SecAgg of Bonawitz et al. 2017). ``round_seed`` is public, derived from the federation id
and round number, so the coordinator cannot pick a site's neighbours.

A site masks pairwise with, and Shamir-shares its secrets among, its neighbours; its secrets are therefore
held by ``min(k, n - 1) + 1`` sites (its neighbours and itself).

References:
    J. Bell, K. Bonawitz, A. Gascon, T. Lepoint, M. Raykova, "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead", CCS 2020, Sec. 3 (random Harary graphs, k = O(log n)).
"""
from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

from security.context import BROADCAST, SessionContext
from security.errors import InvalidMessage, UnsafeConfiguration

SEED_BYTES = 32


def round_seed(federation_id: str, round_number: int) -> bytes:
    """Public 32-byte graph seed of one round: SHA-256 over a label and the round's broadcast context."""
    context = SessionContext(federation_id, round_number, BROADCAST, BROADCAST)
    return hashlib.sha256(b"pfmh-secagg-v1/graph\x00" + context.to_bytes()).digest()


def default_neighbours(n_sites: int) -> int:
    """k = ceil(2 * log2 n) rounded up to even (at least 2): e.g. 8 for n=10, 14 for n=100, 18 for n=500."""
    if n_sites < 2:
        raise UnsafeConfiguration(f"cohort of {n_sites} site(s) < 2; secure aggregation needs at least 2")
    k = max(2, math.ceil(2 * math.log2(n_sites)))
    return k + (k % 2)


def neighbourhood_size(n_sites: int, k: int) -> int:
    """Number of holders of each site's shares: its neighbours plus itself."""
    return min(k, n_sites - 1) + 1


def neighbours(cohort: Sequence[str], *, k: int, round_seed: bytes) -> dict[str, frozenset[str]]:
    """The round's graph as adjacency sets (symmetric, no self loops).

    Args:
        cohort: distinct site ids (any order; the result does not depend on it).
        k: even degree >= 2.
        round_seed: 32 public bytes from :func:`round_seed`.

    Raises:
        InvalidMessage: duplicate ids or a bad seed.
        UnsafeConfiguration: k odd or < 2.
    """
    if len(set(cohort)) != len(cohort):
        raise InvalidMessage(f"cohort has duplicate site ids: {sorted(cohort)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
        raise UnsafeConfiguration(f"neighbours k={k!r} must be an even int >= 2; use default_neighbours(n)")
    if not isinstance(round_seed, bytes) or len(round_seed) != SEED_BYTES:
        raise InvalidMessage(f"round_seed must be {SEED_BYTES} bytes from round_seed()")
    n = len(cohort)
    if n <= k + 1:
        everyone = frozenset(cohort)
        return {site: everyone - {site} for site in cohort}

    def rank(site: str) -> bytes:
        raw = site.encode("utf-8")
        return hashlib.sha256(round_seed + struct.pack(">I", len(raw)) + raw).digest()

    ring = sorted(cohort, key=lambda s: (rank(s), s))
    half = k // 2
    return {site: frozenset(ring[(pos + off) % n] for off in range(-half, half + 1) if off)
            for pos, site in enumerate(ring)}


def within_hops(graph: dict[str, frozenset[str]], site: str, hops: int) -> frozenset[str]:
    """``site`` and every site at most ``hops`` graph edges away.

    Three hops is what the consistency check needs: the holders of the holders of every share ``site``
    holds (``security.secagg_client.SecAggClient.unmask``).
    """
    near = frozenset({site})
    for _ in range(hops):
        near = near.union(*(graph[v] for v in near))
    return near
