"""Test harness for the networked federation: a throwaway PKI, the real coordinator on 127.0.0.1:0,
and ``ScriptedSite``, a participant driven phase by phase (so tests can drop out at any point).

Everything talks real mutual-TLS gRPC on loopback; nothing is mocked.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np

from coordinator.config import CoordinatorConfig, ServerSettings, TlsSettings
from coordinator.server import run_server
from federation import codec
from federation.peers import PeerVerifier
from federation.plan import FederationSettings, PrivacySettings, SecAggSettings
from federation.round_codec import JoinAccepted, RoundOffer, RoundOutcome
from federation.secagg import secagg_config
from federation.site_round import RoundAbandoned, SiteRound
from proto import federation_pb2 as pb
from proto import federation_pb2_grpc as pb_grpc
from proto.settings import PROTOCOL_VERSION
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate
from security.pki_verify import load_certificate
from security.secagg_client import SecAggClient
from security.secagg_messages import AdvertiseKeys
from security.signing import SigningKey, VerifyKey

FED = "testfed"


@dataclass
class Pki:
    root: Path
    ca: object

    def site_files(self, name: str) -> tuple[bytes, bytes, bytes]:
        d = self.root / name
        return (d / "tls.key").read_bytes(), (d / "tls.crt").read_bytes(), (d / "ca.crt").read_bytes()


def make_pki(tmp: Path, sites: list[str]) -> Pki:
    ca = create_ca(federation_id=FED, out_dir=tmp / "pki")
    issue_certificate(ca=ca, role=Role.COORDINATOR, name="coordinator")
    for site in sites:
        issue_certificate(ca=ca, role=Role.SITE, name=site)
    return Pki(tmp / "pki", ca)


def coordinator_config(tmp: Path, sites: list[str], *, enrolled: list[str] | None = None, rounds: int = 3,
                       min_sites: int | None = None, train: dict | None = None, method: str = "pfmh",
                       share_mode: str = "prototypes", privacy: str = "off", dims: tuple[int, int, int] = (8, 6, 3),
                       phase_timeout_s: float = 5.0, train_timeout_s: float = 10.0,
                       max_message_mb: int = 4, privacy_settings: PrivacySettings | None = None,
                       secagg: SecAggSettings | None = None) -> CoordinatorConfig:
    enrolled = enrolled or sites
    fed = FederationSettings(federation_id=FED, image_dim=dims[0], text_dim=dims[1], num_classes=dims[2],
                             method=method, share_mode=share_mode, rounds=rounds,
                             min_sites=min_sites or len(enrolled),
                             train=train or {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1,
                                             "shared_epochs": 1},
                             privacy=privacy_settings or PrivacySettings(mode=privacy),
                             **({"secagg": secagg} if secagg is not None else {}),
                             train_timeout_s=train_timeout_s,
                             phase_timeout_s=phase_timeout_s)
    return CoordinatorConfig(federation=fed, sites=tuple(enrolled),
                             tls=TlsSettings(ca_cert="pki/ca/ca.crt", cert="pki/coordinator/tls.crt",
                                             key="pki/coordinator/tls.key", crl="pki/ca/crl.pem"),
                             server=ServerSettings(listen="127.0.0.1:0", long_poll_s=1.0, grace_s=1.0,
                                                   max_message_mb=max_message_mb),
                             state_dir="state/coordinator")


@contextlib.contextmanager
def coordinator(tmp: Path, cfg: CoordinatorConfig) -> Iterator[tuple[int, object]]:
    """The real coordinator on an ephemeral loopback port; yields (port, engine)."""
    with run_server(cfg, base_dir=tmp) as (_, port, engine):
        yield port, engine


def channel(port: int, key: bytes, cert: bytes, ca: bytes) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])


class _StubTransport:
    """A bare stub as a ``federation.site_round.Transport``: no retries; polls give up after ``timeout_s``."""

    def __init__(self, name: str, stub: pb_grpc.FederationStub, timeout_s: float = 30) -> None:
        self.name, self.stub, self.timeout_s = name, stub, timeout_s

    def call(self, method: str, request: object) -> object:
        return getattr(self.stub, method)(request, timeout=10)

    def poll(self, method: str, request: pb.PhaseQuery, *, deadline_s: float = 0.0) -> object:
        until = time.monotonic() + self.timeout_s  # the tests' own limit, not the phase deadline
        while time.monotonic() < until:
            reply = getattr(self.stub, method)(request, timeout=10)
            if reply.status != pb.PENDING:
                return reply
        raise TimeoutError(f"{self.name}: {method} still pending after {self.timeout_s}s")


class ScriptedSite:
    """A participant driven phase by phase (``federation.site_round.SiteRound``) with the real SecAggClient
    over a real mTLS channel; a phase that finds the round ended aborts the client and returns that reply."""

    def __init__(self, name: str, port: int, pki: Pki, settings: FederationSettings, vector_length: int) -> None:
        self.name = name
        key, cert, ca = pki.site_files(name)
        self.channel = channel(port, key, cert, ca)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.transport = _StubTransport(name, self.stub)
        self.ca_cert = load_certificate(ca)
        self.peers = PeerVerifier(self.ca_cert)
        self.secagg = SecAggClient(name, signing_key=SigningKey.load(pki.root / name / "signing.key", passphrase=None),
                                   config=secagg_config(settings, vector_length=vector_length))
        self.round = 0
        self.settings = settings
        self.current: SiteRound | None = None
        self.told: pb.UnmaskRequest | None = None

    def close(self) -> None:
        self.channel.close()

    def join(self) -> JoinAccepted:
        s = self.settings
        return JoinAccepted.from_proto(self.stub.Join(pb.JoinRequest(
            federation_id=FED, protocol_version=PROTOCOL_VERSION, num_train_records=10, image_dim=s.image_dim,
            text_dim=s.text_dim, num_classes=s.num_classes), timeout=10))

    def wait_round(self, after: int = 0, timeout_s: float = 30) -> RoundOffer:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            reply = RoundOffer.from_proto(self.stub.WaitForRound(
                pb.WaitForRoundRequest(federation_id=FED, after_round=after), timeout=10))
            if reply.status != pb.PENDING:
                self.round = reply.round
                return reply
        raise TimeoutError(f"{self.name}: no round within {timeout_s}s")

    def poll(self, method: str, timeout_s: float = 30):  # noqa: ANN201
        return _StubTransport(self.name, self.stub, timeout_s).poll(
            method, pb.PhaseQuery(federation_id=FED, round=self.round))

    @property
    def verify_keys(self) -> dict[str, VerifyKey]:
        return self.current.verify_keys if self.current else {}

    def _phase(self) -> SiteRound:
        if self.current is None:
            raise RuntimeError(f"{self.name}: advertise first")
        return self.current

    def advertise(self, config: RoundOffer) -> AdvertiseKeys:
        self.round, self.told = config.round, None
        self.current = SiteRound(secagg=self.secagg, transport=self.transport, peers=self.peers, config=config,
                                 federation_id=FED, consistency_check=self.settings.secagg.consistency_check)
        return self.current.advertise()

    def share_keys(self) -> None:
        self._phase().share_keys()

    def masked_input(self, vector: np.ndarray) -> bytes:
        return self._phase().masked_input(vector).data

    def sign_survivors(self) -> pb.UnmaskRequest:
        """Phase 5a: the survivor set this site is told, signed; a reply that is not READY aborts the client."""
        current = self._phase()
        try:
            told = current.sign_survivors()
        except RoundAbandoned as exc:
            self.secagg.abort()
            self.told = exc.reply if exc.reply is not None else pb.UnmaskRequest(status=pb.ABORTED)
        else:
            self.told = codec.unmask_request_to_proto(told, round_number=told.round, status=pb.READY)
        return self.told

    def unmask(self) -> pb.UnmaskRequest | pb.SurvivorSignatures:
        """Phase 5: reveal the shares (call sign_survivors first); returns the unmask request it answered, or
        the reply that ended the round (the client aborted)."""
        current = self._phase()
        if self.told is None or self.told.status != pb.READY:
            return self.told or pb.UnmaskRequest(status=pb.ABORTED)
        try:
            current.unmask()
        except RoundAbandoned as exc:
            self.secagg.abort()
            return exc.reply if exc.reply is not None else pb.SurvivorSignatures(status=pb.ABORTED)
        return self.told

    def result(self) -> RoundOutcome:
        return self._phase().result()


def expired_site_cert(pki: Pki, name: str) -> None:
    """Re-issue ``name``'s certificate with a validity window that ended yesterday."""
    now = dt.datetime.now(dt.UTC)
    issue_certificate(ca=pki.ca, role=Role.SITE, name=name, not_before=now - dt.timedelta(days=10),
                      not_after=now - dt.timedelta(days=1), replace=True)


