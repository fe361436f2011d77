"""In-process driver for secure-aggregation rounds with dropouts at every phase (used by tests and bench)."""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from security.errors import RoundAborted
from security.secagg_client import SecAggClient
from security.secagg_config import SecAggConfig
from security.secagg_messages import MaskedInput
from security.secagg_server import AggregateResult, SecAggServer
from security.signing import SigningKey, VerifyKey


@dataclass
class Federation:
    """Sites with signing keys and trusted verify keys (as if taken from their certificates)."""

    config: SecAggConfig
    sites: list[str]
    clients: dict[str, SecAggClient] = field(default_factory=dict)
    verify_keys: dict[str, VerifyKey] = field(default_factory=dict)

    @classmethod
    def create(cls, config: SecAggConfig, n: int) -> Federation:
        sites = [f"site-{i:03d}" for i in range(n)]
        fed = cls(config, sites)
        for site in sites:
            key = SigningKey.generate()
            fed.clients[site] = SecAggClient(site, config=config, signing_key=key)
            fed.verify_keys[site] = key.verify_key()
        return fed


@dataclass
class Drops:
    """Sites that go silent before sending the message of a phase."""

    advertise: Collection[str] = ()
    share: Collection[str] = ()
    masked: Collection[str] = ()
    unmask: Collection[str] = ()
    sign: Collection[str] = ()   # consistency check: silent before signing the survivor set

    def total(self) -> int:
        return len(set(self.advertise) | set(self.share) | set(self.masked) | set(self.unmask) | set(self.sign))


Hook = Callable[[str, SecAggServer], None]


@dataclass
class Transcript:
    """What went over the wire (for tests that inspect it)."""

    masked: dict[str, MaskedInput] = field(default_factory=dict)
    client_aborts: list[str] = field(default_factory=list)


def run_round(fed: Federation, round_number: int, inputs: Mapping[str, np.ndarray], drops: Drops,
              *, after_phase: Hook | None = None, transcript: Transcript | None = None,
              compact: bool = True) -> AggregateResult:
    """Run one full round. A client that aborts locally (RoundAborted) is treated as a dropout.

    ``compact`` relays per-site directories (``directory_for``) instead of the full one.
    """
    hook = after_phase or (lambda name, server: None)
    record = transcript if transcript is not None else Transcript()
    try:
        return _run(fed, round_number, inputs, drops, hook, record, compact)
    finally:
        for client in fed.clients.values():
            client.abort()  # no-op for DONE clients; silent (dropped) ones forget their round


def _run(fed: Federation, round_number: int, inputs: Mapping[str, np.ndarray], drops: Drops, hook: Hook,
         record: Transcript, compact: bool) -> AggregateResult:
    server = SecAggServer(fed.config, fed.sites, round_number=round_number)

    def call(site: str, fn: Callable[[], object]) -> object | None:
        try:
            return fn()
        except RoundAborted:
            record.client_aborts.append(site)
            return None

    for s in fed.sites:
        adv = fed.clients[s].advertise(round_number, fed.sites)
        if s not in drops.advertise:
            server.receive_advertisement(s, adv, verify_key=fed.verify_keys[s])
    directory = server.close_advertisements()
    hook("advertise", server)
    alive = [s for s in fed.sites if s not in drops.advertise and s not in drops.share]
    for s in alive:
        mine = server.directory_for(s) if compact else directory
        shares = call(s, lambda s=s, mine=mine: fed.clients[s].share_keys(mine, verify_keys=fed.verify_keys))
        if shares is not None:
            server.receive_shares(s, shares)  # type: ignore[arg-type]
    inbox = server.close_shares()
    hook("share", server)
    for s in [s for s in alive if s not in drops.masked and s in inbox]:
        masked = call(s, lambda s=s: fed.clients[s].masked_input(inbox[s], inputs[s]))
        if isinstance(masked, MaskedInput):
            record.masked[s] = masked
            server.receive_masked_input(s, masked)
    hook("masked", server)
    request = server.close_masked_inputs()
    hook("close_masked", server)
    if not fed.config.consistency_check:
        for s in request.survivors:
            if s not in drops.unmask:
                server.receive_unmask_response(s, fed.clients[s].unmask(request))
        hook("unmask", server)
        result = server.finish()
        hook("finish", server)
        return result
    for s in request.survivors:  # with the check, ``unmask`` drops sign the survivor set, then go silent
        if s not in drops.sign:
            server.receive_survivor_signature(s, fed.clients[s].sign_survivors(request),
                                              verify_key=fed.verify_keys[s])
    bundles = server.close_consistency()
    hook("consistency", server)
    for s in [s for s in bundles if s not in drops.unmask]:
        response = call(s, lambda s=s: fed.clients[s].unmask(request, signatures=bundles[s],
                                                             verify_keys=fed.verify_keys))
        if response is not None:
            server.receive_unmask_response(s, response)  # type: ignore[arg-type]
    hook("unmask", server)
    result = server.finish()
    hook("finish", server)
    return result
