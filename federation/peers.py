"""Peers' signing keys for one round, each taken from a certificate this site verified itself.

The coordinator relays every advertiser's certificate beside its advertisement; a site trusts none of them
on the coordinator's word. A peer whose certificate fails verification (another CA, revoked, expired, a
coordinator certificate, a name other than the advertised one) gets no verify key, so the SecAgg client
refuses the round if that peer is one of its graph neighbours.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509

from security.errors import SecurityError
from security.pki import Role
from security.pki_verify import load_certificate, site_signing_public_key, verify_peer_certificate
from security.signing import VerifyKey


@dataclass(frozen=True)
class PeerVerifier:
    """Verifies relayed site certificates against the federation CA (and its CRL, where given).

    Args:
        ca_cert: the federation CA certificate.
        crl: the CA's revocation list, or None.
        on_untrusted: called with (peer site id, the error) for every peer left without a key.
    """

    ca_cert: x509.Certificate
    crl: x509.CertificateRevocationList | None = None
    on_untrusted: Callable[[str, SecurityError], None] = lambda site, exc: None

    def verify_keys(self, certificates: Mapping[str, bytes]) -> dict[str, VerifyKey]:
        """The Ed25519 verify key bound in each peer's certificate (by site id), for trusted peers only."""
        keys: dict[str, VerifyKey] = {}
        for site, pem in certificates.items():
            try:
                identity = verify_peer_certificate(pem, ca_cert=self.ca_cert, crl=self.crl,
                                                   allowed_roles=(Role.SITE,), expected_id=site)
            except SecurityError as exc:
                self.on_untrusted(site, exc)
                continue
            keys[identity.site_id] = VerifyKey(site_signing_public_key(load_certificate(pem)))
        return keys
