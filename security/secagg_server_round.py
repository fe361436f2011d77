"""One round of the secure-aggregation server: its state, its result, and the check of a site's revealed shares.

``security.secagg_server.SecAggServer`` walks the phases; this module holds what it fills in and refuses
revealed shares a site may not hold.

Security:
    :func:`revealed_shares` is where a survivor's answer is held to the unmask request: self-seed shares
    only of survivors, mask-key shares only of dropouts, only of the sender's graph neighbours (or itself),
    at the sender's own Shamir index, each owner once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from security import shamir
from security.consistency import SurvivorSignature
from security.errors import InvalidMessage
from security.neighbours import within_hops
from security.secagg_config import RoundPlan
from security.secagg_messages import AdvertiseKeys, EncryptedShare, KeyDirectory, UnmaskRequest, UnmaskResponse


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """Outcome of a finished round.

    Shape:
        total: (vector_length,) float64, the sum of the survivors' inputs (within survivors * 2^-(f+1)).
    """

    total: npt.NDArray[np.float64]
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]


@dataclass(slots=True, repr=False)
class ServerRound:
    """Round state; each field is filled by its stage."""

    plan: RoundPlan
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)                 # A1
    graph: dict[str, frozenset[str]] | None = None
    indices: dict[str, int] | None = None
    sealed: dict[str, tuple[EncryptedShare, ...]] = field(default_factory=dict)    # A2 -> its shares
    masked_sum: npt.NDArray[np.uint64] | None = None
    submitted: set[str] = field(default_factory=set)                                # A3
    dropouts: tuple[str, ...] = ()
    request: UnmaskRequest | None = None
    signatures: dict[str, SurvivorSignature] = field(default_factory=dict)         # A4 (consistency check)
    seed_shares: dict[str, list[shamir.Share]] = field(default_factory=dict)        # survivor -> shares
    key_shares: dict[str, list[shamir.Share]] = field(default_factory=dict)         # dropout -> shares
    responded: set[str] = field(default_factory=set)


def revealed_shares(state: ServerRound, sender: str,
                    message: UnmaskResponse) -> list[tuple[dict[str, list[shamir.Share]], str, shamir.Share]]:
    """The (store, owner, share) triples of ``sender``'s answer, each checked; nothing is stored here.

    Raises:
        InvalidMessage: a share of a site of the wrong kind, of a non-neighbour, at another index, or an
            owner repeated.
    """
    graph, indices = state.graph or {}, state.indices or {}
    parsed: list[tuple[dict[str, list[shamir.Share]], str, shamir.Share]] = []
    for kind, items, owners in (("self-seed", message.self_seed_shares, state.submitted),
                                ("mask-key", message.mask_key_shares, set(state.dropouts))):
        target = state.seed_shares if kind == "self-seed" else state.key_shares
        for item in items:
            if item.owner not in owners:
                raise InvalidMessage(f"{sender!r} sent a {kind} share of {item.owner!r}, which is not "
                                     f"a {'survivor' if kind == 'self-seed' else 'dropout'}")
            if sender != item.owner and sender not in graph[item.owner]:
                raise InvalidMessage(f"{sender!r} cannot hold a share of non-neighbour {item.owner!r}")
            share = shamir.Share.from_bytes(item.share)
            if share.index != indices[sender]:
                raise InvalidMessage(f"{sender!r} sent a share with index {share.index}, "
                                     f"expected its own index {indices[sender]}")
            parsed.append((target, item.owner, share))
    owners_seen = [(id(target), owner) for target, owner, _ in parsed]
    if len(set(owners_seen)) != len(owners_seen):
        raise InvalidMessage(f"UnmaskResponse from {sender!r} repeats an owner")
    return parsed


def compact_directory(state: ServerRound, site: str, *, federation_id: str, round_number: int,
                      hops: int) -> KeyDirectory:
    """``site``'s own advertisement and those of the sites within ``hops`` graph hops, plus every advertiser's
    id (the whole directory when that is everyone).

    With the consistency check a site also counts signatures of the holders of its neighbours' holders
    (three hops), so it gets their certificates too; without it, one hop (its neighbours) suffices.

    Raises:
        InvalidMessage: ``site`` did not advertise keys this round.
    """
    graph = state.graph or {}
    if site not in graph:
        raise InvalidMessage(f"{site!r} did not advertise keys this round")
    order = tuple(sorted(state.adverts))
    near = within_hops(graph, site, hops)
    if len(near) == len(order):
        return KeyDirectory(federation_id, round_number, tuple(state.adverts[s] for s in order))
    return KeyDirectory(federation_id, round_number, tuple(state.adverts[s] for s in sorted(near)), order)
