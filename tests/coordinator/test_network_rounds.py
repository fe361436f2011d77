"""Networked rounds over real mutual-TLS gRPC on 127.0.0.1: sums, dropouts, aborts, hostile input."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from coordinator.server import upload_layout
from federation.round_codec import RoundOutcome
from pfmh_model.prototypes import PrototypeStats, global_prototypes
from proto import federation_pb2 as pb
from tests.netfed import FED, ScriptedSite, coordinator, coordinator_config, join_sites, make_pki

SITES = ["site-a", "site-b", "site-c", "site-d", "site-e", "site-f"]


def _inputs(layout, n: int, seed: int = 1) -> list[np.ndarray]:
    """Valid prototype statistics per site: sums (C, b) and positive counts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        stats = PrototypeStats(rng.normal(size=(layout.num_classes, layout.bits)),
                               rng.integers(1, 20, size=layout.num_classes).astype(float))
        out.append(stats.to_vector())
    return out


def _expected(layout, vectors: list[np.ndarray], seed: int = 0) -> np.ndarray:
    total = PrototypeStats.from_vector(np.sum(vectors, axis=0), layout.num_classes, layout.bits)
    return global_prototypes(total, None, bits=layout.bits, seed=seed)


def _cfg(tmp: Path, sites: list[str], **kw):
    cfg = coordinator_config(tmp, sites, **kw)
    return replace(cfg, server=replace(cfg.server, liveness_s=3.0, gather_s=0.5))


def _run_round(sites: list[ScriptedSite], vectors: list[np.ndarray], *, after: int = 0,
               drop_after_share: tuple[str, ...] = (), drop_after_masked: tuple[str, ...] = (),
               drop_after_signing: tuple[str, ...] = ()) -> list[RoundOutcome]:
    configs = [s.wait_round(after) for s in sites]
    for s, c in zip(sites, configs, strict=True):
        s.advertise(c)
    for s in sites:
        s.share_keys()
    alive = [s for s in sites if s.name not in drop_after_share]
    for s in alive:
        s.masked_input(vectors[sites.index(s)])
    signers = [s for s in alive if s.name not in drop_after_masked]
    for s in signers:
        s.sign_survivors()
    responders = [s for s in signers if s.name not in drop_after_signing]
    for s in responders:
        s.unmask()
    return [s.result() for s in responders]


def _sites(port, pki, cfg, names):
    layout = upload_layout(cfg.federation)
    sites = join_sites(port, pki, cfg, names)
    return sites, layout


def test_round_unmasks_exact_sum_of_all_sites(tmp_path: Path) -> None:
    # Prepare
    names = SITES[:3]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        vectors = _inputs(layout, 3)
        # Execute
        results = _run_round(sites, vectors)
        # Assert
        assert all(r.status == pb.READY for r in results)
        got = results[0].prototypes.reshape(layout.num_classes, layout.bits)
        np.testing.assert_allclose(got, _expected(layout, vectors), atol=1e-5)
        assert engine.state.completed_rounds == 1
        assert sorted(results[0].survivors) == names


def test_dropouts_after_share_keys_and_after_masked_input_complete_above_threshold(tmp_path: Path) -> None:
    # Prepare: 6 sites, full graph, threshold 4; one drops after share-keys, one after masked input and its
    # survivor-set signature (a survivor silent before it signs keeps its self seed hidden: the round aborts,
    # tests/security/test_secagg_protocol.py)
    names = SITES[:6]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names, min_sites=3, phase_timeout_s=2.0)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        vectors = _inputs(layout, 6)
        # Execute
        results = _run_round(sites, vectors, drop_after_share=("site-b",), drop_after_signing=("site-e",))
        # Assert: the sum holds exactly the 5 sites that sent masked inputs (site-e's input counts).
        assert all(r.status == pb.READY for r in results)
        survivors = [v for n, v in zip(names, vectors, strict=True) if n != "site-b"]
        got = results[0].prototypes.reshape(layout.num_classes, layout.bits)
        np.testing.assert_allclose(got, _expected(layout, survivors), atol=1e-5)
        assert engine.state.history[-1]["outcome"] == "completed"
        # the round log: whose masked inputs entered the revealed sum (the audit's witness), out of the cohort
        assert engine.state.history[-1]["inputs"] == [n for n in names if n != "site-b"]
        assert engine.state.history[-1]["cohort"] == names and engine.state.open_round is None


