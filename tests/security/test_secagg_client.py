"""SecAggClient: stage order, signature checks, tampered shares, input validation, unmask refusals."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from security.errors import (
    DecryptionFailed,
    InvalidMessage,
    OverflowRisk,
    RoundAborted,
    SignatureInvalid,
    StageOutOfOrder,
)
from security.neighbours import neighbours, round_seed, within_hops
from security.secagg_config import SecAggConfig
from security.secagg_messages import EncryptedShare, KeyDirectory, UnmaskRequest
from security.signing import SigningKey
from security.stages import Stage
from tests.security.secagg_harness import Federation

D = 4


@pytest.fixture
def fed() -> Federation:
    """Five sites (full graph, t = 4)."""
    return Federation.create(SecAggConfig(federation_id="fed", vector_length=D, max_abs_value=10.0), 5)


def _directory(fed: Federation, round_number: int = 1) -> KeyDirectory:
    adverts = tuple(fed.clients[s].advertise(round_number, fed.sites) for s in fed.sites)
    return KeyDirectory("fed", round_number, adverts)


def _shared(fed: Federation) -> dict[str, list[EncryptedShare]]:
    directory = _directory(fed)
    inbox: dict[str, list[EncryptedShare]] = {s: [] for s in fed.sites}
    for s in fed.sites:
        for share in fed.clients[s].share_keys(directory, verify_keys=fed.verify_keys):
            inbox[share.recipient].append(share)
    return inbox


def test_calls_out_of_order_raise_and_change_nothing(fed: Federation) -> None:
    # Prepare
    client = fed.clients[fed.sites[0]]
    # Execute / Assert
    with pytest.raises(StageOutOfOrder, match="from stage idle"):
        client.masked_input([], np.zeros(D))
    inbox = _shared(fed)
    assert client.stage is Stage.SHARE_KEYS
    with pytest.raises(StageOutOfOrder):
        client.share_keys(KeyDirectory("fed", 1, ()), verify_keys={})
    with pytest.raises(StageOutOfOrder):
        client.unmask(UnmaskRequest("fed", 1, tuple(fed.sites), ()))
    client.masked_input(inbox[fed.sites[0]], np.zeros(D))
    with pytest.raises(StageOutOfOrder):
        client.masked_input(inbox[fed.sites[0]], np.zeros(D))
    assert client.stage is Stage.MASKED_INPUT


def test_bad_signature_or_unknown_key_aborts(fed: Federation) -> None:
    # Prepare: a coordinator swaps one site's mask key for its own
    directory = _directory(fed)
    victim = directory.advertisements[1]
    forged = dataclasses.replace(victim, mask_public_key=bytes(range(32)))
    tampered = KeyDirectory("fed", 1, (directory.advertisements[0], forged, *directory.advertisements[2:]))
    client = fed.clients[fed.sites[0]]
    # Execute / Assert
    with pytest.raises(SignatureInvalid, match="not signed by its certified key"):
        client.share_keys(tampered, verify_keys=fed.verify_keys)
    assert client.stage is Stage.ABORTED
    other = fed.clients[fed.sites[2]]
    keys = dict(fed.verify_keys)
    keys[fed.sites[3]] = SigningKey.generate().verify_key()  # coordinator-supplied key would not match
    with pytest.raises(SignatureInvalid):
        other.share_keys(directory, verify_keys=keys)
    del keys[fed.sites[3]]
    third = fed.clients[fed.sites[4]]
    with pytest.raises(SignatureInvalid, match="no trusted verify key"):
        third.share_keys(directory, verify_keys=keys)


def test_directory_must_be_consistent(fed: Federation) -> None:
    # Prepare
    directory = _directory(fed)
    a, b, c = (fed.clients[s] for s in fed.sites[:3])
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="own advertisement"):
        a.share_keys(KeyDirectory("fed", 1, directory.advertisements[1:]), verify_keys=fed.verify_keys)
    with pytest.raises(InvalidMessage, match="round 2"):
        b.share_keys(KeyDirectory("fed", 2, directory.advertisements), verify_keys=fed.verify_keys)
    with pytest.raises(InvalidMessage, match="duplicate"):
        c.share_keys(KeyDirectory("fed", 1, directory.advertisements + directory.advertisements[:1]),
                     verify_keys=fed.verify_keys)


def test_too_few_advertisements_abort(fed: Federation) -> None:
    # Prepare: t = 4 but only 3 advertisements relayed
    directory = _directory(fed)
    # Execute / Assert
    with pytest.raises(RoundAborted, match="3 sites advertised keys < threshold 4"):
        fed.clients[fed.sites[0]].share_keys(KeyDirectory("fed", 1, directory.advertisements[:3]),
                                             verify_keys=fed.verify_keys)


def test_tampered_or_misrouted_shares_are_rejected(fed: Federation) -> None:
    # Prepare
    inbox = _shared(fed)
    s0, s1, s2, s3 = fed.sites[:4]
    first = inbox[s0][0]
    flipped = dataclasses.replace(first, ciphertext=bytes([first.ciphertext[0] ^ 1]) + first.ciphertext[1:])
    # Execute / Assert
    with pytest.raises(DecryptionFailed):
        fed.clients[s0].masked_input([flipped, *inbox[s0][1:]], np.zeros(D))
    assert fed.clients[s0].stage is Stage.ABORTED
    with pytest.raises(InvalidMessage, match="duplicate"):
        fed.clients[s1].masked_input([inbox[s1][0], inbox[s1][0]], np.zeros(D))
    from_itself = dataclasses.replace(inbox[s2][0], sender=s2)
    with pytest.raises(InvalidMessage, match="not from a neighbour"):
        fed.clients[s2].masked_input([from_itself], np.zeros(D))
    moved = dataclasses.replace(inbox[s0][1], recipient=s3)  # share for s0 redirected to s3
    with pytest.raises(DecryptionFailed):
        fed.clients[s3].masked_input([moved], np.zeros(D))


def test_input_vector_is_validated(fed: Federation) -> None:
    # Prepare
    inbox = _shared(fed)
    s0, s1 = fed.sites[:2]
    # Execute / Assert
    with pytest.raises(InvalidMessage, match=r"input shape \(3,\)"):
        fed.clients[s0].masked_input(inbox[s0], np.zeros(3))
    with pytest.raises(OverflowRisk, match="max_abs_value 10.0"):
        fed.clients[s1].masked_input(inbox[s1], np.full(D, 11.0))


def test_too_few_shares_received_abort(fed: Federation) -> None:
    # Prepare: only 2 of 4 neighbours' shares arrive, t - 1 = 3 needed
    inbox = _shared(fed)
    s0 = fed.sites[0]
    # Execute / Assert
    with pytest.raises(RoundAborted, match="only 2 neighbours"):
        fed.clients[s0].masked_input(inbox[s0][:2], np.zeros(D))


def _masked(fed: Federation) -> None:
    inbox = _shared(fed)
    for s in fed.sites:
        fed.clients[s].masked_input(inbox[s], np.zeros(D))


@pytest.mark.parametrize(("survivors", "dropouts", "error", "match"), [
    ((0, 1, 2, 3), (3,), InvalidMessage, "both survivor and dropout"),
    ((1, 2, 3, 4), (0,), InvalidMessage, "among survivors"),
    ((0, 1, 1, 2), (), InvalidMessage, "twice"),
    ((0, 1, 2), (3, 4), RoundAborted, "3 survivors < threshold 4"),
])
def test_unmask_refuses_unsafe_requests(fed: Federation, survivors: tuple[int, ...], dropouts: tuple[int, ...],
                                        error: type[Exception], match: str) -> None:
    # Prepare
    _masked(fed)
    request = UnmaskRequest("fed", 1, tuple(fed.sites[i] for i in survivors), tuple(fed.sites[i] for i in dropouts))
    client = fed.clients[fed.sites[0]]
    # Execute / Assert: the consistency check validates the request before signing it
    with pytest.raises(error, match=match):
        client.sign_survivors(request)
    assert client.stage is Stage.ABORTED


def test_unmask_names_unknown_sites(fed: Federation) -> None:
    # Prepare
    _masked(fed)
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="did not advertise"):
        fed.clients[fed.sites[0]].sign_survivors(UnmaskRequest("fed", 1, (*fed.sites[:4], "intruder"), ()))


def test_unmask_reveals_one_secret_per_site_once(fed: Federation) -> None:
    # Prepare
    _masked(fed)
    request = UnmaskRequest("fed", 1, tuple(fed.sites[:4]), (fed.sites[4],))
    client = fed.clients[fed.sites[0]]
    signatures = [fed.clients[s].sign_survivors(request) for s in fed.sites[:4]]
    # Execute
    response = client.unmask(request, signatures=signatures, verify_keys=fed.verify_keys)
    # Assert
    assert [s.owner for s in response.self_seed_shares] == list(fed.sites[:4])
    assert [s.owner for s in response.mask_key_shares] == [fed.sites[4]]
    assert client.stage is Stage.DONE
    with pytest.raises(StageOutOfOrder):
        client.unmask(UnmaskRequest("fed", 1, tuple(fed.sites), ()))


def test_rounds_never_repeat_and_repr_hides_secrets(fed: Federation) -> None:
    # Prepare
    client = fed.clients[fed.sites[0]]
    client.advertise(5, fed.sites)
    client.abort()
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="keys are never reused"):
        client.advertise(5, fed.sites)
    with pytest.raises(InvalidMessage, match="including"):
        client.advertise(6, fed.sites[1:])
    assert repr(client) == "SecAggClient('site-000', stage=aborted, round=5)"


def test_compact_directory_must_cover_neighbours_and_advertisers() -> None:
    # Prepare: 20 sites with k = 4; compact directories from a real server
    from security.secagg_server import SecAggServer
    fed = Federation.create(SecAggConfig(federation_id="fed", vector_length=D, neighbours=4, threshold=3), 20)
    server = SecAggServer(fed.config, fed.sites, round_number=1)
    for s in fed.sites:
        server.receive_advertisement(s, fed.clients[s].advertise(1, fed.sites))
    server.close_advertisements()
    a, b, c = fed.sites[:3]
    mine = server.directory_for(a)
    graph = neighbours(fed.sites, k=4, round_seed=round_seed("fed", 1))
    others = [adv for adv in mine.advertisements if adv.site_id in graph[a]]
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="lacks the advertisement of neighbour"):
        fed.clients[a].share_keys(dataclasses.replace(mine, advertisements=tuple(
            adv for adv in mine.advertisements if adv.site_id != others[0].site_id)), verify_keys=fed.verify_keys)
    theirs = server.directory_for(b)
    victim = next(adv.site_id for adv in theirs.advertisements if adv.site_id in graph[b])
    hidden = tuple(i for i in theirs.site_ids if i != victim)
    with pytest.raises(InvalidMessage, match="omit an advertiser"):
        fed.clients[b].share_keys(dataclasses.replace(theirs, site_ids=hidden), verify_keys=fed.verify_keys)
    assert len(fed.clients[c].share_keys(server.directory_for(c), verify_keys=fed.verify_keys)) == 4


def test_shares_made_for_another_advertiser_list_are_refused() -> None:
    # Prepare: 20 sites, k = 4; the coordinator shows site b a list without one advertiser (another graph)
    from security.errors import ShareInvalid
    from security.secagg_server import SecAggServer
    fed = Federation.create(SecAggConfig(federation_id="fed", vector_length=D, neighbours=4, threshold=3), 20)
    server = SecAggServer(fed.config, fed.sites, round_number=1)
    for s in fed.sites:
        server.receive_advertisement(s, fed.clients[s].advertise(1, fed.sites))
    server.close_advertisements()
    graph = neighbours(fed.sites, k=4, round_seed=round_seed("fed", 1))
    a = fed.sites[0]
    b = sorted(graph[a])[0]
    far = next(s for s in fed.sites if s not in within_hops(graph, b, 3) | within_hops(graph, a, 3))
    honest = server.directory_for(a)
    lie = dataclasses.replace(server.directory_for(b), site_ids=tuple(s for s in fed.sites if s != far))
    shares_a = fed.clients[a].share_keys(honest, verify_keys=fed.verify_keys)
    fed.clients[b].share_keys(lie, verify_keys=fed.verify_keys)
    # Execute / Assert: b opens a's share only if both built the round graph from the same list
    with pytest.raises(ShareInvalid, match="another advertiser list"):
        fed.clients[b].masked_input([m for m in shares_a if m.recipient == b], np.zeros(D))
