"""Hostile input against every ``pfmh.v1.Federation`` handler of the real coordinator (mTLS, 127.0.0.1).

Each RPC gets, as raw request bytes: random bytes, bit-flipped / truncated / spliced copies of a valid
request, another method's request, fields encoded with the wrong (or an invalid) wire type, extreme field
values (empty and 100 kB strings, wrong-length keys, 2^64 - 1 rounds, NaN and infinities), huge repeated
fields (5,000 and ~90,000 entries, just under the 4 MiB limit) and one message over the limit. Every call
must end within its deadline with a reply that parses, or with one of the expected statuses: never
UNKNOWN or INTERNAL (an unhandled exception), never DEADLINE_EXCEEDED (a hang). The barrage runs once
with no round in flight and once inside each phase of a round; afterwards the server's memory has not
run away and a normal round still unmasks the exact sum. Seeded, so a failure replays.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from coordinator.round_run import RoundPhase
from coordinator.server import upload_layout
from federation.round_codec import RoundOutcome
from federation.site_round import RoundAbandoned
from proto import federation_pb2 as pb
from proto.settings import PROTOCOL_VERSION
from security import shamir
from security.errors import SecurityError
from tests.netfed import FED, ScriptedSite, channel, coordinator, coordinator_config, join_sites, make_pki

SITES = ["site-a", "site-b", "site-c"]
SERVICE = pb.DESCRIPTOR.services_by_name["Federation"]
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
DEADLINE_S = 5.0
MAX_MESSAGE_MB = 4
F = FieldDescriptor
EXTREMES: dict[int, list] = {
    F.TYPE_STRING: ["", "x" * 100_000, "site-b", "../../etc/passwd", "\u202e\x00", FED + "\n"],
    F.TYPE_BYTES: [b"", b"\0" * 31, b"\xff" * 33, b"\0" * 64, bytes(range(256)) * 64],
    F.TYPE_UINT64: [0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1],
    F.TYPE_UINT32: [0, 2**31, 2**32 - 1],
    F.TYPE_DOUBLE: [math.nan, math.inf, -math.inf, -0.0, -1e308, 5e-324],
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _wire_field(number: int, wire_type: int, rng: random.Random) -> bytes:
    """One field with the given (possibly wrong, possibly invalid) wire type and a fitting random payload."""
    payload = {0: _varint(rng.getrandbits(64)), 1: rng.randbytes(8), 5: rng.randbytes(4),
               2: _varint(40) + rng.randbytes(40)}.get(wire_type, rng.randbytes(3))
    return _varint(number << 3 | wire_type) + payload


class Barrage:
    """Hostile request bytes per method, built from a valid request for the round under attack.

    Args:
        rng: the seeded source of every random choice.
        round_number: the round the "valid" requests name.
        counts: (random payloads, mutations of the valid request) per method.
    """

    def __init__(self, rng: random.Random, round_number: int, *, vector_length: int,
                 counts: tuple[int, int] = (12, 24)) -> None:
        self.rng, self.round, self.length, self.counts = rng, round_number, vector_length, counts

    def valid(self, name: str) -> Message:
        r, rb = self.round, self.rng.randbytes
        share = {"recipient": "site-b", "nonce": rb(12), "ciphertext": rb(48)}
        revealed = {"owner": "site-b", "share": rb(40)}
        return {
            "Join": pb.JoinRequest(federation_id=FED, protocol_version=PROTOCOL_VERSION, num_train_records=10,
                                   image_dim=8, text_dim=6, num_classes=3),
            "WaitForRound": pb.WaitForRoundRequest(federation_id=FED, after_round=max(r - 1, 0)),
            "AdvertiseKeys": pb.AdvertiseKeysRequest(federation_id=FED, round=r, share_public_key=rb(32),
                                                     mask_public_key=rb(32), signature=rb(64)),
            "ShareKeys": pb.ShareKeysRequest(federation_id=FED, round=r, shares=[share, dict(share, recipient="c")]),
            "SubmitMaskedInput": pb.MaskedInputRequest(federation_id=FED, round=r, masked_uint64_le=rb(8 * self.length),
                                                       vector_length=self.length),
            "Unmask": pb.UnmaskReply(federation_id=FED, round=r, self_seed_shares=[revealed],
                                     mask_key_shares=[dict(revealed, owner="site-c")]),
            "SubmitSurvivorSignature": pb.SurvivorSignatureRequest(federation_id=FED, round=r, signature=rb(64)),
            "ReportLedger": pb.LedgerReport(federation_id=FED, lines=['{"seq": 0}', "not json"]),
            "ReportMetrics": pb.SiteMetrics(federation_id=FED, round=r, bits=8, map=0.5, epsilon_spent=1.0,
                                            epsilon_max=8.0, noise_multiplier=1.0, train_seconds=2.0),
            "Leave": pb.LeaveRequest(federation_id=FED, reason="fuzz"),
            "GetStatus": pb.StatusRequest(),
        }.get(name) or pb.PhaseQuery(federation_id=FED, round=r)

    def cases(self, name: str) -> Iterator[tuple[str, bytes]]:
        """(label, request bytes) for one method."""
        rng, valid = self.rng, self.valid(name)
        raw = valid.SerializeToString()
        for _ in range(self.counts[0]):
            yield "random", rng.randbytes(rng.choice([1, 2, 7, 33, 200, 4000]))
        yield "empty", b""
        for _ in range(self.counts[1]):
            yield "mutated", self._mutate(raw)
        for other in rng.sample([m.name for m in SERVICE.methods if m.name != name], 3):
            yield f"request of {other}", self.valid(other).SerializeToString()
        for field in valid.DESCRIPTOR.fields:
            for wire_type in (0, 1, 2, 5, 6, 7):
                yield f"{field.name} as wire type {wire_type}", raw + _wire_field(field.number, wire_type, rng)
            yield from self._extremes(valid, field)

    def _mutate(self, raw: bytes) -> bytes:
        rng, data = self.rng, bytearray(raw)
        kind = rng.choice(["flip", "flip", "truncate", "splice", "repeat"])
        if kind == "flip" and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del data[rng.randrange(len(data) + 1):]
        elif kind == "splice":
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            data += raw
        return bytes(data)

    def _extremes(self, valid: Message, field: FieldDescriptor) -> Iterator[tuple[str, bytes]]:
        if field.type == F.TYPE_MESSAGE:
            item_cls = getattr(pb, field.message_type.name)
            item = getattr(valid, field.name)[0] if len(getattr(valid, field.name)) else item_cls()
            for count in (0, 5000):
                message = valid.__class__()
                message.CopyFrom(valid)
                del getattr(message, field.name)[:]
                getattr(message, field.name).extend([item] * count)
                yield f"{field.name} x{count}", message.SerializeToString()
            for sub in item_cls.DESCRIPTOR.fields:
                for value in EXTREMES.get(sub.type, []):
                    bad = item_cls()
                    bad.CopyFrom(item)
                    setattr(bad, sub.name, value)
                    message = valid.__class__()
                    message.CopyFrom(valid)
                    getattr(message, field.name).append(bad)
                    yield f"{field.name}.{sub.name}={value!r:.20}", message.SerializeToString()
            return
        for value in EXTREMES.get(field.type, []):
            message = valid.__class__()
            message.CopyFrom(valid)
            if field.is_repeated:
                getattr(message, field.name).extend([value] * 3)
            else:
                setattr(message, field.name, value)
            yield f"{field.name}={value!r:.20}", message.SerializeToString()


def _huge_cases(round_number: int) -> list[tuple[str, str, bytes]]:
    """Repeated fields near (and over) the 4 MiB message limit."""
    share = pb.EncryptedShare(recipient="site-b", nonce=b"\1" * 12, ciphertext=b"\2" * 16)
    seed = pb.RevealedShare(owner="site-b", share=b"\3" * 20)
    limit = MAX_MESSAGE_MB << 20
    near = int(limit * 0.95) // (share.ByteSize() + 2)
    return [
        ("ShareKeys", f"{near} shares", pb.ShareKeysRequest(federation_id=FED, round=round_number,
                                                            shares=[share] * near).SerializeToString()),
        ("ShareKeys", "over the limit", pb.ShareKeysRequest(federation_id=FED, round=round_number,
                                                            shares=[share] * (2 * near)).SerializeToString()),
        ("Unmask", f"{near} shares", pb.UnmaskReply(federation_id=FED, round=round_number,
                                                    self_seed_shares=[seed] * near).SerializeToString()),
        ("ReportLedger", "100001 lines", pb.LedgerReport(federation_id=FED, lines=["{}"] * 100_001)
         .SerializeToString()),
        ("ReportLedger", "30000 lines", pb.LedgerReport(federation_id=FED, lines=['{"seq": 1}'] * 30_000)
         .SerializeToString()),
        ("SubmitMaskedInput", "3.8 MB vector", pb.MaskedInputRequest(
            federation_id=FED, round=round_number, masked_uint64_le=b"\0" * (limit * 9 // 10 // 8 * 8),
            vector_length=limit * 9 // 10 // 8).SerializeToString()),
    ]


class Referee:
    """Sends raw request bytes and keeps a description of every call that broke the contract."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.calls = 0
        self.problems: list[str] = []

    def fire(self, chan: grpc.Channel, jobs: list[tuple[str, str, bytes]]) -> None:
        """Send every (method, label, bytes) concurrently, each with its own deadline."""
        self.calls += len(jobs)
        self.problems += [p for p in self.pool.map(lambda job: self._one(chan, *job), jobs) if p]

    @staticmethod
    def _one(chan: grpc.Channel, name: str, label: str, payload: bytes) -> str:
        rpc = chan.unary_unary(f"/{SERVICE.full_name}/{name}", request_serializer=None, response_deserializer=None)
        try:
            reply = rpc(payload, timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            code = exc.code()
            return "" if code in ALLOWED else f"{name} [{label}]: {code.name} {exc.details()!r:.100}"
        try:
            getattr(pb, SERVICE.methods_by_name[name].output_type.name).FromString(reply)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a finding
            return f"{name} [{label}]: reply does not parse: {exc}"
        return ""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _quietly(step: Callable[[], object]) -> object:
    """Run an honest step of a round the barrage may have poisoned; its failure is expected (None)."""
    try:
        return step()
    except (RoundAbandoned, grpc.RpcError, SecurityError, TimeoutError):
        return None


def _forged_unmask(round_number: int, rng: random.Random) -> bytes:
    """Well-formed self-seed shares with site-b's index (2) and random values: accepted, then fail the tag."""
    forged = [pb.RevealedShare(owner=s, share=shamir.Share(2, 32, (rng.randrange(shamir.PRIME),)).to_bytes())
              for s in SITES]
    return pb.UnmaskReply(federation_id=FED, round=round_number, self_seed_shares=forged).SerializeToString()


def test_every_handler_survives_hostile_input_and_a_round_still_completes(tmp_path: Path) -> None:
    # Prepare
    pki = make_pki(tmp_path, SITES)
    cfg = coordinator_config(tmp_path, SITES, rounds=10, phase_timeout_s=2.0, train_timeout_s=3.0,
                             max_message_mb=MAX_MESSAGE_MB)
    # exclusion of repeat offenders is off here: this test needs the fuzzing site to stay in the round
    cfg = replace(cfg, server=replace(cfg.server, long_poll_s=0.25, liveness_s=30.0, gather_s=0.3,
                                      exclude_rounds=0))
    rng = random.Random(20260307)
    with coordinator(tmp_path, cfg) as (port, engine), ThreadPoolExecutor(8) as pool:
        referee = Referee(pool)
        hostile = channel(port, *pki.site_files("site-a"))
        layout = upload_layout(cfg.federation)
        referee.fire(hostile, [("GetStatus", "warm-up", b"")] * 20)
        rss_before = _rss_mb()
        # Execute 1: no round in flight (only site-a calls, so the cohort never fills)
        barrage = Barrage(rng, round_number=1, vector_length=layout.length)
        jobs = [(m.name, label, data) for m in SERVICE.methods for label, data in barrage.cases(m.name)]
        jobs += _huge_cases(1)
        assert {name for name, _, _ in jobs} == {m.name for m in SERVICE.methods}
        referee.fire(hostile, jobs)
        unknown = hostile.unary_unary(f"/{SERVICE.full_name}/NoSuchMethod", request_serializer=None,
                                      response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"\0", timeout=DEADLINE_S)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert engine.current is None, "the barrage alone must not start a round"

        # Execute 2: a round with site-a hostile inside every phase (Leave is left out: it would drop a)
        sites = join_sites(port, pki, cfg, SITES)
        configs = [s.wait_round(0) for s in sites]
        barrage = Barrage(rng, round_number=configs[0].round, vector_length=layout.length, counts=(6, 12))

        def attack(*names: str) -> None:
            referee.fire(hostile, [(n, label, data) for n in names for label, data in barrage.cases(n)])

        for s, c in zip(sites, configs, strict=True):
            _quietly(lambda s=s, c=c: s.advertise(c))
        attack("AdvertiseKeys", "GetAdvertisements", "WaitForRound", "Join")
        for s in sites:
            _quietly(s.share_keys)
        attack("ShareKeys", "GetShares")
        for k, s in enumerate(sites):
            _quietly(lambda s=s, k=k: s.masked_input(np.full(layout.length, float(k))))
        attack("SubmitMaskedInput", "GetUnmaskRequest")
        for s in sites:
            _quietly(s.sign_survivors)
        attack("SubmitSurvivorSignature", "GetSurvivorSignatures")
        sites[1].poll("GetSurvivorSignatures")  # the unmask phase is open
        attack("Unmask", "GetRoundResult", "ReportMetrics", "GetStatus")  # before site-a's honest reply
        forger = channel(port, *pki.site_files("site-b"))
        referee.fire(forger, [("Unmask", "forged shares", _forged_unmask(barrage.round, rng))])
        forger.close()
        for s in sites:
            _quietly(s.unmask)
        poisoned = _quietly(sites[1].result)
        for s in sites:
            s.close()
        rss_after = _rss_mb()

        # Execute 3: an honest round
        sites = join_sites(port, pki, cfg, SITES)
        vectors = [np.full(layout.length, float(k + 1)) for k in range(len(sites))]
        configs = [s.wait_round(configs[0].round) for s in sites]
        for s, c in zip(sites, configs, strict=True):
            s.advertise(c)
        for s in sites:
            s.share_keys()
        for s, v in zip(sites, vectors, strict=True):
            s.masked_input(v)
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        result = sites[0].result()
        hostile.close()

    # Assert: every call ended in time with an expected status, memory stayed put, the last round is exact
    summary = Counter(p[:160] for p in referee.problems)
    assert not referee.problems, f"{len(referee.problems)} of {referee.calls} calls broke the contract:\n" + \
        "\n".join(f"{n} x {p}" for p, n in summary.most_common(30))
    assert referee.calls > 1200
    assert rss_after - rss_before < 250, f"RSS grew from {rss_before:.0f} MB to {rss_after:.0f} MB"
    assert result.status == pb.READY, result
    assert sorted(result.survivors) == SITES
    outcomes = {h["round"]: h for h in engine.state.history}
    assert outcomes[result.round]["outcome"] == "completed", engine.state.history
    # Assert: the round poisoned by forged shares aborted and revealed nothing
    assert outcomes[barrage.round]["outcome"] == "aborted" and "reconstruct" in outcomes[barrage.round]["reason"]
    assert isinstance(poisoned, RoundOutcome) and poisoned.status == pb.ABORTED
    assert poisoned.prototypes is None and not poisoned.survivors
    assert engine.runs[barrage.round].result is None
    assert engine.runs[result.round].phase is RoundPhase.DONE
    got = result.prototypes.reshape(layout.num_classes, layout.bits)
    total = np.sum(vectors, axis=0)
    sums, counts = total[:layout.num_classes * layout.bits], total[layout.num_classes * layout.bits:]
    means = sums.reshape(layout.num_classes, layout.bits) / counts[:, None]
    np.testing.assert_allclose(got, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6)


def test_a_sum_that_is_no_valid_aggregate_aborts_the_round_and_rounds_go_on(tmp_path: Path) -> None:
    # Prepare: FedAvg, where every site claiming a negative record count makes the weight total <= 0
    pki = make_pki(tmp_path, SITES)
    cfg = coordinator_config(tmp_path, SITES, method="fedavg", rounds=3, phase_timeout_s=2.0, train_timeout_s=3.0)
    cfg = replace(cfg, server=replace(cfg.server, long_poll_s=0.25, gather_s=0.3))
    with coordinator(tmp_path, cfg) as (port, engine):
        layout = upload_layout(cfg.federation)
        sites = join_sites(port, pki, cfg, SITES)
        # Execute
        configs = [s.wait_round(0) for s in sites]
        for s, c in zip(sites, configs, strict=True):
            s.advertise(c)
        for s in sites:
            s.share_keys()
        for s in sites:
            s.masked_input(np.concatenate([np.zeros(layout.length - 1), [-1.0]]))
        for s in sites:
            s.sign_survivors()
        for s in sites:
            s.unmask()
        result = sites[0].result()
        following = [ScriptedSite(n, port, pki, cfg.federation, layout.length).wait_round(result.round)
                     for n in SITES]
    # Assert: the round aborted with a reason, published nothing, and the driver started the next round
    assert result.status == pb.ABORTED and "not a valid aggregate" in result.abort_reason
    assert result.model is None
    assert engine.state.completed_rounds == 0
    assert all(f.status == pb.READY and f.round == result.round + 1 for f in following)
