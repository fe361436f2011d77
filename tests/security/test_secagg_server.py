"""SecAggServer: every phase validates round, sender, duplicates, lengths and stage order."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from security.errors import InvalidMessage, RoundAborted, SignatureInvalid, StageOutOfOrder, UnsafeConfiguration
from security.secagg_config import SecAggConfig
from security.secagg_messages import MaskedInput, RevealedShare, UnmaskRequest, UnmaskResponse
from security.secagg_server import SecAggServer
from security.stages import Stage
from tests.security.secagg_harness import Federation

D = 3


@pytest.fixture
def fed() -> Federation:
    """Five sites, full graph, t = 4."""
    return Federation.create(SecAggConfig(federation_id="fed", vector_length=D, max_abs_value=10.0), 5)


def _advertised(fed: Federation) -> SecAggServer:
    server = SecAggServer(fed.config, fed.sites, round_number=1)
    for s in fed.sites:
        server.receive_advertisement(s, fed.clients[s].advertise(1, fed.sites))
    return server


def _shared(fed: Federation) -> tuple[SecAggServer, dict]:  # type: ignore[type-arg]
    server = _advertised(fed)
    directory = server.close_advertisements()
    for s in fed.sites:
        server.receive_shares(s, fed.clients[s].share_keys(directory, verify_keys=fed.verify_keys))
    return server, server.close_shares()


def _masked(fed: Federation) -> tuple[SecAggServer, UnmaskRequest]:
    server, inbox = _shared(fed)
    for s in fed.sites:
        server.receive_masked_input(s, fed.clients[s].masked_input(inbox[s], np.ones(D)))
    return server, server.close_masked_inputs()


def _checked(fed: Federation) -> tuple[SecAggServer, UnmaskRequest, dict]:  # type: ignore[type-arg]
    """All five sites sent masked inputs and signed the survivor set; the consistency phase is closed."""
    server, request = _masked(fed)
    for s in fed.sites:
        server.receive_survivor_signature(s, fed.clients[s].sign_survivors(request), verify_key=fed.verify_keys[s])
    return server, request, server.close_consistency()


def _reveal(fed: Federation, site: str, request: UnmaskRequest, bundles: dict) -> UnmaskResponse:  # type: ignore[type-arg]
    return fed.clients[site].unmask(request, signatures=bundles[site], verify_keys=fed.verify_keys)


def test_advertisement_checks(fed: Federation) -> None:
    # Prepare
    server = SecAggServer(fed.config, fed.sites, round_number=1)
    s0, s1 = fed.sites[:2]
    adv = fed.clients[s0].advertise(1, fed.sites)
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="certificate says"):
        server.receive_advertisement(s1, adv)
    server.receive_advertisement(s0, adv)
    with pytest.raises(InvalidMessage, match="duplicate AdvertiseKeys"):
        server.receive_advertisement(s0, adv)
    with pytest.raises(InvalidMessage, match="round 2"):
        server.receive_advertisement(s1, dataclasses.replace(adv, site_id=s1, round=2))
    with pytest.raises(InvalidMessage, match="not expected"):
        server.receive_advertisement("outsider", dataclasses.replace(adv, site_id="outsider"))
    with pytest.raises(StageOutOfOrder, match="ShareKeys belongs to stage share_keys"):
        server.receive_shares(s0, [])


def test_directory_is_sorted_and_stage_advances(fed: Federation) -> None:
    # Prepare
    server = _advertised(fed)
    # Execute
    directory = server.close_advertisements()
    # Assert
    assert [a.site_id for a in directory.advertisements] == sorted(fed.sites)
    assert server.stage is Stage.SHARE_KEYS
    with pytest.raises(StageOutOfOrder):
        server.close_advertisements()


def test_share_checks(fed: Federation) -> None:
    # Prepare
    server = _advertised(fed)
    directory = server.close_advertisements()
    s0, s1 = fed.sites[:2]
    shares = fed.clients[s0].share_keys(directory, verify_keys=fed.verify_keys)
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="one share per neighbour"):
        server.receive_shares(s0, shares[:-1])
    with pytest.raises(InvalidMessage, match="one share per neighbour"):
        server.receive_shares(s0, [*shares[:-1], shares[0]])
    with pytest.raises(InvalidMessage, match="certificate says"):
        server.receive_shares(s1, shares)
    server.receive_shares(s0, shares)
    with pytest.raises(InvalidMessage, match="duplicate ShareKeys"):
        server.receive_shares(s0, shares)


def test_masked_input_checks(fed: Federation) -> None:
    # Prepare
    server, inbox = _shared(fed)
    s0, s1 = fed.sites[:2]
    good = fed.clients[s0].masked_input(inbox[s0], np.ones(D))
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="4 values, expected vector_length 3"):
        server.receive_masked_input(s1, MaskedInput("fed", 1, s1, bytes(32)))
    with pytest.raises(InvalidMessage, match="round 9"):
        server.receive_masked_input(s0, dataclasses.replace(good, round=9))
    server.receive_masked_input(s0, good)
    with pytest.raises(InvalidMessage, match="duplicate MaskedInput"):
        server.receive_masked_input(s0, good)
    with pytest.raises(StageOutOfOrder):
        server.finish()


def test_unmask_response_checks(fed: Federation) -> None:
    # Prepare: all five survive
    server, request, bundles = _checked(fed)
    s0, s1 = fed.sites[:2]
    good = _reveal(fed, s0, request, bundles)
    seed_share = good.self_seed_shares[0]
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="not a dropout"):
        server.receive_unmask_response(s0, dataclasses.replace(good, mask_key_shares=(seed_share,)))
    with pytest.raises(InvalidMessage, match="repeats an owner"):
        server.receive_unmask_response(
            s0, dataclasses.replace(good, self_seed_shares=(seed_share, seed_share)))
    with pytest.raises(InvalidMessage, match="expected its own index"):
        server.receive_unmask_response(s1, UnmaskResponse("fed", 1, s1, (seed_share,), ()))
    with pytest.raises(InvalidMessage, match="not expected"):
        server.receive_unmask_response("outsider", UnmaskResponse("fed", 1, "outsider", (), ()))
    server.receive_unmask_response(s0, good)
    with pytest.raises(InvalidMessage, match="duplicate UnmaskResponse"):
        server.receive_unmask_response(s0, good)


def test_finish_needs_threshold_shares_and_returns_nothing_else(fed: Federation) -> None:
    # Prepare: only 3 of 5 survivors answer the unmask request, t = 4
    server, request, bundles = _checked(fed)
    for s in fed.sites[:3]:
        server.receive_unmask_response(s, _reveal(fed, s, request, bundles))
    # Execute / Assert
    with pytest.raises(RoundAborted, match="3 shares of .* < threshold 4"):
        server.finish()
    assert server.stage is Stage.ABORTED
    with pytest.raises(StageOutOfOrder, match="from stage aborted"):
        server.finish()


def test_tampered_revealed_share_aborts(fed: Federation) -> None:
    # Prepare: one survivor's response carries a modified share of site 0's seed
    server, request, bundles = _checked(fed)
    responses = {s: _reveal(fed, s, request, bundles) for s in fed.sites}
    bad = responses[fed.sites[1]]
    raw = bytearray(bad.self_seed_shares[0].share)
    raw[-1] ^= 1
    responses[fed.sites[1]] = dataclasses.replace(
        bad, self_seed_shares=(RevealedShare(bad.self_seed_shares[0].owner, bytes(raw)), *bad.self_seed_shares[1:]))
    for s in fed.sites:
        server.receive_unmask_response(s, responses[s])
    # Execute / Assert
    with pytest.raises(RoundAborted, match="tampered"):
        server.finish()


def test_abort_is_reported_and_final(fed: Federation) -> None:
    # Prepare
    server = _advertised(fed)
    # Execute
    error = server.abort("coordinator shutting down")
    # Assert
    assert isinstance(error, RoundAborted) and error.reason == "coordinator shutting down"
    with pytest.raises(StageOutOfOrder):
        server.close_advertisements()


def test_constructor_validates(fed: Federation) -> None:
    # Execute / Assert
    with pytest.raises(InvalidMessage, match="duplicate"):
        SecAggServer(fed.config, ["a", "a", "b"], round_number=1)
    with pytest.raises(UnsafeConfiguration):
        SecAggServer(fed.config, ["a"], round_number=1)
    assert "stage=advertise_keys" in repr(SecAggServer(fed.config, fed.sites, round_number=1))


def test_compact_directory_holds_neighbours_and_all_ids() -> None:
    # Prepare: 20 sites with k = 4, and a full-graph federation for comparison
    fed = Federation.create(SecAggConfig(federation_id="fed", vector_length=D, neighbours=4, threshold=3), 20)
    server = _advertised(fed)
    full = server.close_advertisements()
    small = Federation.create(SecAggConfig(federation_id="fed", vector_length=D), 5)
    small_server = _advertised(small)
    small_full = small_server.close_advertisements()
    # Execute
    compact = server.directory_for(fed.sites[0])
    # Assert
    # own + the sites within three hops (k = 4: 6 on either side of the ring): their signatures count
    assert len(compact.advertisements) == 13 and compact.site_ids == tuple(sorted(fed.sites))
    assert set(compact.advertisements) <= set(full.advertisements)
    assert small_server.directory_for(small.sites[0]) == small_full
    with pytest.raises(InvalidMessage, match="did not advertise"):
        server.directory_for("outsider")


def test_directory_for_needs_closed_advertisements(fed: Federation) -> None:
    # Prepare
    server = _advertised(fed)
    # Execute / Assert
    with pytest.raises(StageOutOfOrder):
        server.directory_for(fed.sites[0])


def test_forged_or_replayed_advertisement_is_refused_when_the_key_is_known(fed: Federation) -> None:
    # Prepare: site 1 replays site 0's advertisement as its own, and an old round's
    server = SecAggServer(fed.config, fed.sites, round_number=2)
    s0, s1 = fed.sites[:2]
    old = fed.clients[s1].advertise(1, fed.sites)
    adv = fed.clients[s0].advertise(2, fed.sites)
    # Execute / Assert
    with pytest.raises(SignatureInvalid, match="not signed by its certified key"):
        server.receive_advertisement(s1, dataclasses.replace(adv, site_id=s1), verify_key=fed.verify_keys[s1])
    with pytest.raises(SignatureInvalid):
        server.receive_advertisement(s1, dataclasses.replace(old, round=2), verify_key=fed.verify_keys[s1])
    server.receive_advertisement(s0, adv, verify_key=fed.verify_keys[s0])
    with pytest.raises(InvalidMessage, match="reuses a public key"):
        server.receive_advertisement(s1, dataclasses.replace(adv, site_id=s1))


def test_survivor_signature_checks(fed: Federation) -> None:
    # Prepare
    server, request = _masked(fed)
    s0, s1 = fed.sites[:2]
    good = fed.clients[s0].sign_survivors(request)
    # Execute / Assert: a signature on another view, a wrong key, a duplicate
    lie = UnmaskRequest("fed", 1, tuple(fed.sites[1:]), (s0,))
    with pytest.raises(SignatureInvalid, match="does not sign this site's survivor set"):
        server.receive_survivor_signature(s0, good, verify_key=fed.verify_keys[s0], request=lie)
    with pytest.raises(SignatureInvalid):
        server.receive_survivor_signature(s0, good, verify_key=fed.verify_keys[s1])
    with pytest.raises(InvalidMessage, match="certificate says"):
        server.receive_survivor_signature(s1, good)
    server.receive_survivor_signature(s0, good, verify_key=fed.verify_keys[s0])
    with pytest.raises(InvalidMessage, match="duplicate SurvivorSignature"):
        server.receive_survivor_signature(s0, good)
    with pytest.raises(RoundAborted, match="1 survivors signed the survivor set < threshold 4"):
        server.close_consistency()
