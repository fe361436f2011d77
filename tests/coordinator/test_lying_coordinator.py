"""Issue #16: a coordinator that lies about the survivor set, run as the real coordinator on 127.0.0.1 with
the real SecAggClient in every site; the lie is a test-only replacement of ``RoundEngine.unmask_request_for``.

The attack (n = 10, k = 8, t = 6, two colluding sites, within the bound 2t > m + c = 9 + 2): every honest
site is told a different survivor set. Each set keeps the target v and the colluders, but names as dropped
most of v's honest neighbours. So the honest sites reveal v's self-seed shares *and* the mask-key shares of
each of v's honest neighbours, which with the colluders' own secrets unmask v's individual input. Against
the semi-honest protocol (today's main) the target's input comes back; with the consistency check every
honest site refuses, because no one else signed the set it was shown.
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.server import upload_layout
from security import fixed_point, shamir
from security.consistency import SurvivorView, sign_view
from security.context import SessionContext
from security.errors import RoundAborted
from security.key_agreement import AgreementPrivateKey, AgreementPublicKey, derive_mask_seed
from security.masking import PairwiseMask, remove_masks
from security.neighbours import neighbours, round_seed
from security.prg import MaskSeed, PrgAlgorithm
from security.secagg_messages import AdvertiseKeys, UnmaskRequest, UnmaskResponse
from security.signing import SigningKey
from tests.netfed import FED, coordinator, coordinator_config, join_sites, make_pki

NAMES = [f"site-{i}" for i in range(10)]
T = 6


def _cast(graph: dict[str, frozenset[str]]) -> tuple[str, list[str], list[str], dict[str, set[str]]]:
    """The target, the two colluders (a ring-opposite pair, so both neighbour everyone else), the honest
    neighbours of the target, and the survivor set each honest site is told."""
    target = NAMES[0]
    (opposite,) = set(NAMES) - graph[target] - {target}
    colluders = next([c, d] for c in sorted(graph[target]) for d in set(NAMES) - graph[c] - {c}
                     if d not in (target, opposite))
    honest = sorted(graph[target] - set(colluders))
    base = {target, opposite, *colluders}
    rng = random.Random(16)
    for _ in range(20_000):  # each honest site is told a set of t = 6 that names few of the others
        told = {w: base | {w, rng.choice([h for h in honest if h != w])} for w in honest}
        told[target] = base | set(rng.sample(honest, 2))
        told[opposite] = base | set(rng.sample(honest, 2))
        # every honest neighbour j of the target must be named as dropped by >= t - c = 4 honest holders
        if all(sum(1 for w in told if w != j and w in graph[j] and j not in told[w]) >= T - 2 for j in honest):
            return target, colluders, honest, told
    raise AssertionError("no set of lies found for this round graph")


def _attack(tmp_path: Path, *, consistency_check: bool) -> dict:  # type: ignore[type-arg]
    pki = make_pki(tmp_path, NAMES)
    cfg = coordinator_config(tmp_path, NAMES, rounds=1, phase_timeout_s=3.0)
    cfg = replace(cfg, federation=replace(cfg.federation, secagg=replace(
        cfg.federation.secagg, consistency_check=consistency_check, colluders=2)),
        server=replace(cfg.server, liveness_s=30.0, gather_s=0.5))
    seen: dict = {"masked": {}, "responses": {}, "adverts": {}, "aborted": []}  # type: ignore[type-arg]
    with coordinator(tmp_path, cfg) as (port, engine):
        layout = upload_layout(cfg.federation)
        sites = {s.name: s for s in join_sites(port, pki, cfg, NAMES)}
        configs = {n: s.wait_round(0) for n, s in sites.items()}
        number = configs[NAMES[0]].round
        assert configs[NAMES[0]].threshold == T
        graph = neighbours(NAMES, k=8, round_seed=round_seed(FED, number))
        target, colluders, honest, told = _cast(graph)
        lies = {w: UnmaskRequest(FED, number, tuple(sorted(s)), tuple(sorted(set(NAMES) - s)))
                for w, s in told.items()}
        # the lying coordinator: per-site survivor sets, and it keeps what the sites send
        truthful = engine.unmask_request_for
        engine.unmask_request_for = lambda site, run: lies.get(site) or truthful(site, run)
        for name, method in (("masked", "submit_masked_input"), ("adverts", "submit_advertisement")):
            original = getattr(engine, method)

            def record(site, message, *rest, _original=original, _into=seen[name]):  # noqa: ANN001, ANN202
                _into[site] = message
                return _original(site, message, *rest)
            setattr(engine, method, record)
        engine.submit_unmask = lambda site, message: seen["responses"].__setitem__(site, message)
        colluder_keys = {c: SigningKey.load(pki.root / c / "signing.key", passphrase=None) for c in colluders}
        original_await = engine.await_signatures

        def relay_forged(site, round_number, timeout_s):  # noqa: ANN001, ANN202
            status, run = original_await(site, round_number, timeout_s)
            if run is not None and run.signatures is not None and site in lies:
                view = SurvivorView(FED, number, tuple(NAMES), lies[site].survivors, lies[site].dropouts)
                received = engine.runs[number].server._live().signatures
                same = [s for w, s in received.items() if lies.get(w) == lies[site]]
                run.signatures[site] = (*same, *(sign_view(signing_key=colluder_keys[c], view=view, signer=c)
                                                 for c in colluders))
            return status, run
        engine.await_signatures = relay_forged

        vectors = {n: np.random.default_rng(k).normal(size=layout.length) for k, n in enumerate(NAMES)}
        for n, s in sites.items():
            s.advertise(configs[n])
        for s in sites.values():
            s.share_keys()
        stolen_keys = {}
        for n, s in sites.items():
            if n in colluders:  # a colluder keeps its own mask key (it knows its pairwise seeds)
                stolen_keys[n] = s.secagg._state.mask_key
            s.masked_input(vectors[n])
        # the colluders hand over everything they hold: both shares of every neighbour
        held = {c: dict(sites[c].secagg._state.held) for c in colluders}
        for n in told:
            sites[n].sign_survivors()
        for n in told:
            try:
                sites[n].unmask()
            except RoundAborted as exc:
                seen["aborted"].append(n)
                seen.setdefault("reasons", []).append(f"{n}: {exc}")
        seen.update(target=target, told=told, colluders=colluders, honest=honest, held=held, stolen=stolen_keys,
                    vector=vectors[target], config=sites[target].secagg._config, number=number)
        for s in sites.values():
            s.close()
    return seen


def _shares(seen: dict, owner: str, kind: int) -> list[shamir.Share]:  # type: ignore[type-arg]
    """``owner``'s shares of its mask key (kind 0) or self seed (kind 1) that the coalition holds."""
    out = [pair[kind] for held in seen["held"].values() for o, pair in held.items() if o == owner]
    for response in seen["responses"].values():
        assert isinstance(response, UnmaskResponse)
        items = response.mask_key_shares if kind == 0 else response.self_seed_shares
        out += [shamir.Share.from_bytes(item.share) for item in items if item.owner == owner]
    return out