def with_rounds(cfg: CoordinatorConfig, rounds: int) -> CoordinatorConfig:
    return replace(cfg, federation=replace(cfg.federation, rounds=rounds))


def write_site_files(tmp: Path, sites: list[str], *, preset: str = "tiny", seed: int = 0) -> list:
    """A synthetic dataset split over ``sites`` (Dirichlet 1.0), one HDF5 per site, plus the PKI.

    Returns the per-site datasets (for comparing with an in-process run).
    """
    from pfmh_model.data import save_h5
    from pfmh_model.partition import partition_dataset
    from pfmh_model.synthetic import generate

    dataset = generate(preset, seed=seed)
    parts = partition_dataset(dataset, num_sites=len(sites), alpha=1.0, seed=seed)
    (tmp / "data").mkdir()
    for name, part in zip(sites, parts, strict=True):
        save_h5(part, tmp / "data" / f"{name}.h5")
    make_pki(tmp, sites)
    return parts


def site_daemon(tmp: Path, name: str, port: int, *, epsilon_max: float = 8.0, **kwargs):  # noqa: ANN003, ANN201
    """The real ``SiteDaemon`` for ``name``, with the files of :func:`write_site_files`, DP not required."""
    from participant.config import SiteConfig, SitePrivacy, SiteTls
    from participant.site import SiteDaemon

    return SiteDaemon(SiteConfig(
        site=name, federation_id=FED, coordinator=f"127.0.0.1:{port}", data=f"data/{name}.h5",
        tls=SiteTls(ca_cert=f"pki/{name}/ca.crt", cert=f"pki/{name}/tls.crt", key=f"pki/{name}/tls.key",
                    signing_key=f"pki/{name}/signing.key", crl="pki/ca/crl.pem"),
        state_dir=f"state/{name}", privacy=SitePrivacy(require_dp=False, epsilon_max=epsilon_max)), base=tmp,
        **kwargs)


