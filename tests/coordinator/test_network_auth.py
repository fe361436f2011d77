"""Authentication over real mutual TLS on 127.0.0.1: who is refused, with which status, and the round unharmed."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from coordinator.server import upload_layout
from proto import federation_pb2 as pb
from proto import federation_pb2_grpc as pb_grpc
from proto.settings import PROTOCOL_VERSION
from security.pki import Role, create_ca
from security.pki_issue import issue_certificate, revoke
from security.pki_verify import load_certificate
from tests.netfed import (
    FED,
    channel,
    coordinator,
    coordinator_config,
    expired_site_cert,
    join_sites,
    make_pki,
)

SITES = ["site-a", "site-b", "site-c"]


def _join(ch: grpc.Channel) -> pb.JoinReply:
    stub = pb_grpc.FederationStub(ch)
    return stub.Join(pb.JoinRequest(federation_id=FED, protocol_version=PROTOCOL_VERSION, image_dim=8, text_dim=6,
                                    num_classes=3), timeout=5)


def _code(call) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture()
def federation(tmp_path: Path):  # noqa: ANN201
    pki = make_pki(tmp_path, [*SITES, "intruder", "revoked-site", "stale-site"])
    revoke(ca=pki.ca, cert=load_certificate(pki.root / "revoked-site" / "tls.crt"))
    expired_site_cert(pki, "stale-site")
    cfg = coordinator_config(tmp_path, SITES, enrolled=[*SITES, "revoked-site", "stale-site"], min_sites=3)
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.3))
    with coordinator(tmp_path, cfg) as (port, engine):
        yield tmp_path, pki, cfg, port, engine


def test_refusals_have_clear_statuses_and_are_counted(federation) -> None:  # noqa: ANN001
    tmp, pki, _, port, engine = federation
    ca_pem = (pki.root / "ca" / "ca.crt").read_bytes()
    # no client certificate: the TLS handshake fails
    plain = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=ca_pem),
                                options=[("grpc.ssl_target_name_override", "localhost")])
    assert _code(lambda: _join(plain)) == grpc.StatusCode.UNAVAILABLE
    # a certificate from another CA: the handshake fails
    foreign = create_ca(federation_id=FED, out_dir=tmp / "foreign")
    issue_certificate(ca=foreign, role=Role.SITE, name="site-a")
    f = tmp / "foreign" / "site-a"
    other = channel(port, (f / "tls.key").read_bytes(), (f / "tls.crt").read_bytes(), ca_pem)
    assert _code(lambda: _join(other)) == grpc.StatusCode.UNAVAILABLE
    # an expired certificate: the handshake fails
    stale = channel(port, *pki.site_files("stale-site"))
    assert _code(lambda: _join(stale)) == grpc.StatusCode.UNAVAILABLE
    # a revoked certificate: TLS accepts it, our CRL check refuses it
    revoked = channel(port, *pki.site_files("revoked-site"))
    with pytest.raises(grpc.RpcError) as info:
        _join(revoked)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in info.value.details()
    # a valid certificate of a site that is not enrolled
    intruder = channel(port, *pki.site_files("intruder"))
    with pytest.raises(grpc.RpcError) as info:
        _join(intruder)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not enrolled" in info.value.details()
    # Assert: counted by reason (handshake failures never reach the application)
    failures = engine.metrics.auth_failures
    assert failures.labels("revoked")._value.get() == 1
    assert failures.labels("not_enrolled")._value.get() == 1
    for ch in (plain, other, stale, revoked, intruder):
        ch.close()


def test_refused_callers_do_not_affect_the_round(federation) -> None:  # noqa: ANN001
    tmp, pki, cfg, port, engine = federation
    intruder = channel(port, *pki.site_files("intruder"))
    revoked = channel(port, *pki.site_files("revoked-site"))
    layout = upload_layout(cfg.federation)
    sites = join_sites(port, pki, cfg, SITES)
    configs = [s.wait_round(0) for s in sites]
    # Assert: the cohort holds only the authenticated, enrolled, live sites
    assert sorted(configs[0].cohort) == SITES
    for ch in (intruder, revoked):
        stub = pb_grpc.FederationStub(ch)
        with pytest.raises(grpc.RpcError):
            stub.GetAdvertisements(pb.PhaseQuery(federation_id=FED, round=configs[0].round), timeout=5)
    for s, c in zip(sites, configs, strict=True):
        s.advertise(c)
    for s in sites:
        s.share_keys()
    import numpy as np

    for s in sites:
        s.masked_input(np.zeros(layout.length) + 1.0)
    for s in sites:
        s.sign_survivors()
    for s in sites:
        s.unmask()
    assert all(s.result().status == pb.READY for s in sites)
    assert engine.state.completed_rounds == 1