def test_round_below_threshold_aborts_revealing_nothing_and_next_round_runs(tmp_path: Path) -> None:
    # Prepare: 5 sites, threshold 4: one drops after share-keys, one after masked input -> 3 responders < 4.
    names = SITES[:5]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names, min_sites=3, phase_timeout_s=2.0)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        vectors = _inputs(layout, 5)
        # Execute
        results = _run_round(sites, vectors, drop_after_share=("site-a",), drop_after_masked=("site-d",))
        # Assert: aborted, nothing decoded, the state unchanged
        assert all(r.status == pb.ABORTED for r in results)
        assert all(r.prototypes is None for r in results)
        assert engine.state.completed_rounds == 0 and engine.state.prototypes is None
        assert engine.state.history[-1]["outcome"] == "aborted"
        assert engine.state.history[-1]["inputs_received"] == ["site-b", "site-c", "site-d", "site-e"]
        # Execute: the remaining sites run the next round (the dropped ones are no longer live)
        rest = [s for s in sites if s.name in ("site-b", "site-c", "site-e")]
        first = results[0]
        again = _run_round(rest, [vectors[names.index(s.name)] for s in rest], after=first.round)
        # Assert
        assert all(r.status == pb.READY for r in again)
        assert again[0].round > first.round
        assert engine.state.completed_rounds == 1


