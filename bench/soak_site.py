"""A lightweight soak participant: the site daemon's round flow without torch, plus fault injection.

Run by ``bench/soak.py`` (one process per site)::

    python bench/soak_site.py --site site-007 --coordinator 127.0.0.1:PORT --pki PKI_ROOT \
        --state STATE_DIR --dims 8 6 10 [--seed 1]

It joins, then for every round it is called into walks the real protocol over real mTLS gRPC with the
real ``SecAggClient`` (``participant.client.CoordinatorClient`` gives the daemon's retries and backoff;
peer certificates are verified against the CA and CRL as ``participant.site`` does; the coordinator
relays only the site's graph neighbours' advertisements). Its upload is a random, valid
prototype-statistics vector (sums (C, b) ~ N(0, 1) clipped to [-4, 4], counts (C,) in 1..20) of the
coordinator's layout length, so no model is trained and torch is never imported.

Debug hook (test builds only): the plain input of every round is written to
``STATE_DIR/inputs/round-N.npy`` before its masked version is sent, and the published prototypes to
``STATE_DIR/results/round-N.npy``; the harness sums the survivors' inputs and compares them with what the
coordinator unmasked. Plain inputs stay at the site, never at the coordinator.

Faults come from ``STATE_DIR/faults.json``: ``{"<round>": {"point": P, "action": A, "seconds": s}}``.
P in ``POINTS`` is the moment just before the site sends that phase's message, after it received the
phase's input (so a ``slow`` site always misses the phase deadline); ``result`` is just before it fetches
the round result. A is ``kill`` (SIGKILL itself: the harness restarts it), ``delay`` (a network delay,
within the phase timeout) or ``slow`` (longer than the phase timeout). A fault fires once, even across
restarts. Every step, fault and outcome goes to ``STATE_DIR/events.jsonl``.
Exit status: 0 federation finished, 3 layout mismatch, 4 coordinator unreachable.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federation.layout import upload_layout  # noqa: E402
from federation.plan import FederationSettings  # noqa: E402
from federation.secagg import secagg_config  # noqa: E402
from participant.client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable, RoundAbandoned  # noqa: E402
from participant.config import RetryPolicy, SiteConfig, SiteTls  # noqa: E402
from proto import federation_pb2 as pb  # noqa: E402
from proto.settings import PROTOCOL_VERSION  # noqa: E402
from security.consistency import SurvivorSignature  # noqa: E402
from security.errors import SecurityError  # noqa: E402
from security.pki import Role  # noqa: E402
from security.pki_verify import load_certificate, load_crl, site_signing_public_key, verify_peer_certificate  # noqa: E402
from security.secagg_client import SecAggClient  # noqa: E402
from security.secagg_messages import AdvertiseKeys, EncryptedShare, KeyDirectory, UnmaskRequest  # noqa: E402
from security.signing import SigningKey, VerifyKey  # noqa: E402

POINTS = ("advertise", "share_keys", "masked_input", "unmask", "result")
log = logging.getLogger("soak_site")


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    tmp.replace(path)


class SoakSite:
    """One soak participant; ``run()`` returns the exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name, self.state, self.seed, self.dims = args.site, Path(args.state), args.seed, tuple(args.dims)
        self.state.mkdir(parents=True, exist_ok=True)
        base = Path(args.pki) / self.name
        self.cfg = SiteConfig(site=self.name, federation_id=args.federation, coordinator=args.coordinator, data="-",
                              tls=SiteTls(ca_cert="ca.crt", cert="tls.crt", key="tls.key", signing_key="signing.key"),
                              retry=RetryPolicy(initial_s=0.2, max_s=2.0, give_up_s=args.give_up_s),
                              rpc_timeout_s=15.0)
        self.round_bytes = [0, 0]
        self.client = CoordinatorClient(self.cfg, base, on_bytes=self._count)
        self.ca_cert = load_certificate(base / "ca.crt")
        self.crl = load_crl(Path(args.pki) / "ca" / "crl.pem", ca_cert=self.ca_cert)
        self.signing_key = SigningKey.load(base / "signing.key", passphrase=None)
        plan = self.state / "faults.json"
        self.faults: dict[str, dict[str, Any]] = json.loads(plan.read_text()) if plan.is_file() else {}
        self.fired = self._fired()
        self.events = open(self.state / "events.jsonl", "a", buffering=1)  # noqa: SIM115 - line-buffered log
        self.round = 0

    def _count(self, kind: str, sent: int, received: int) -> None:
        self.round_bytes[0] += sent
        self.round_bytes[1] += received

    def _fired(self) -> set[tuple[int, str]]:
        path, fired = self.state / "events.jsonl", set()
        if path.is_file():
            for line in path.read_text().splitlines():
                event = json.loads(line) if line.endswith("}") else {}
                if event.get("event") == "fault":
                    fired.add((event["round"], event["point"]))
        return fired

    def event(self, kind: str, **fields: Any) -> None:
        self.events.write(json.dumps({"t": time.time(), "pid": os.getpid(), "event": kind, "round": self.round,
                                      **fields}) + "\n")

    def fault(self, point: str) -> None:
        spec = self.faults.get(str(self.round))
        if not spec or spec["point"] != point or (self.round, point) in self.fired:
            return
        self.fired.add((self.round, point))
        self.event("fault", point=point, action=spec["action"], seconds=spec.get("seconds", 0.0))
        if spec["action"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(spec["seconds"]))

    # ------------------------------------------------------------------ setup and loop
    def join(self) -> FederationSettings:
        image_dim, text_dim, classes = self.dims
        reply = self.client.call("Join", pb.JoinRequest(
            federation_id=self.cfg.federation_id, protocol_version=PROTOCOL_VERSION, num_train_records=100,
            image_dim=image_dim, text_dim=text_dim, num_classes=classes))
        settings = FederationSettings.from_json(reply.settings_json)
        self.bits = settings.train.bits
        self.length = upload_layout(settings).length
        self.secagg_settings = settings.secagg
        self.secagg = SecAggClient(self.name, signing_key=self.signing_key,
                                   config=secagg_config(settings, vector_length=self.length))
        self.site_index = sorted(reply.enrolled_sites).index(self.name)
        return settings

    def run(self) -> int:
        meta = self.state / "site_state.json"
        after = json.loads(meta.read_text())["after_round"] if meta.is_file() else 0
        self.event("start", after_round=after)
        try:
            self.settings = self.join()
            while True:
                config = self.client.call("WaitForRound", pb.WaitForRoundRequest(
                    federation_id=self.cfg.federation_id, after_round=after), timeout_s=self.cfg.rpc_timeout_s + 15)
                if config.status == pb.FINISHED:
                    self.event("finished")
                    self._leave()
                    return 0
                if config.status != pb.READY:
                    continue
                self.round, self.round_bytes = config.round, [0, 0]
                if config.vector_length != self.length:
                    self.event("outcome", outcome="mismatch", detail=f"{config.vector_length} != {self.length}")
                    return 3
                self._round(config)
                after = config.round
                meta.with_suffix(".tmp").write_text(json.dumps({"after_round": after}))
                meta.with_suffix(".tmp").replace(meta)
        except CoordinatorUnreachable as exc:
            self.event("outcome", outcome="unreachable", detail=str(exc)[:300])
            return 4

    def _leave(self) -> None:
        try:
            self.client.call("Leave", pb.LeaveRequest(federation_id=self.cfg.federation_id,
                                                      reason="federation finished"), timeout_s=5)
        except (CoordinatorError, CoordinatorUnreachable):
            pass

    # ------------------------------------------------------------------ one round
    def _input(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.site_index, self.round])
        classes = self.settings.num_classes
        sums = np.clip(rng.normal(size=classes * self.bits), -4.0, 4.0)
        return np.concatenate([sums, rng.integers(1, 21, size=classes).astype(np.float64)])

    def _poll(self, method: str, deadline_s: float) -> Any:
        query = pb.PhaseQuery(federation_id=self.cfg.federation_id, round=self.round)
        until = time.monotonic() + deadline_s
        while True:
            reply = self.client.call(method, query)
            if reply.status != pb.PENDING:
                return reply
            if time.monotonic() > until:
                raise RoundAbandoned(f"{method}: phase did not close within {deadline_s:.0f}s")

    def _round(self, config: pb.RoundConfig) -> None:
        try:
            self._protocol(config)
        except RoundAbandoned as exc:
            self.secagg.abort()
            self.event("outcome", outcome="abandoned", detail=str(exc)[:300])
        except CoordinatorError as exc:
            self.secagg.abort()
            self.event("outcome", outcome="refused", code=exc.code.name, detail=exc.detail[:300])
        except SecurityError as exc:
            self.secagg.abort()
            self.event("outcome", outcome="secagg_error", detail=f"{type(exc).__name__}: {exc}"[:300])

    def _protocol(self, config: pb.RoundConfig) -> None:
        fed, number, call = self.cfg.federation_id, self.round, self.client.call
        vector = self._input()
        advert = self.secagg.advertise(number, list(config.cohort))
        self.fault("advertise")
        call("AdvertiseKeys", pb.AdvertiseKeysRequest(
            federation_id=fed, round=number, share_public_key=advert.share_public_key,
            mask_public_key=advert.mask_public_key, signature=advert.signature))
        self.event("step", step="advertised")
        ads = self._poll("GetAdvertisements", config.train_timeout_s + 2 * config.phase_timeout_s)
        if ads.status != pb.READY:
            raise RoundAbandoned("GetAdvertisements: round aborted")
        directory, keys = self._directory(ads)
        shares = self.secagg.share_keys(directory, verify_keys=keys)
        self.fault("share_keys")
        call("ShareKeys", pb.ShareKeysRequest(federation_id=fed, round=number, shares=[
            pb.EncryptedShare(recipient=s.recipient, nonce=s.nonce, ciphertext=s.ciphertext) for s in shares]))
        self.event("step", step="shared_keys")
        inbox = self._poll("GetShares", 2 * config.phase_timeout_s)
        if inbox.status != pb.READY:
            raise RoundAbandoned("GetShares: round aborted")
        received = [EncryptedShare(fed, number, s.sender, s.recipient, s.nonce, s.ciphertext) for s in inbox.shares]
        masked = self.secagg.masked_input(received, vector)
        _save_npy(self.state / "inputs" / f"round-{number}.npy", vector)  # debug hook: before it leaves
        self.fault("masked_input")
        call("SubmitMaskedInput", pb.MaskedInputRequest(federation_id=fed, round=number, masked_uint64_le=masked.data,
                                                        vector_length=masked.vector_length))
        self.event("step", step="masked_input")
        request = self._poll("GetUnmaskRequest", 2 * config.phase_timeout_s)
        if request.status != pb.READY:
            raise RoundAbandoned("GetUnmaskRequest: round aborted")
        told = UnmaskRequest(fed, number, tuple(request.survivors), tuple(request.dropouts))
        if self.secagg_settings.consistency_check:
            signed = self.secagg.sign_survivors(told)
            call("SubmitSurvivorSignature", pb.SurvivorSignatureRequest(federation_id=fed, round=number,
                                                                        signature=signed.signature))
            bundle = self._poll("GetSurvivorSignatures", 2 * config.phase_timeout_s)
            if bundle.status != pb.READY:
                raise RoundAbandoned("GetSurvivorSignatures: round aborted")
            response = self.secagg.unmask(told, verify_keys=keys, signatures=[
                SurvivorSignature(fed, number, x.site, x.signature) for x in bundle.signatures])
        else:
            response = self.secagg.unmask(told)
        self.fault("unmask")
        call("Unmask", pb.UnmaskReply(
            federation_id=fed, round=number,
            self_seed_shares=[pb.RevealedShare(owner=s.owner, share=s.share) for s in response.self_seed_shares],
            mask_key_shares=[pb.RevealedShare(owner=s.owner, share=s.share) for s in response.mask_key_shares]))
        self.event("step", step="unmasked")
        self.fault("result")
        result = self._poll("GetRoundResult", 2 * config.phase_timeout_s)
        protos = np.frombuffer(result.global_prototypes.float64_le, dtype="<f8")
        if result.status == pb.READY:
            _save_npy(self.state / "results" / f"round-{number}.npy", protos)
        self.event("outcome", outcome="completed" if result.status == pb.READY else "aborted",
                   survivors=list(result.survivors), prototypes=int(protos.size), reason=result.abort_reason[:300],
                   bytes_sent=self.round_bytes[0], bytes_received=self.round_bytes[1])

    def _directory(self, ads: pb.Advertisements) -> tuple[KeyDirectory, dict[str, VerifyKey]]:
        """As ``participant.site``: the relayed advertisements (neighbours' only, under SecAgg+) and the
        advertiser ids; only peers whose certificate verifies get a key."""
        fed, adverts, keys = self.cfg.federation_id, [], {}
        for ad in ads.advertisements:
            adverts.append(AdvertiseKeys(fed, self.round, ad.site, ad.share_public_key, ad.mask_public_key,
                                         ad.signature))
            try:
                identity = verify_peer_certificate(ad.certificate_pem, ca_cert=self.ca_cert, crl=self.crl,
                                                   allowed_roles=(Role.SITE,), expected_id=ad.site)
            except SecurityError as exc:
                self.event("untrusted_peer", peer=ad.site, detail=str(exc)[:200])
                continue
            keys[identity.site_id] = VerifyKey(site_signing_public_key(load_certificate(ad.certificate_pem)))
        return KeyDirectory(fed, self.round, tuple(adverts), tuple(ads.advertisers)), keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", required=True)
    parser.add_argument("--coordinator", required=True, help="host:port")
    parser.add_argument("--pki", required=True, help="PKI root (holds ca/ and <site>/)")
    parser.add_argument("--state", required=True, help="this site's state folder")
    parser.add_argument("--federation", default="soakfed")
    parser.add_argument("--dims", type=int, nargs=3, default=(8, 6, 10), metavar=("IMAGE", "TEXT", "CLASSES"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--give-up-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.site} %(levelname)s %(name)s: %(message)s")
    return SoakSite(args).run()


if __name__ == "__main__":
    sys.exit(main())
