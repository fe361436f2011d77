"""Consistency check of secure aggregation against an active coordinator: signed survivor views.

Before revealing any share, a survivor signs the *view* it was given: the advertiser list it built its
round graph from, and the survivor and dropout lists of the unmask request. It reveals a share of a site
``o`` only when it holds valid signatures on the very same view from at least ``t`` of ``o``'s share holders
(``o``'s graph neighbours and ``o`` itself) that are listed as survivors; revealing a survivor's self-seed
share further needs that survivor's own signature and ``t`` holder signatures for each of its surviving
neighbours (``SecAggClient.unmask``). Signed bytes::

    "pfmh-secagg-v1/survivors\\0" || SessionContext(federation, round, signer, "*").to_bytes() || view digest
    view digest = SHA-256("pfmh-secagg-v1/view\\0" || list(advertisers) || list(survivors) || list(dropouts))
    list(xs) = u32be(len(xs)) || for each x in sorted order: u32be(len(x)) || x (UTF-8)

Security:
    An honest site signs one view per round. Two different views each signed by ``t`` of the ``m`` holders
    of one site need ``2 (t - c)`` distinct honest holders when ``c`` of them collude, so with
    ``2t > m + c`` every honest holder that reveals anything about a site used the same view, in which the
    site is either a survivor (its self-seed shares are released) or a dropout (its mask-key shares are),
    never both. ``docs/PRIVACY.md`` ("Secure aggregation against an active coordinator") gives the proof and
    what it does not cover.

References:
    Bonawitz et al., CCS 2017, Sec. 4 and 6 (ConsistencyCheck round, malicious model); Bell et al., CCS
    2020, Sec. 3-5 (SecAgg+ graphs).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from security.context import BROADCAST, SessionContext
from security.errors import InvalidMessage, SignatureInvalid
from security.signing import SIGNATURE_BYTES, SigningKey, VerifyKey

DIGEST_BYTES = 32
_VIEW_LABEL = b"pfmh-secagg-v1/view\x00"
_SIGN_LABEL = b"pfmh-secagg-v1/survivors\x00"
_GRAPH_LABEL = b"pfmh-secagg-v1/graph-members\x00"


def _encode_ids(ids: Iterable[str]) -> bytes:
    items = sorted(ids)
    out = [struct.pack(">I", len(items))]
    for item in items:
        raw = item.encode("utf-8")
        out.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(out)


def graph_digest(advertisers: Sequence[str]) -> bytes:
    """SHA-256 of the advertiser list a site derived its round graph from (bound into every share)."""
    return hashlib.sha256(_GRAPH_LABEL + _encode_ids(advertisers)).digest()


@dataclass(frozen=True, slots=True)
class SurvivorView:
    """What one site was told in phase 5: the graph's node list and who survived / dropped."""

    federation_id: str
    round: int
    advertisers: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]

    def digest(self) -> bytes:
        """Canonical 32-byte digest (order-independent, injective on the three id lists)."""
        return hashlib.sha256(_VIEW_LABEL + _encode_ids(self.advertisers) + _encode_ids(self.survivors)
                              + _encode_ids(self.dropouts)).digest()

    def _message(self, signer: str) -> bytes:
        context = SessionContext(self.federation_id, self.round, signer, BROADCAST)
        return _SIGN_LABEL + context.to_bytes() + self.digest()


@dataclass(frozen=True, slots=True)
class SurvivorSignature:
    """Phase 5a: ``site_id``'s Ed25519 signature on the survivor view it was given."""

    federation_id: str
    round: int
    site_id: str
    signature: bytes

    def __post_init__(self) -> None:
        SessionContext(self.federation_id, self.round, self.site_id, BROADCAST)  # validates the header
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise InvalidMessage(f"survivor signature of {self.site_id!r} must be {SIGNATURE_BYTES} bytes")


def sign_view(*, signing_key: SigningKey, view: SurvivorView, signer: str) -> SurvivorSignature:
    """Sign ``view`` as ``signer`` (who must be listed among its survivors)."""
    if signer not in view.survivors:
        raise InvalidMessage(f"{signer!r} is not among the survivors of the view it was asked to sign")
    return SurvivorSignature(view.federation_id, view.round, signer, signing_key.sign(view._message(signer)))


def verify_view(*, verify_key: VerifyKey, view: SurvivorView, signature: SurvivorSignature) -> None:
    """Raise SignatureInvalid unless ``signature`` signs exactly ``view`` under ``verify_key``."""
    if (signature.federation_id, signature.round) != (view.federation_id, view.round):
        raise SignatureInvalid(f"survivor signature of {signature.site_id!r} is for round {signature.round} of "
                               f"{signature.federation_id!r}, not round {view.round}")
    try:
        verify_key.verify(signature.signature, view._message(signature.site_id))
    except SignatureInvalid as exc:
        raise SignatureInvalid(f"survivor signature of {signature.site_id!r} for round {view.round} does not "
                               f"sign this site's survivor set (forged, or the coordinator told "
                               f"{signature.site_id!r} a different set); refuse to unmask") from exc


def valid_signers(*, view: SurvivorView, signatures: Sequence[SurvivorSignature],
                  verify_keys: Mapping[str, VerifyKey]) -> frozenset[str]:
    """Sites whose signature on ``view`` verifies; signatures of sites without a trusted key are not counted.

    Raises:
        SignatureInvalid: a signature from a site with a trusted key does not verify (one bad signature
            means the coordinator relayed a forgery or a signature on another view: abort).
        InvalidMessage: a signer that is not a survivor of ``view``, or a signer twice.
    """
    seen: set[str] = set()
    for item in signatures:
        if item.site_id not in view.survivors or item.site_id in seen:
            raise InvalidMessage(f"survivor signature of {item.site_id!r} is a duplicate or not from a survivor")
        seen.add(item.site_id)
        if item.site_id in verify_keys:
            verify_view(verify_key=verify_keys[item.site_id], view=view, signature=item)
    return frozenset(seen & verify_keys.keys())
