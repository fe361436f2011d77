"""The wire codec: ``pfmh.v1`` secure-aggregation messages <-> the typed messages of ``security``.

One function pair per message, ``<message>_to_proto`` / ``<message>_from_proto``; the coordinator's
servicer, the site's round (``federation.site_round``) and every test helper use these and nothing else.
The join reply, round offer and round result are ``federation.round_codec``'s.
Decoding builds the frozen ``security.secagg_messages`` / ``security.consistency`` types, which validate
every field on construction, so a malformed message raises ``InvalidMessage`` here.

Security:
    Identity never comes from a message field. Requests are decoded with ``sender``, the site id of the
    verified client certificate (the servicer passes ``current_site()``); the site fields of relayed
    replies are the coordinator's, and the site decodes them under its *own* federation id and round number
    (``federation_id``, ``round_number``), never the ones the reply claims.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from proto import federation_pb2 as pb
from security.consistency import SurvivorSignature
from security.errors import InvalidMessage
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    UnmaskRequest,
    UnmaskResponse,
)

# Longest list a site may send in one message; real ones hold one entry per neighbour.
MAX_LIST_ITEMS = 4096


def _check_items(what: str, count: int) -> None:
    if count > MAX_LIST_ITEMS:
        raise InvalidMessage(f"{count} {what} > {MAX_LIST_ITEMS} in one message")


# ---------------------------------------------------------------------------------- phase 2: advertise keys
def advertise_to_proto(advert: AdvertiseKeys) -> pb.AdvertiseKeysRequest:
    """A site's signed key advertisement as its request (the site id travels in its certificate)."""
    return pb.AdvertiseKeysRequest(federation_id=advert.federation_id, round=advert.round,
                                   share_public_key=advert.share_public_key,
                                   mask_public_key=advert.mask_public_key, signature=advert.signature)


def advertise_from_proto(request: pb.AdvertiseKeysRequest, *, sender: str) -> AdvertiseKeys:
    """The advertisement ``sender`` (the verified certificate's site id) sent."""
    return AdvertiseKeys(request.federation_id, request.round, sender, request.share_public_key,
                         request.mask_public_key, request.signature)


def directory_to_proto(directory: KeyDirectory, *, certificates: Mapping[str, bytes],
                       status: pb.PollStatus) -> pb.Advertisements:
    """The relayed key directory; every advertisement carries its sender's certificate (PEM).

    Args:
        directory: the advertisements relayed to one recipient.
        certificates: PEM certificate of each advertiser, by site id.
        status: the ``pb.PollStatus`` of the reply.
    """
    reply = pb.Advertisements(status=status, round=directory.round)
    reply.advertisements.extend(
        pb.Advertisement(site=a.site_id, share_public_key=a.share_public_key, mask_public_key=a.mask_public_key,
                         signature=a.signature, certificate_pem=certificates[a.site_id])
        for a in directory.advertisements)
    reply.advertisers.extend(directory.site_ids)
    return reply


def directory_from_proto(reply: pb.Advertisements, *, federation_id: str,
                         round_number: int) -> tuple[KeyDirectory, dict[str, bytes]]:
    """The key directory and each advertiser's certificate (PEM, unverified: see ``federation.peers``)."""
    _check_items("advertisements", len(reply.advertisements))
    adverts = tuple(AdvertiseKeys(federation_id, round_number, a.site, a.share_public_key, a.mask_public_key,
                                  a.signature) for a in reply.advertisements)
    certificates = {a.site: a.certificate_pem for a in reply.advertisements}
    return KeyDirectory(federation_id, round_number, adverts, tuple(reply.advertisers)), certificates


# ---------------------------------------------------------------------------------- phase 3: share keys
def shares_to_proto(federation_id: str, round_number: int,
                    shares: Sequence[EncryptedShare]) -> pb.ShareKeysRequest:
    """A site's sealed shares, one per recipient (the sender travels in its certificate)."""
    return pb.ShareKeysRequest(federation_id=federation_id, round=round_number, shares=[
        pb.EncryptedShare(recipient=s.recipient, nonce=s.nonce, ciphertext=s.ciphertext) for s in shares])


def shares_from_proto(request: pb.ShareKeysRequest, *, sender: str) -> list[EncryptedShare]:
    """The sealed shares ``sender`` sent."""
    _check_items("shares", len(request.shares))
    return [EncryptedShare(request.federation_id, request.round, sender, s.recipient, s.nonce, s.ciphertext)
            for s in request.shares]