def _unmask_target(seen: dict) -> np.ndarray:  # type: ignore[type-arg]
    """What the coalition computes from the target's masked input with the secrets it collected."""
    target, config = seen["target"], seen["config"]
    adverts: dict[str, AdvertiseKeys] = seen["adverts"]
    graph = neighbours(NAMES, k=8, round_seed=round_seed(FED, seen["number"]))
    self_seed = MaskSeed(shamir.combine(_shares(seen, target, 1), threshold=T))
    pairwise = []
    for peer in sorted(graph[target]):
        key = seen["stolen"].get(peer) or AgreementPrivateKey.from_secret_bytes(
            shamir.combine(_shares(seen, peer, 0), threshold=T))
        seed = derive_mask_seed(private_key=key, context=SessionContext.pair(FED, seen["number"], target, peer),
                                peer_public_key=AgreementPublicKey.from_bytes(adverts[target].mask_public_key))
        pairwise.append(PairwiseMask(seed, target, peer))
    total = seen["masked"][target].vector().copy()
    remove_masks(total, self_seeds=[self_seed], pairwise=pairwise, algorithm=PrgAlgorithm(config.prg))
    return fixed_point.decode(total, fraction_bits=config.fraction_bits)


def test_semi_honest_protocol_gives_a_lying_coordinator_one_sites_input(tmp_path: Path) -> None:
    # Execute: the protocol of today's main (no consistency check) against the lying coordinator
    seen = _attack(tmp_path, consistency_check=False)
    # Assert: the honest sites answered their individual lies, and the target's own input comes back
    assert set(seen["responses"]) == set(seen["told"]) and not seen["aborted"]
    np.testing.assert_allclose(_unmask_target(seen), seen["vector"], atol=1e-5)


def test_consistency_check_refuses_every_lie_so_nothing_is_revealed(tmp_path: Path) -> None:
    # Execute: the same attack, the same colluders, with the consistency check (the default)
    seen = _attack(tmp_path, consistency_check=True)
    # Assert: every honest site refused (only it and the colluders signed its set), no share reached the
    # coordinator, and the coalition cannot rebuild the target's self seed (it holds 2 shares < t = 6)
    assert sorted(seen["aborted"]) == sorted(seen["told"])
    assert all("holders signed this site's survivor set < threshold 6" in r for r in seen["reasons"])
    assert seen["responses"] == {}
    assert len(_shares(seen, seen["target"], 1)) == 2 < T
    with pytest.raises(Exception, match="threshold|too few|shares"):
        _unmask_target(seen)
