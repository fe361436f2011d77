"""Participant side of secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020).

One :class:`SecAggClient` per site; each round walks ``advertise -> share_keys -> masked_input ->
sign_survivors -> unmask`` (stages in ``security.stages``; ``sign_survivors`` is the consistency check,
skipped only in the semi-honest mode). All arithmetic and cryptography live in the small modules; this class only
validates, orders and wires them. Any failure inside a phase (bad signature, tampered ciphertext, too few
peers, a request that would reveal both secrets of one site) moves the round to ABORTED, forgets its secrets
and raises the specific error; a call in the wrong stage raises StageOutOfOrder and changes nothing.

Security:
    Peer signatures are checked with verify keys the caller already trusts (from peer certificates), never
    keys the coordinator sends. The neighbour graph is recomputed locally from the public round seed. For
    every site the client releases either the self-seed share (site survived) or the mask-key share (site
    dropped), never both, and only once per round. Every share is bound to the advertiser list its sender
    built the graph from, so neighbours that were shown different lists refuse each other's shares. Before
    revealing anything the client signs the survivor view it was told and requires, for every site whose
    share it reveals, valid signatures on the same view from t of that site's holders
    (``security.consistency``). Secrets are dropped as soon as they are no longer needed (Python cannot
    wipe memory; they are unreferenced). Threat model: a coordinator that may lie about dropouts, colluding
    with at most ``plan.colluders`` sites, ``2t > m + c`` (docs/PRIVACY.md).

References:
    Bonawitz et al., CCS 2017, Sec. 4 (Fig. 4) and Sec. 6 (consistency check); Bell et al., CCS 2020, Sec. 3.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from security import fixed_point, shamir, share_encryption
from security.consistency import (
    SurvivorSignature,
    SurvivorView,
    graph_digest,
    sign_view,
)
from security.context import BROADCAST, SessionContext
from security.errors import (
    InvalidMessage,
    RoundAborted,
    SecurityError,
    StageOutOfOrder,
)
from security.key_agreement import AgreementPrivateKey, AgreementPublicKey, derive_mask_seed, derive_share_key
from security.masking import PairwiseMask, apply_masks
from security.neighbours import neighbours, round_seed
from security.prg import MaskSeed
from security.secagg_client_round import (
    ClientRound,
    check_header,
    check_holder_signatures,
    check_unmask_request,
    need,
    open_share,
    verify_advertisement,
)
from security.secagg_config import SecAggConfig
from security.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    UnmaskRequest,
    UnmaskResponse,
    pack_share_pair,
)
from security.signing import SigningKey, VerifyKey, sign_key_bundle
from security.stages import Stage, check_transition

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class SecAggClient:
    """Secure-aggregation participant for site ``site_id``.

    Args:
        site_id: this site's id (as in its certificate).
        config: federation-wide settings (must equal the coordinator's).
        signing_key: the site's certified Ed25519 key, signs the advertised key bundle.
        rng_source: secret randomness (``os.urandom``; tests may inject a deterministic source).

    Not thread-safe: drive one client from one task at a time.
    """

    __slots__ = ("_site", "_config", "_signing_key", "_rng", "_stage", "_state", "_last_round")

    def __init__(self, site_id: str, *, config: SecAggConfig, signing_key: SigningKey,
                 rng_source: Callable[[int], bytes] = os.urandom) -> None:
        if not isinstance(site_id, str) or not site_id:
            raise InvalidMessage(f"site_id={site_id!r} must be a non-empty string")
        self._site = site_id
        self._config = config
        self._signing_key = signing_key
        self._rng = rng_source
        self._stage = Stage.IDLE
        self._state: ClientRound | None = None
        self._last_round = -1

    def __repr__(self) -> str:
        return f"SecAggClient({self._site!r}, stage={self._stage}, round={self._last_round})"

    @property
    def stage(self) -> Stage:
        """Current stage."""
        return self._stage

    @contextmanager
    def _phase(self, target: Stage) -> Iterator[ClientRound]:
        check_transition(self._stage, target)
        state = need(self._state)
        try:
            yield state
        except SecurityError as exc:
            logger.warning("site %s aborts round %s in %s: %s", self._site, self._last_round, target,
                           type(exc).__name__)
            self._state, self._stage = None, Stage.ABORTED
            raise
        self._stage = target

    def abort(self) -> None:
        """Forget this round's secrets (e.g. the coordinator announced an abort)."""
        self._state = None
        if self._stage not in (Stage.IDLE, Stage.DONE):
            self._stage = Stage.ABORTED

    def advertise(self, round_number: int, cohort: Sequence[str]) -> AdvertiseKeys:
        """Phase 2: start round ``round_number`` with ``cohort``; return signed fresh public keys.

        Raises:
            InvalidMessage: round not after the last one, duplicate ids or this site not in the cohort.
            UnsafeConfiguration, OverflowRisk: the config is unsafe for this cohort size.
        """
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number <= self._last_round:
            raise InvalidMessage(f"round {round_number!r} must be an int > last round {self._last_round}; "
                                 f"keys are never reused, start a later round")
        if len(set(cohort)) != len(cohort) or self._site not in cohort:
            raise InvalidMessage(f"cohort must list distinct ids including {self._site!r}")
        plan = self._config.plan(len(cohort))
        check_transition(self._stage, Stage.ADVERTISE_KEYS)
        share_key = AgreementPrivateKey.generate(self._rng)
        mask_key = AgreementPrivateKey.generate(self._rng)
        context = SessionContext(self._config.federation_id, round_number, self._site, BROADCAST)
        pk_c, pk_s = share_key.public_key(), mask_key.public_key()
        signature = sign_key_bundle(signing_key=self._signing_key, context=context,
                                    share_public_key=pk_c, mask_public_key=pk_s)
        message = AdvertiseKeys(self._config.federation_id, round_number, self._site, pk_c.to_bytes(),
                                pk_s.to_bytes(), signature)
        self._last_round = round_number
        self._state = ClientRound(round_number, frozenset(cohort), plan, share_key, mask_key, message)
        self._stage = Stage.ADVERTISE_KEYS
        return message

    def _check_header(self, state: ClientRound, federation_id: str, round_number: int) -> None:
        check_header(state, federation_id=self._config.federation_id, got_federation=federation_id,
                     got_round=round_number)

    def share_keys(self, directory: KeyDirectory, *,
                   verify_keys: Mapping[str, VerifyKey]) -> list[EncryptedShare]:
        """Phase 3: verify the neighbours' advertisements, then Shamir-share the mask key and a fresh self seed.

        Args:
            directory: advertisements relayed by the coordinator (all of them, or this site's and its
                neighbours' plus every advertiser's id, see ``SecAggServer.directory_for``).
            verify_keys: site id -> Ed25519 verify key taken from that site's certificate.

        Returns:
            One EncryptedShare per graph neighbour, sorted by recipient.

        Raises:
            SignatureInvalid: a neighbour's advertisement is not signed by its certified key, or its key
                is missing from ``verify_keys`` (only graph neighbours' keys are used, so only their
                signatures are checked; other entries only shape the public graph).
            InvalidMessage: wrong round/federation, unknown or duplicate site, our own advertisement altered,
                or a graph neighbour's advertisement missing.
            RoundAborted: fewer than t sites advertised.
        """
        with self._phase(Stage.SHARE_KEYS) as state:
            self._check_header(state, directory.federation_id, directory.round)
            adverts: dict[str, AdvertiseKeys] = {}
            for adv in directory.advertisements:
                self._check_header(state, adv.federation_id, adv.round)
                if adv.site_id not in state.cohort or adv.site_id in adverts:
                    raise InvalidMessage(f"advertisement of {adv.site_id!r} is a duplicate or not in cohort")
                adverts[adv.site_id] = adv
            if adverts.get(self._site) != state.advertisement:
                raise InvalidMessage("the relayed directory lacks or alters this site's own advertisement")
            keys = [k for a in adverts.values() for k in (a.share_public_key, a.mask_public_key)]
            if len(set(keys)) != len(keys):
                raise InvalidMessage("two advertisements reuse a public key; refuse the round")
            order = sorted(directory.site_ids or adverts)
            if len(set(order)) != len(order) or not set(order) <= state.cohort or not adverts.keys() <= set(order):
                raise InvalidMessage("directory site_ids repeat a site, leave the cohort or omit an advertiser")
            t = state.plan.threshold
            if len(order) < t:
                raise RoundAborted(f"{len(order)} sites advertised keys < threshold {t}")
            graph = neighbours(order, k=state.plan.neighbours,
                               round_seed=round_seed(self._config.federation_id, state.round))
            mine = sorted(graph[self._site])
            for peer in mine:  # only neighbours' keys are ever used, so only their signatures matter
                if peer not in adverts:
                    raise InvalidMessage(f"directory lacks the advertisement of neighbour {peer!r}")
                verify_advertisement(adverts[peer], verify_keys)
            state.indices = {site: pos + 1 for pos, site in enumerate(order)}
            state.peers = {site: adverts[site] for site in mine}
            state.graph, state.graph_digest = graph, graph_digest(order)
            holders = sorted([*mine, self._site])
            if len(holders) < t:
                raise RoundAborted(f"{len(holders)} share holders < threshold {t}")
            xs = [state.indices[h] for h in holders]
            state.self_seed = MaskSeed.generate(self._rng)
            mask_key, share_key = need(state.mask_key), need(state.share_key)
            key_shares = shamir.split(mask_key.export_secret_bytes(), threshold=t, indices=xs,
                                      rng_source=self._rng)
            seed_shares = shamir.split(state.self_seed.export_secret_bytes(), threshold=t, indices=xs,
                                       rng_source=self._rng)
            out = []
            for holder, key_share, seed_share in zip(holders, key_shares, seed_shares, strict=True):
                if holder == self._site:
                    state.own_shares = (key_share, seed_share)
                    continue
                context = SessionContext(self._config.federation_id, state.round, self._site, holder)
                aead_key = derive_share_key(
                    private_key=share_key, context=context,
                    peer_public_key=AgreementPublicKey.from_bytes(adverts[holder].share_public_key))
                sealed = share_encryption.seal(key=aead_key, context=context, rng_source=self._rng,
                                               plaintext=state.graph_digest + pack_share_pair(
                                                   key_share.to_bytes(), seed_share.to_bytes()))
                out.append(EncryptedShare(self._config.federation_id, state.round, self._site, holder,
                                          sealed.nonce, sealed.data))
        return out

    def masked_input(self, shares: Sequence[EncryptedShare], vector: npt.NDArray[np.float64]) -> MaskedInput:
        """Phase 4: open the neighbours' shares, then upload ``encode(x) + self mask + pairwise masks``.

        Args:
            shares: the EncryptedShares addressed to this site, as routed by the coordinator.
            vector: this site's input, already clipped/noised upstream.

        Shape:
            vector: (vector_length,) float64 with ``|v| <= max_abs_value``.

        Raises:
            DecryptionFailed: a share was tampered with or sealed for another context.
            InvalidMessage: a share from a non-neighbour, a duplicate, wrong round, or wrong vector length.
            OverflowRisk: a value exceeds max_abs_value or is not finite.
            RoundAborted: fewer than t - 1 neighbours sent shares.
        """
        with self._phase(Stage.MASKED_INPUT) as state:
            peers, indices = need(state.peers), need(state.indices)
            share_key, mask_key = need(state.share_key), need(state.mask_key)
            values = np.asarray(vector, dtype=np.float64)
            if values.shape != (self._config.vector_length,):
                raise InvalidMessage(f"input shape {values.shape} != ({self._config.vector_length},) "
                                     f"(vector_length); pass the flattened vector")
            for message in shares:
                self._check_header(state, message.federation_id, message.round)
                sender = message.sender
                if message.recipient != self._site or sender not in peers or sender in state.held:
                    raise InvalidMessage(f"share from {sender!r} to {message.recipient!r} is not from a "
                                         f"neighbour of {self._site!r} or is a duplicate")
                pair = open_share(state, message, share_key=share_key, peer=peers[sender],
                                  own_index=indices[self._site])
                state.held[sender] = pair
            t = state.plan.threshold
            if len(state.held) + 1 < t:
                raise RoundAborted(f"only {len(state.held)} neighbours shared keys; need >= {t - 1}")
            encoded = fixed_point.encode(values, fraction_bits=self._config.fraction_bits,
                                         max_abs=self._config.max_abs_value)
            pairwise = [PairwiseMask(derive_mask_seed(
                private_key=mask_key, peer_public_key=AgreementPublicKey.from_bytes(peers[v].mask_public_key),
                context=SessionContext.pair(self._config.federation_id, state.round, self._site, v)),
                self._site, v) for v in sorted(state.held)]
            apply_masks(encoded, self_seed=need(state.self_seed), pairwise=pairwise,
                        algorithm=self._config.prg)
            state.held[self._site] = need(state.own_shares)
            state.share_key = state.mask_key = state.self_seed = state.own_shares = None
            message_out = MaskedInput.from_vector(self._config.federation_id, state.round, self._site,
                                                  encoded)
        return message_out

    def sign_survivors(self, request: UnmaskRequest) -> SurvivorSignature:
        """Phase 5a (consistency check): check the unmask request, then sign the view it gives this site.

        The signed view is (advertiser list of this site's graph, survivors, dropouts); an honest site signs
        one view per round. Nothing secret is revealed here.

        Raises:
            InvalidMessage: as :meth:`unmask` would for the request.
            RoundAborted: fewer than t survivors.
            StageOutOfOrder: the semi-honest mode (no consistency check) or a call out of order.
        """
        if not self._config.consistency_check:
            raise StageOutOfOrder("this federation runs without the consistency check; call unmask directly")
        with self._phase(Stage.CONSISTENCY_CHECK) as state:
            check_unmask_request(state, request, site=self._site, federation_id=self._config.federation_id)
            order = tuple(sorted(need(state.indices)))
            state.view = SurvivorView(self._config.federation_id, state.round, order,
                                      tuple(sorted(request.survivors)), tuple(sorted(request.dropouts)))
            signature = sign_view(signing_key=self._signing_key, view=state.view, signer=self._site)
        return signature

    def unmask(self, request: UnmaskRequest, *, signatures: Sequence[SurvivorSignature] = (),
               verify_keys: Mapping[str, VerifyKey] | None = None) -> UnmaskResponse:
        """Phase 5: reveal survivors' self-seed shares and dropouts' mask-key shares (never both per site).

        With the consistency check (the default) the request must be the one signed in
        :meth:`sign_survivors`, and for every site ``o`` whose share is revealed, ``signatures`` must hold
        valid signatures on the same view from at least t of ``o``'s holders (its graph neighbours and
        itself) listed as survivors; this site's own signature counts. In the semi-honest mode
        ``signatures`` and ``verify_keys`` are ignored.

        Args:
            request: survivors and dropouts, as the coordinator announced them to this site.
            signatures: the survivor signatures the coordinator relayed (consistency check).
            verify_keys: site id -> Ed25519 verify key from that site's certificate (consistency check).

        Raises:
            InvalidMessage: a site in both lists or twice, this site named as dropped, a site outside the
                round, or a listed neighbour that never shared keys with us (inconsistent coordinator); a
                request other than the signed one.
            SignatureInvalid: a relayed signature does not verify on this site's view.
            RoundAborted: fewer than t survivors, or fewer than t of some site's holders signed this view.
        """
        if self._config.consistency_check and self._stage is not Stage.CONSISTENCY_CHECK:
            raise StageOutOfOrder(f"unmask needs the consistency check first (sign_survivors); the round is "
                                  f"in stage {self._stage}")
        with self._phase(Stage.UNMASK) as state:
            if self._config.consistency_check:
                view = need(state.view)
                if (request.federation_id, request.round, tuple(sorted(request.survivors)),
                        tuple(sorted(request.dropouts))) != (view.federation_id, view.round, view.survivors,
                                                             view.dropouts):
                    raise InvalidMessage("unmask request differs from the survivor view this site signed")
            else:
                check_unmask_request(state, request, site=self._site, federation_id=self._config.federation_id)
            survivors, dropouts = set(request.survivors), set(request.dropouts)
            owners = sorted((survivors | dropouts) & state.held.keys())
            if self._config.consistency_check:
                check_holder_signatures(state, owners, signatures, verify_keys or {}, site=self._site,
                                        own_key=self._signing_key.verify_key())
            seed_shares = tuple(RevealedShare(o, state.held[o][1].to_bytes())
                                for o in sorted(survivors & state.held.keys()))
            key_shares = tuple(RevealedShare(o, state.held[o][0].to_bytes())
                               for o in sorted(dropouts & state.held.keys()))
            state.held = {}
            response = UnmaskResponse(self._config.federation_id, state.round, self._site, seed_shares,
                                      key_shares)
        self._stage = Stage.DONE
        self._state = None
        return response