def join_sites(port: int, pki: Pki, cfg: CoordinatorConfig, names: list[str]) -> list[ScriptedSite]:
    """A joined ``ScriptedSite`` per name, sized for the federation's upload layout."""
    from coordinator.server import upload_layout

    length = upload_layout(cfg.federation).length
    sites = [ScriptedSite(n, port, pki, cfg.federation, length) for n in names]
    for site in sites:
        site.join()
    return sites


def run_daemons(daemons: list, timeout_s: float = 120) -> list[int]:
    """Run each ``SiteDaemon`` in its own thread until all return; their exit codes, in order."""
    import threading

    codes: list[int | None] = [None] * len(daemons)

    def run(k: int) -> None:
        codes[k] = daemons[k].run()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(daemons))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), f"daemons still running after {timeout_s}s"
    return codes  # type: ignore[return-value]


def drive_to_masked_input(sites: list[ScriptedSite], after: int) -> None:
    """Every scripted site through the round after ``after`` up to its masked input (site k sends k + 1)."""
    offers = [s.wait_round(after) for s in sites]
    for s, offer in zip(sites, offers, strict=True):
        s.advertise(offer)
    for s in sites:
        s.share_keys()
    for k, s in enumerate(sites):
        s.masked_input(np.full(s.secagg._config.vector_length, float(k + 1)))


def complete_round(sites: list[ScriptedSite], after: int) -> list[RoundOutcome]:
    """One whole round of the scripted sites; asserts every site's result is READY."""
    drive_to_masked_input(sites, after)
    for s in sites:
        s.sign_survivors()
    for s in sites:
        s.unmask()
    results = [s.result() for s in sites]
    assert all(r.status == pb.READY for r in results), [r.status for r in results]
    return results
