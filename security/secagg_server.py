"""Coordinator side of secure aggregation: relay keys, route shares, sum masked inputs, unmask the sum.

One :class:`SecAggServer` per round. For each phase the coordinator calls ``receive_*`` once per arriving
message (with the sender id taken from the verified TLS certificate) and then ``close_*`` when the phase's
deadline passes; sites that sent nothing by then count as dropped. After ``close_advertisements`` each site
gets ``directory_for(site)``; with the consistency check, after ``close_masked_inputs`` every survivor signs
the survivor view (``receive_survivor_signature``) and after ``close_consistency`` gets the signatures of the
holders it must count; after ``close_shares`` each site gets its whole inbox (all or nothing: a site
that masks with fewer neighbours than the server believes would corrupt the sum). ``finish`` reconstructs the secrets it
needs and returns the decoded sum of the survivors' inputs.

Security:
    By construction the server never holds a single site's unmasked vector: there is no method that takes
    an unmasked vector, masked inputs are added into one running sum on arrival and not kept, and
    ``finish`` only removes masks from that sum. It reconstructs a survivor's self seed or a dropout's mask
    key, never both for one site. Every reconstructed mask key is checked against the site's advertised
    public key. If a secret cannot be reconstructed from t shares the round aborts with RoundAborted and no
    sum is returned.

References:
    Bonawitz et al., CCS 2017, Sec. 4 (server side of Fig. 4); Bell et al., CCS 2020, Sec. 3.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from security import fixed_point, shamir
from security.consistency import SurvivorSignature, SurvivorView, verify_view
from security.context import SessionContext
from security.errors import InvalidMessage, RoundAborted, ShareInvalid
from security.key_agreement import AgreementPrivateKey, AgreementPublicKey, derive_mask_seed
from security.masking import PairwiseMask, remove_masks
from security.neighbours import neighbours, round_seed, within_hops
from security.prg import MaskSeed
from security.secagg_config import RoundPlan, SecAggConfig
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from security.secagg_server_round import AggregateResult, ServerRound, compact_directory, revealed_shares
from security.signing import VerifyKey, verify_key_bundle
from security.stages import Stage, check_transition, require_stage

logger = logging.getLogger(__name__)
CHECK_HOPS = 3  # a survivor counts signatures of the holders of its neighbours' holders


class SecAggServer:
    """Server state machine for one round of secure aggregation over ``cohort``.

    Args:
        config: federation-wide settings.
        cohort: the site ids selected for this round.
        round_number: the round number every message must carry.

    Raises:
        InvalidMessage: duplicate ids in the cohort or a bad round number.
        UnsafeConfiguration, OverflowRisk: the config is unsafe for this cohort size.

    Not thread-safe: the coordinator must serialise calls for one round (e.g. one lock per round).
    """

    __slots__ = ("_config", "_cohort", "_round", "_stage", "_state")

    def __init__(self, config: SecAggConfig, cohort: Sequence[str], *, round_number: int) -> None:
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
            raise InvalidMessage(f"round_number={round_number!r} must be an int >= 0")
        if len(set(cohort)) != len(cohort):
            raise InvalidMessage(f"cohort has duplicate site ids: {sorted(cohort)}")
        self._config = config
        self._cohort = frozenset(cohort)
        self._round = round_number
        self._state: ServerRound | None = ServerRound(config.plan(len(cohort)))
        self._stage = Stage.ADVERTISE_KEYS

    def __repr__(self) -> str:
        return f"SecAggServer(round={self._round}, stage={self._stage}, cohort={len(self._cohort)})"

    @property
    def stage(self) -> Stage:
        """Current stage."""
        return self._stage

    @property
    def plan(self) -> RoundPlan:
        """k, t and neighbourhood size of this round."""
        return self._live().plan

    def _live(self) -> ServerRound:
        if self._state is None:
            raise RoundAborted(f"round {self._round} is over (stage {self._stage}); start a new SecAggServer")
        return self._state

    def abort(self, reason: str) -> RoundAborted:
        """End the round, drop all state, and return the RoundAborted to raise."""
        logger.warning("secure aggregation round %s aborted in %s: %s", self._round, self._stage, reason)
        self._state = None
        if self._stage is not Stage.DONE:
            self._stage = Stage.ABORTED
        return RoundAborted(reason)

    def _check(self, stage: Stage, action: str, sender: str, federation_id: str, round_number: int,
               site_id: str, allowed: Mapping[str, object] | frozenset[str] | set[str]) -> ServerRound:
        require_stage(self._stage, stage, action=action)
        state = self._live()
        if federation_id != self._config.federation_id or round_number != self._round:
            raise InvalidMessage(f"{action} for ({federation_id!r}, round {round_number}) but this round is "
                                 f"({self._config.federation_id!r}, {self._round})")
        if site_id != sender:
            raise InvalidMessage(f"{action} names site {site_id!r} but the certificate says {sender!r}")
        if sender not in allowed:
            raise InvalidMessage(f"{action} from {sender!r}, which is not expected in this phase")
        return state

    def _need_threshold(self, count: int, what: str) -> None:
        t = self._live().plan.threshold
        if count < t:
            raise self.abort(f"{count} {what} < threshold {t}")

    # Phase 2 ---------------------------------------------------------------------------------------
    def receive_advertisement(self, sender: str, message: AdvertiseKeys, *,
                              verify_key: VerifyKey | None = None) -> None:
        """Accept one site's signed public keys.

        Args:
            verify_key: the sender's certificate-bound key; when given, the signature is checked here too,
                so a forged or replayed advertisement is refused before it is relayed (peers check again).

        Raises:
            SignatureInvalid: ``verify_key`` given and the bundle is not signed by it for this round.
            InvalidMessage: wrong round/federation/sender, duplicate, or a public key already advertised.
        """
        state = self._check(Stage.ADVERTISE_KEYS, "AdvertiseKeys", sender, message.federation_id,
                            message.round, message.site_id, self._cohort)
        if sender in state.adverts:
            raise InvalidMessage(f"duplicate AdvertiseKeys from {sender!r}")
        if verify_key is not None:
            verify_key_bundle(verify_key=verify_key, context=message.context(),
                              share_public_key=AgreementPublicKey.from_bytes(message.share_public_key),
                              mask_public_key=AgreementPublicKey.from_bytes(message.mask_public_key),
                              signature=message.signature)
        used = {k for a in state.adverts.values() for k in (a.share_public_key, a.mask_public_key)}
        if {message.share_public_key, message.mask_public_key} & used or \
                message.share_public_key == message.mask_public_key:
            raise InvalidMessage(f"AdvertiseKeys from {sender!r} reuses a public key already advertised "
                                 f"this round (a replay)")
        state.adverts[sender] = message

    def close_advertisements(self) -> KeyDirectory:
        """End phase 2: fix the advertised set and the round graph; return the directory to relay."""
        check_transition(self._stage, Stage.SHARE_KEYS)
        state = self._live()
        self._need_threshold(len(state.adverts), "sites advertised keys")
        order = sorted(state.adverts)
        state.graph = neighbours(order, k=state.plan.neighbours,
                                 round_seed=round_seed(self._config.federation_id, self._round))
        state.indices = {site: pos + 1 for pos, site in enumerate(order)}
        self._stage = Stage.SHARE_KEYS
        return KeyDirectory(self._config.federation_id, self._round, tuple(state.adverts[s] for s in order))

    def directory_for(self, site: str) -> KeyDirectory:
        """Compact directory for ``site``: its own and its neighbours' advertisements plus every advertiser's id.

        Relay this instead of the full directory to cut each site's download from O(n) advertisements to
        O(k); for a full graph it equals :meth:`close_advertisements`'s result.
        """
        require_stage(self._stage, Stage.SHARE_KEYS, action="directory_for")
        return compact_directory(self._live(), site, federation_id=self._config.federation_id,
                                 round_number=self._round,
                                 hops=CHECK_HOPS if self._config.consistency_check else 1)

    # Phase 3 ---------------------------------------------------------------------------------------
    def receive_shares(self, sender: str, shares: Sequence[EncryptedShare]) -> None:
        """Accept one site's encrypted shares: exactly one per graph neighbour."""
        require_stage(self._stage, Stage.SHARE_KEYS, action="ShareKeys")
        graph = self._live().graph or {}
        if sender not in graph:
            raise InvalidMessage(f"ShareKeys from {sender!r}, which did not advertise keys")
        for message in shares:
            self._check(Stage.SHARE_KEYS, "ShareKeys", sender, message.federation_id, message.round,
                        message.sender, graph)
        state = self._live()
        if sender in state.sealed:
            raise InvalidMessage(f"duplicate ShareKeys from {sender!r}")
        recipients = [m.recipient for m in shares]
        if len(set(recipients)) != len(recipients) or set(recipients) != graph[sender]:
            raise InvalidMessage(f"ShareKeys from {sender!r} must hold one share per neighbour "
                                 f"({len(graph[sender])}), got recipients {sorted(recipients)}")
        state.sealed[sender] = tuple(shares)

    def close_shares(self) -> dict[str, tuple[EncryptedShare, ...]]:
        """End phase 3: return, for every site that shared keys, the shares addressed to it."""
        check_transition(self._stage, Stage.MASKED_INPUT)
        state = self._live()
        self._need_threshold(len(state.sealed), "sites shared keys")
        inbox: dict[str, list[EncryptedShare]] = {site: [] for site in sorted(state.sealed)}
        for sender in sorted(state.sealed):
            for message in state.sealed[sender]:
                if message.recipient in inbox:
                    inbox[message.recipient].append(message)
        self._stage = Stage.MASKED_INPUT
        return {site: tuple(box) for site, box in inbox.items()}

    # Phase 4 ---------------------------------------------------------------------------------------
    def receive_masked_input(self, sender: str, message: MaskedInput) -> None:
        """Add one site's masked vector into the running sum (mod 2^64); the message is not kept."""
        state = self._check(Stage.MASKED_INPUT, "MaskedInput", sender, message.federation_id, message.round,
                            message.site_id, self._live().sealed)
        if sender in state.submitted:
            raise InvalidMessage(f"duplicate MaskedInput from {sender!r}")
        if message.vector_length != self._config.vector_length:
            raise InvalidMessage(f"MaskedInput from {sender!r} has {message.vector_length} values, "
                                 f"expected vector_length {self._config.vector_length}")
        if state.masked_sum is None:
            state.masked_sum = message.vector().copy()
        else:
            np.add(state.masked_sum, message.vector(), out=state.masked_sum)
        state.submitted.add(sender)

    def close_masked_inputs(self) -> UnmaskRequest:
        """End phase 4: name survivors and dropouts, after checking every needed secret is recoverable.

        Raises:
            RoundAborted: fewer than t survivors, or some dropout/survivor has fewer than t surviving
                holders of its shares (nothing has been revealed yet).
        """
        following = Stage.CONSISTENCY_CHECK if self._config.consistency_check else Stage.UNMASK
        check_transition(self._stage, following)
        state = self._live()
        graph, t = state.graph or {}, state.plan.threshold
        self._need_threshold(len(state.submitted), "sites sent masked inputs")
        survivors = state.submitted
        state.dropouts = tuple(sorted(state.sealed.keys() - survivors))
        for site in sorted(survivors | set(state.dropouts)):
            holders = graph[site] & survivors | ({site} & survivors)
            if len(holders) < t:
                raise self.abort(f"only {len(holders)} surviving holders of {site!r}'s shares "
                                 f"< threshold {t}")
        self._stage = following
        state.request = UnmaskRequest(self._config.federation_id, self._round, tuple(sorted(survivors)),
                                      state.dropouts)
        return state.request

    # Phase 5a (consistency check) ------------------------------------------------------------------
    def view(self, request: UnmaskRequest | None = None) -> SurvivorView:
        """The survivor view a site told ``request`` (default: this server's own request) must sign."""
        request = request or self._live().request
        if request is None:
            raise InvalidMessage("no unmask request yet; close the masked inputs first")
        return SurvivorView(self._config.federation_id, self._round, tuple(sorted(self._live().adverts)),
                            tuple(sorted(request.survivors)), tuple(sorted(request.dropouts)))

    def receive_survivor_signature(self, sender: str, message: SurvivorSignature, *,
                                   verify_key: VerifyKey | None = None,
                                   request: UnmaskRequest | None = None) -> None:
        """Accept one survivor's signature on its survivor view.

        Args:
            verify_key: the sender's certificate-bound key; when given the signature is checked against the
                view of ``request`` (what the sender was told; default this server's request).

        Raises:
            SignatureInvalid: the signature does not sign that view.
            InvalidMessage: wrong round or sender, not a survivor, or a duplicate.
        """
        state = self._check(Stage.CONSISTENCY_CHECK, "SurvivorSignature", sender, message.federation_id,
                            message.round, message.site_id, self._live().submitted)
        if sender in state.signatures:
            raise InvalidMessage(f"duplicate SurvivorSignature from {sender!r}")
        if verify_key is not None:
            verify_view(verify_key=verify_key, view=self.view(request), signature=message)
        state.signatures[sender] = message

    def close_consistency(self) -> dict[str, tuple[SurvivorSignature, ...]]:
        """End phase 5a: for every survivor that signed, the signatures of the sites within three graph hops.

        Raises:
            RoundAborted: fewer than t survivors signed (nothing has been revealed).
        """
        check_transition(self._stage, Stage.UNMASK)
        state = self._live()
        self._need_threshold(len(state.signatures), "survivors signed the survivor set")
        graph = state.graph or {}
        bundles = {site: tuple(state.signatures[s]
                               for s in sorted(within_hops(graph, site, CHECK_HOPS) & state.signatures.keys()))
                   for site in sorted(state.signatures)}
        self._stage = Stage.UNMASK
        return bundles

    # Phase 5 ---------------------------------------------------------------------------------------
    def receive_unmask_response(self, sender: str, message: UnmaskResponse) -> None:
        """Store one survivor's revealed shares after checking it may hold each of them."""
        state = self._check(Stage.UNMASK, "UnmaskResponse", sender, message.federation_id, message.round,
                            message.site_id, self._live().submitted)
        if sender in state.responded:
            raise InvalidMessage(f"duplicate UnmaskResponse from {sender!r}")
        parsed = revealed_shares(state, sender, message)
        for target, owner, share in parsed:
            target.setdefault(owner, []).append(share)
        state.responded.add(sender)

    def _reconstruct(self, shares: list[shamir.Share], owner: str, what: str,
                     cache: dict[tuple[int, ...], tuple[int, ...]]) -> bytes:
        t = self._live().plan.threshold
        if len(shares) < t:
            raise self.abort(f"{len(shares)} shares of {owner!r}'s {what} < threshold {t}")
        used = tuple(sorted(s.index for s in shares)[:t])
        if used not in cache:
            cache[used] = shamir.lagrange_at_zero(used)
        try:
            return shamir.combine(shares, threshold=t, coefficients=cache[used])
        except ShareInvalid as exc:
            raise self.abort(f"cannot reconstruct {owner!r}'s {what}: {exc}") from exc

    def finish(self) -> AggregateResult:
        """End phase 5: reconstruct, remove the masks and decode the survivors' sum.

        Raises:
            RoundAborted: a needed secret has fewer than t shares or fails its integrity check, or a
                reconstructed mask key does not match the advertised one. No sum is returned.
        """
        check_transition(self._stage, Stage.DONE)
        state = self._live()
        cache: dict[tuple[int, ...], tuple[int, ...]] = {}
        survivors = tuple(sorted(state.submitted))
        self_seeds = [MaskSeed(self._reconstruct(state.seed_shares.get(v, []), v, "self seed", cache))
                      for v in survivors]
        mask_keys: dict[str, AgreementPrivateKey] = {}
        for u in state.dropouts:
            key = AgreementPrivateKey.from_secret_bytes(
                self._reconstruct(state.key_shares.get(u, []), u, "mask key", cache))
            if key.public_key() != AgreementPublicKey.from_bytes(state.adverts[u].mask_public_key):
                raise self.abort(f"reconstructed mask key of {u!r} does not match its advertised key")
            mask_keys[u] = key
        graph, total = state.graph or {}, state.masked_sum
        if total is None:
            raise self.abort("no masked input was summed")
        pairwise = [PairwiseMask(derive_mask_seed(
            private_key=mask_keys[u], context=self._pair(u, v),
            peer_public_key=AgreementPublicKey.from_bytes(state.adverts[v].mask_public_key)), v, u)
            for u in state.dropouts for v in sorted(graph[u] & state.submitted)]
        remove_masks(total, self_seeds=self_seeds, pairwise=pairwise, algorithm=self._config.prg)
        result = AggregateResult(fixed_point.decode(total, fraction_bits=self._config.fraction_bits),
                                 survivors, state.dropouts)
        self._state, self._stage = None, Stage.DONE
        logger.info("secure aggregation round %s done: %d survivors, %d dropouts", self._round,
                    len(survivors), len(state.dropouts))
        return result

    def _pair(self, a: str, b: str) -> SessionContext:
        return SessionContext.pair(self._config.federation_id, self._round, a, b)
