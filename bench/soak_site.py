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
P in ``bench.soak_plan.POINTS`` is the moment just before the site sends that phase's message, after it received the
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

from durable.atomic_file import atomic_path, atomic_write  # noqa: E402
from federation.layout import upload_layout  # noqa: E402
from federation.peers import PeerVerifier  # noqa: E402
from federation.plan import FederationSettings  # noqa: E402
from federation.round_codec import JoinAccepted, RoundOffer  # noqa: E402
from federation.secagg import secagg_config  # noqa: E402
from federation.site_round import RoundAbandoned, SiteRound  # noqa: E402
from participant.client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable  # noqa: E402
from participant.config import RetryPolicy, SiteConfig, SiteTls  # noqa: E402
from proto import federation_pb2 as pb  # noqa: E402
from proto.settings import PROTOCOL_VERSION  # noqa: E402
from security.errors import SecurityError  # noqa: E402
from security.pki_verify import load_certificate, load_crl  # noqa: E402
from security.secagg_client import SecAggClient  # noqa: E402
from security.signing import SigningKey  # noqa: E402

log = logging.getLogger("soak_site")


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


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
        self.peers = PeerVerifier(self.ca_cert, self.crl, on_untrusted=lambda peer, exc: self.event(
            "untrusted_peer", peer=peer, detail=str(exc)[:200]))
        self.vector = np.zeros(0)
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
        joined = JoinAccepted.from_proto(self.client.call("Join", pb.JoinRequest(
            federation_id=self.cfg.federation_id, protocol_version=PROTOCOL_VERSION, num_train_records=100,
            image_dim=image_dim, text_dim=text_dim, num_classes=classes)))
        settings = joined.settings
        self.bits = settings.train.bits
        self.length = upload_layout(settings).length
        self.secagg_settings = settings.secagg
        self.secagg = SecAggClient(self.name, signing_key=self.signing_key,
                                   config=secagg_config(settings, vector_length=self.length))
        self.site_index = sorted(joined.enrolled_sites).index(self.name)
        return settings

    def run(self) -> int:
        meta = self.state / "site_state.json"
        after = json.loads(meta.read_text())["after_round"] if meta.is_file() else 0
        self.event("start", after_round=after)
        try:
            self.settings = self.join()
            while True:
                config = RoundOffer.from_proto(self.client.call("WaitForRound", pb.WaitForRoundRequest(
                    federation_id=self.cfg.federation_id, after_round=after), timeout_s=self.cfg.rpc_timeout_s + 15))
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
                atomic_write(meta, json.dumps({"after_round": after}).encode())
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

    # ------------------------------------------------------------------ federation.site_round.Transport
    def call(self, method: str, request: Any) -> Any:
        return self.client.call(method, request)

    def poll(self, method: str, request: pb.PhaseQuery, *, deadline_s: float) -> Any:
        """Repeat a long-poll until it is not PENDING (an ABORTED reply is returned, not raised)."""
        until = time.monotonic() + deadline_s
        while True:
            reply = self.client.call(method, request)
            if reply.status != pb.PENDING:
                return reply
            if time.monotonic() > until:
                raise RoundAbandoned(f"{method}: phase did not close within {deadline_s:.0f}s")

    def _round(self, config: RoundOffer) -> None:
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

    def _before_send(self, point: str) -> None:
        """Debug hook and faults, just before each phase's message leaves."""
        if point == "masked_input":  # debug hook: the plain input, before its masked version leaves
            _save_npy(self.state / "inputs" / f"round-{self.round}.npy", self.vector)
        self.fault(point)

    def _protocol(self, config: RoundOffer) -> None:
        steps = SiteRound(secagg=self.secagg, transport=self, peers=self.peers, config=config,
                          federation_id=self.cfg.federation_id,
                          consistency_check=self.secagg_settings.consistency_check, before_send=self._before_send)
        self.vector = self._input()
        steps.advertise()
        self.event("step", step="advertised")
        steps.share_keys()
        self.event("step", step="shared_keys")
        steps.masked_input(self.vector)
        self.event("step", step="masked_input")
        steps.sign_survivors()
        steps.unmask()
        self.event("step", step="unmasked")
        result = steps.result()
        protos = np.zeros(0) if result.prototypes is None else result.prototypes.ravel()
        if result.status == pb.READY:
            _save_npy(self.state / "results" / f"round-{self.round}.npy", protos)
        self.event("outcome", outcome="completed" if result.status == pb.READY else "aborted",
                   survivors=list(result.survivors), prototypes=int(protos.size), reason=result.abort_reason[:300],
                   bytes_sent=self.round_bytes[0], bytes_received=self.round_bytes[1])


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