def inbox_to_proto(shares: Sequence[EncryptedShare], *, round_number: int, status: pb.PollStatus) -> pb.SharesForSite:
    """The shares relayed to one recipient, each naming its sender."""
    reply = pb.SharesForSite(status=status, round=round_number)
    reply.shares.extend(pb.EncryptedShare(sender=s.sender, recipient=s.recipient, nonce=s.nonce,
                                          ciphertext=s.ciphertext) for s in shares)
    return reply


def inbox_from_proto(reply: pb.SharesForSite, *, federation_id: str, round_number: int) -> list[EncryptedShare]:
    """The shares relayed to this site."""
    _check_items("shares", len(reply.shares))
    return [EncryptedShare(federation_id, round_number, s.sender, s.recipient, s.nonce, s.ciphertext)
            for s in reply.shares]


# ---------------------------------------------------------------------------------- phase 4: masked input
def masked_input_to_proto(masked: MaskedInput) -> pb.MaskedInputRequest:
    """A site's masked fixed-point vector."""
    return pb.MaskedInputRequest(federation_id=masked.federation_id, round=masked.round,
                                 masked_uint64_le=masked.data, vector_length=masked.vector_length)


def masked_input_from_proto(request: pb.MaskedInputRequest, *, sender: str) -> MaskedInput:
    """The masked vector ``sender`` sent; its stated length must match its bytes."""
    if request.vector_length * 8 != len(request.masked_uint64_le):
        raise InvalidMessage(f"vector_length {request.vector_length} does not match "
                             f"{len(request.masked_uint64_le)} bytes")
    return MaskedInput(request.federation_id, request.round, sender, request.masked_uint64_le)


# ---------------------------------------------------------------------------------- phase 5: unmask
def unmask_request_to_proto(request: UnmaskRequest | None, *, round_number: int,
                            status: pb.PollStatus) -> pb.UnmaskRequest:
    """The survivor and dropout lists one site is told (``None``: not ready, lists left empty)."""
    reply = pb.UnmaskRequest(status=status, round=round_number)
    if request is not None:
        reply.survivors.extend(request.survivors)
        reply.dropouts.extend(request.dropouts)
    return reply


def unmask_request_from_proto(reply: pb.UnmaskRequest, *, federation_id: str, round_number: int) -> UnmaskRequest:
    """The survivor and dropout lists this site was told."""
    return UnmaskRequest(federation_id, round_number, tuple(reply.survivors), tuple(reply.dropouts))


def survivor_signature_to_proto(signed: SurvivorSignature) -> pb.SurvivorSignatureRequest:
    """A site's signature on the survivor view it was told."""
    return pb.SurvivorSignatureRequest(federation_id=signed.federation_id, round=signed.round,
                                       signature=signed.signature)


def survivor_signature_from_proto(request: pb.SurvivorSignatureRequest, *, sender: str) -> SurvivorSignature:
    """The survivor-view signature ``sender`` sent."""
    return SurvivorSignature(request.federation_id, request.round, sender, request.signature)


def signatures_to_proto(signatures: Sequence[SurvivorSignature], *, round_number: int,
                        status: pb.PollStatus) -> pb.SurvivorSignatures:
    """The survivor-view signatures relayed to one site, each naming its signer."""
    reply = pb.SurvivorSignatures(status=status, round=round_number)
    reply.signatures.extend(pb.SurvivorSignature(site=s.site_id, signature=s.signature) for s in signatures)
    return reply


def signatures_from_proto(reply: pb.SurvivorSignatures, *, federation_id: str,
                          round_number: int) -> list[SurvivorSignature]:
    """The survivor-view signatures relayed to this site."""
    _check_items("signatures", len(reply.signatures))
    return [SurvivorSignature(federation_id, round_number, s.site, s.signature) for s in reply.signatures]


def unmask_response_to_proto(response: UnmaskResponse) -> pb.UnmaskReply:
    """A site's revealed shares: survivors' self-seed shares and dropouts' mask-key shares."""
    return pb.UnmaskReply(
        federation_id=response.federation_id, round=response.round,
        self_seed_shares=[pb.RevealedShare(owner=s.owner, share=s.share) for s in response.self_seed_shares],
        mask_key_shares=[pb.RevealedShare(owner=s.owner, share=s.share) for s in response.mask_key_shares])


def unmask_response_from_proto(request: pb.UnmaskReply, *, sender: str) -> UnmaskResponse:
    """The shares ``sender`` revealed."""
    _check_items("revealed shares", len(request.self_seed_shares) + len(request.mask_key_shares))
    return UnmaskResponse(request.federation_id, request.round, sender,
                          tuple(RevealedShare(s.owner, s.share) for s in request.self_seed_shares),
                          tuple(RevealedShare(s.owner, s.share) for s in request.mask_key_shares))
