"""One round of a secure-aggregation client: its state, and the checks on what the coordinator relays.

``security.secagg_client.SecAggClient`` orders the phases and does the cryptography; the functions here only
refuse (or open and then check): an advertisement not signed by its certified key, a message of another round,
a share sealed for another round graph, an unmask request that could reveal both secrets of one site, too
few holder signatures on the survivor view.

Security:
    These checks are what keeps a lying coordinator from unmasking one site's input (docs/PRIVACY.md,
    "Secure aggregation against an active coordinator"); each raises, none returns False.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from security import shamir, share_encryption
from security.consistency import DIGEST_BYTES, SurvivorSignature, SurvivorView, valid_signers
from security.errors import InvalidMessage, RoundAborted, ShareInvalid, SignatureInvalid, StageOutOfOrder
from security.key_agreement import AgreementPrivateKey, AgreementPublicKey, derive_share_key
from security.prg import MaskSeed
from security.secagg_config import RoundPlan
from security.secagg_messages import AdvertiseKeys, EncryptedShare, UnmaskRequest, unpack_share_pair
from security.signing import VerifyKey, verify_key_bundle

_T = TypeVar("_T")


def need(value: _T | None) -> _T:
    """A secret that the current stage must still hold (cleared secrets mean the round is over)."""
    if value is None:
        raise StageOutOfOrder("this round's secrets were already used and cleared; start a new round")
    return value


@dataclass(slots=True, repr=False)
class ClientRound:
    """State of one round; fields stay None until their stage fills them, secrets are cleared after use."""

    round: int
    cohort: frozenset[str]
    plan: RoundPlan
    share_key: AgreementPrivateKey | None
    mask_key: AgreementPrivateKey | None
    advertisement: AdvertiseKeys
    peers: dict[str, AdvertiseKeys] | None = None          # verified advertisements of graph neighbours
    indices: dict[str, int] | None = None                   # Shamir x-coordinate of every advertised site
    graph: dict[str, frozenset[str]] | None = None          # this site's view of the round graph
    graph_digest: bytes = b""                               # digest of the advertiser list it came from
    view: SurvivorView | None = None                        # the survivor view this site signed
    self_seed: MaskSeed | None = None
    own_shares: tuple[shamir.Share, shamir.Share] | None = None
    held: dict[str, tuple[shamir.Share, shamir.Share]] = field(default_factory=dict)  # owner -> (key, seed)


def verify_advertisement(adv: AdvertiseKeys, verify_keys: Mapping[str, VerifyKey]) -> None:
    if adv.site_id not in verify_keys:
        raise SignatureInvalid(f"no trusted verify key for {adv.site_id!r}; load its certificate")
    verify_key_bundle(verify_key=verify_keys[adv.site_id], context=adv.context(),
                      share_public_key=AgreementPublicKey.from_bytes(adv.share_public_key),
                      mask_public_key=AgreementPublicKey.from_bytes(adv.mask_public_key),
                      signature=adv.signature)


def check_header(state: ClientRound, *, federation_id: str, got_federation: str, got_round: int) -> None:
    """Refuse a message of another federation or round than ``state``'s."""
    if got_federation != federation_id or got_round != state.round:
        raise InvalidMessage(f"message for ({got_federation!r}, round {got_round}) but this round is "
                             f"({federation_id!r}, {state.round}); drop it")


