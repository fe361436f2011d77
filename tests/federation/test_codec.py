"""``federation.codec``: every secure-aggregation message survives the wire unchanged, and identity and round
come from the receiver, never from a message field."""
from __future__ import annotations

import os

import pytest

from federation import codec
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

FED, ROUND = "fed", 7


def _wire(message):  # noqa: ANN001, ANN202 - through real protobuf bytes, as gRPC sends it
    return type(message).FromString(message.SerializeToString())


def _advert(site: str) -> AdvertiseKeys:
    return AdvertiseKeys(FED, ROUND, site, os.urandom(32), os.urandom(32), os.urandom(64))


def _share(sender: str, recipient: str) -> EncryptedShare:
    return EncryptedShare(FED, ROUND, sender, recipient, os.urandom(12), os.urandom(48))


def test_site_requests_round_trip_with_the_certificate_sender() -> None:
    # Prepare
    advert = _advert("site-a")
    shares = [_share("site-a", "site-b"), _share("site-a", "site-c")]
    masked = MaskedInput(FED, ROUND, "site-a", os.urandom(8 * 5))
    signed = SurvivorSignature(FED, ROUND, "site-a", os.urandom(64))
    response = UnmaskResponse(FED, ROUND, "site-a", (RevealedShare("site-b", b"\x01\x02"),),
                              (RevealedShare("site-c", b"\x03"), RevealedShare("site-d", b"")))
    # Execute
    got_advert = codec.advertise_from_proto(_wire(codec.advertise_to_proto(advert)), sender="site-a")
    got_shares = codec.shares_from_proto(_wire(codec.shares_to_proto(FED, ROUND, shares)), sender="site-a")
    got_masked = codec.masked_input_from_proto(_wire(codec.masked_input_to_proto(masked)), sender="site-a")
    got_signed = codec.survivor_signature_from_proto(_wire(codec.survivor_signature_to_proto(signed)),
                                                     sender="site-a")
    got_response = codec.unmask_response_from_proto(_wire(codec.unmask_response_to_proto(response)),
                                                     sender="site-a")
    # Assert
    assert (got_advert, got_shares, got_masked, got_signed, got_response) == (advert, shares, masked, signed,
                                                                              response)


def test_a_request_takes_its_sender_from_the_caller_not_the_message() -> None:
    # Prepare: nothing site-a sends names site-a on the wire; decoding names whoever the certificate says
    request = _wire(codec.advertise_to_proto(_advert("site-a")))
    # Execute
    decoded = codec.advertise_from_proto(request, sender="site-z")
    # Assert
    assert decoded.site_id == "site-z"
    assert "site-a" not in str(request)


def test_relayed_replies_round_trip() -> None:
    # Prepare
    adverts = (_advert("site-a"), _advert("site-b"))
    directory = KeyDirectory(FED, ROUND, adverts, ("site-a", "site-b", "site-c"))
    certificates = {"site-a": b"PEM-A", "site-b": b"PEM-B"}
    inbox = [_share("site-b", "site-a"), _share("site-c", "site-a")]
    told = UnmaskRequest(FED, ROUND, ("site-a", "site-b"), ("site-c",))
    signatures = [SurvivorSignature(FED, ROUND, "site-b", os.urandom(64))]
    where = {"federation_id": FED, "round_number": ROUND}
    # Execute
    got_directory, got_certs = codec.directory_from_proto(
        _wire(codec.directory_to_proto(directory, certificates=certificates, status=pb.READY)), **where)
    got_inbox = codec.inbox_from_proto(_wire(codec.inbox_to_proto(inbox, round_number=ROUND, status=pb.READY)),
                                       **where)
    got_told = codec.unmask_request_from_proto(
        _wire(codec.unmask_request_to_proto(told, round_number=ROUND, status=pb.READY)), **where)
    got_signatures = codec.signatures_from_proto(
        _wire(codec.signatures_to_proto(signatures, round_number=ROUND, status=pb.READY)), **where)
    # Assert
    assert (got_directory, got_certs) == (directory, certificates)
    assert (got_inbox, got_told, got_signatures) == (inbox, told, signatures)


def test_a_relayed_reply_is_read_under_the_sites_own_round() -> None:
    # Prepare: the coordinator claims another round in the reply
    reply = codec.directory_to_proto(KeyDirectory(FED, ROUND, (_advert("site-a"),)), certificates={"site-a": b"x"},
                                     status=pb.READY)
    reply.round = ROUND + 1
    # Execute
    directory, _ = codec.directory_from_proto(reply, federation_id=FED, round_number=ROUND)
    # Assert: the advertisement now binds this site's round, so its signature check covers a replay
    assert directory.round == ROUND and directory.advertisements[0].round == ROUND


def test_not_ready_replies_carry_status_and_nothing_else() -> None:
    # Execute
    told = codec.unmask_request_to_proto(None, round_number=ROUND, status=pb.PENDING)
    inbox = codec.inbox_to_proto((), round_number=ROUND, status=pb.ABORTED)
    # Assert
    assert (told.status, list(told.survivors), list(told.dropouts)) == (pb.PENDING, [], [])
    assert (inbox.status, inbox.round, list(inbox.shares)) == (pb.ABORTED, ROUND, [])


def test_a_masked_input_whose_length_disagrees_with_its_bytes_is_refused() -> None:
    # Prepare
    request = codec.masked_input_to_proto(MaskedInput(FED, ROUND, "site-a", bytes(16)))
    request.vector_length = 3
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="vector_length 3 does not match 16 bytes"):
        codec.masked_input_from_proto(request, sender="site-a")


def test_an_oversized_list_is_refused_before_any_item_is_built() -> None:
    # Prepare
    request = pb.ShareKeysRequest(federation_id=FED, round=ROUND, shares=[
        pb.EncryptedShare(recipient="x") for _ in range(codec.MAX_LIST_ITEMS + 1)])
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="shares > 4096"):
        codec.shares_from_proto(request, sender="site-a")


def test_a_malformed_field_raises_invalid_message() -> None:
    # Prepare: a 31-byte public key
    request = codec.advertise_to_proto(_advert("site-a"))
    request.share_public_key = request.share_public_key[:31]
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="share_public_key must be 32 bytes"):
        codec.advertise_from_proto(request, sender="site-a")