def test_hostile_messages_are_rejected_and_the_server_keeps_serving(tmp_path: Path) -> None:
    # Prepare
    names = SITES[:3]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names, max_message_mb=1)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        vectors = _inputs(layout, 3)
        a = sites[0]
        configs = [s.wait_round(0) for s in sites]
        advert = a.advertise(configs[0])
        for s, c in zip(sites[1:], configs[1:], strict=True):
            s.advertise(c)

        def refused(call) -> grpc.StatusCode:  # noqa: ANN001
            with pytest.raises(grpc.RpcError) as info:
                call()
            return info.value.code()

        # Execute / Assert: duplicate advertisement
        dup = pb.AdvertiseKeysRequest(federation_id=FED, round=a.round, share_public_key=advert.share_public_key,
                                      mask_public_key=advert.mask_public_key, signature=advert.signature)
        assert refused(lambda: a.stub.AdvertiseKeys(dup, timeout=5)) in (grpc.StatusCode.INVALID_ARGUMENT,
                                                                        grpc.StatusCode.FAILED_PRECONDITION)
        # replay into an earlier (unknown) round, and into a phase that is not open
        old = pb.AdvertiseKeysRequest(federation_id=FED, round=a.round - 1 if a.round > 1 else 99,
                                      share_public_key=advert.share_public_key,
                                      mask_public_key=advert.mask_public_key, signature=advert.signature)
        assert refused(lambda: a.stub.AdvertiseKeys(old, timeout=5)) == grpc.StatusCode.FAILED_PRECONDITION
        # wrong federation
        other = pb.PhaseQuery(federation_id="other", round=a.round)
        assert refused(lambda: a.stub.GetShares(other, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
        for s in sites:
            s.share_keys()
        # wrong vector length
        short = pb.MaskedInputRequest(federation_id=FED, round=a.round, masked_uint64_le=b"\0" * 8, vector_length=1)
        a.poll("GetShares")
        assert refused(lambda: a.stub.SubmitMaskedInput(short, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
        # oversized message (> max_message_mb = 1 MiB)
        huge = pb.MaskedInputRequest(federation_id=FED, round=a.round, masked_uint64_le=b"\0" * (2 << 20),
                                     vector_length=(2 << 20) // 8)
        assert refused(lambda: a.stub.SubmitMaskedInput(huge, timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Assert: the round still completes normally, with the true sum
        for s, v in zip(sites, vectors, strict=True):
            s.masked_input(v)
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        result = a.result()
        assert result.status == pb.READY
        got = result.prototypes.reshape(layout.num_classes, layout.bits)
        np.testing.assert_allclose(got, _expected(layout, vectors), atol=1e-5)
        assert engine.metrics.rejected.labels("AdvertiseKeys")._value.get() >= 2


def test_leave_mid_federation_stalls_it_and_leave_after_the_last_round_is_quiet(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: 3 sites, all needed (min_sites 3), one round
    names = SITES[:3]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names, rounds=1)
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        # Execute 1: the round runs; after it every site leaves, as daemons do at the end
        results = _run_round(sites, _inputs(layout, 3))
        caplog.clear()
        for s in sites:
            s.stub.Leave(pb.LeaveRequest(federation_id=FED, reason="federation finished"), timeout=10)
        # Assert 1: a normal end, logged without warnings or errors
        assert all(r.status == pb.READY for r in results)
        assert engine.finished and engine.state.completed_rounds == 1
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    # Execute 2: a fresh federation of 2 rounds where one site leaves before the end
    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    pki = make_pki(tmp2, names)
    cfg = _cfg(tmp2, names, rounds=2)
    with coordinator(tmp2, cfg) as (port, engine):
        layout = upload_layout(cfg.federation)
        first, second = (ScriptedSite(n, port, pki, cfg.federation, layout.length) for n in names[:2])
        first.join()
        caplog.clear()
        first.stub.Leave(pb.LeaveRequest(federation_id=FED, reason="maintenance"), timeout=10)
        second.join()
        reply = second.wait_round(0)
        # Assert 2: too few sites remain, so the federation is over, said loudly, and sites are told
        assert "only 2 sites remain < min_sites 3" in engine.stalled
        assert reply.status == pb.FINISHED and engine.state.completed_rounds == 0
        assert any(r.levelname == "ERROR" and "cannot continue" in r.getMessage() for r in caplog.records)


def test_secagg_plus_relays_each_site_only_its_neighbours_keys(tmp_path: Path) -> None:
    # Prepare: 6 sites on a sparse SecAgg+ graph (k = 4 of 5 possible neighbours)
    names = SITES[:6]
    pki = make_pki(tmp_path, names)
    cfg = _cfg(tmp_path, names)
    # semi-honest mode: with the consistency check a site is also sent the sites within three hops
    # (all 6 here); tests/security/test_secagg_server.py checks that window on 20 sites
    cfg = replace(cfg, federation=replace(cfg.federation, secagg=replace(cfg.federation.secagg, neighbours=4,
                                                                         consistency_check=False)))
    with coordinator(tmp_path, cfg) as (port, engine):
        sites, layout = _sites(port, pki, cfg, names)
        vectors = _inputs(layout, 6)
        configs = [s.wait_round(0) for s in sites]
        for s, c in zip(sites, configs, strict=True):
            s.advertise(c)
        # Execute: what each site is sent in the key-directory phase, then the rest of the round
        directories = [s.poll("GetAdvertisements") for s in sites]
        for s in sites:
            s.share_keys()
        for s, v in zip(sites, vectors, strict=True):
            s.masked_input(v)
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        results = [s.result() for s in sites]
        # Assert: own + 4 neighbours' advertisements (not all 6) plus the 6 advertiser ids; exact sum
        for name, ads in zip(names, directories, strict=True):
            assert len(ads.advertisements) == 5 and name in {a.site for a in ads.advertisements}
            assert list(ads.advertisers) == names
        assert all(r.status == pb.READY for r in results)
        got = results[0].prototypes.reshape(layout.num_classes, layout.bits)
        np.testing.assert_allclose(got, _expected(layout, vectors), atol=1e-5)