def check_unmask_request(state: ClientRound, request: UnmaskRequest, *, site: str, federation_id: str) -> None:
    """Refuse an unmask request that could reveal both secrets of a site or does not fit this round.

    Raises:
        InvalidMessage: a site twice or in both lists, ``site`` not a survivor, a site that never advertised,
            or a listed neighbour that never shared keys with ``site``.
        RoundAborted: fewer than t survivors.
    """
    check_header(state, federation_id=federation_id, got_federation=request.federation_id,
                 got_round=request.round)
    survivors, dropouts = set(request.survivors), set(request.dropouts)
    if len(survivors) != len(request.survivors) or len(dropouts) != len(request.dropouts):
        raise InvalidMessage("unmask request names a site twice in one list")
    if survivors & dropouts:
        raise InvalidMessage(f"unmask request names {sorted(survivors & dropouts)} as both survivor "
                             f"and dropout; revealing both secrets would expose their input")
    if site not in survivors:
        raise InvalidMessage(f"unmask request does not list {site!r} among survivors")
    known = need(state.indices)
    if not (survivors | dropouts) <= known.keys():
        raise InvalidMessage(f"unmask request names sites that did not advertise: "
                             f"{sorted((survivors | dropouts) - known.keys())}")
    stray = (survivors | dropouts) & (need(state.peers).keys() - state.held.keys())
    if stray:
        raise InvalidMessage(f"neighbours {sorted(stray)} never shared keys with {site!r} "
                             f"but are listed; refuse the inconsistent request")
    t = state.plan.threshold
    if len(survivors) < t:
        raise RoundAborted(f"{len(survivors)} survivors < threshold {t}")


def check_holder_signatures(state: ClientRound, owners: Sequence[str], signatures: Sequence[SurvivorSignature],
                            verify_keys: Mapping[str, VerifyKey], *, site: str, own_key: VerifyKey) -> None:
    """All or nothing: t valid signatures on ``site``'s view from the holders of every owner it reveals.

    Raises:
        SignatureInvalid: a relayed signature does not verify, or the key given for ``site`` is not its own.
        RoundAborted: fewer than t of some owner's holders signed, or a surviving owner did not sign.
    """
    view, graph, t = need(state.view), need(state.graph), state.plan.threshold
    own = own_key
    if verify_keys.get(site, own) != own:
        raise SignatureInvalid(f"the verify key given for {site!r} is not this site's own")
    relayed = [s for s in signatures if s.site_id != site]
    signers = valid_signers(view=view, signatures=relayed, verify_keys=verify_keys) | {site}
    survivors = set(view.survivors)

    def enough(owner: str) -> None:
        count = len(signers & (graph[owner] | {owner}) & survivors)
        if count < t:
            raise RoundAborted(f"only {count} of {owner!r}'s holders signed this site's survivor set "
                               f"< threshold {t}; the coordinator may be showing sites different sets")

    for owner in owners:
        enough(owner)
        if owner in survivors:  # its self seed is revealed: it must vouch for the set, and so must
            if owner not in signers:  # t holders of each survivor its input is masked with
                raise RoundAborted(f"{owner!r} is listed as a survivor but did not sign this survivor set; "
                                   f"its self seed stays hidden")
            for peer in sorted(graph[owner] & survivors):
                enough(peer)


def open_share(state: ClientRound, message: EncryptedShare, *, share_key: AgreementPrivateKey,
               peer: AdvertiseKeys, own_index: int) -> tuple[shamir.Share, shamir.Share]:
    """Open a neighbour's sealed (mask-key share, self-seed share) and check it was made for this round graph.

    Raises:
        DecryptionFailed: tampered, or sealed for another context.
        ShareInvalid: made for another advertiser list, or carrying another holder's index.
    """
    context = message.context()
    aead_key = derive_share_key(private_key=share_key, context=context,
                                peer_public_key=AgreementPublicKey.from_bytes(peer.share_public_key))
    plaintext = share_encryption.open(key=aead_key, context=context,
                                      ciphertext=share_encryption.Ciphertext(message.nonce, message.ciphertext))
    if plaintext[:DIGEST_BYTES] != state.graph_digest:
        raise ShareInvalid(f"share from {message.sender!r} was made for another advertiser list (round "
                           f"graph); the coordinator sent the two sites different directories")
    raw_key, raw_seed = unpack_share_pair(plaintext[DIGEST_BYTES:])
    pair = (shamir.Share.from_bytes(raw_key), shamir.Share.from_bytes(raw_seed))
    if any(s.index != own_index for s in pair):
        raise ShareInvalid(f"share from {message.sender!r} carries another holder's index")
    return pair
