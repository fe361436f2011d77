"""Append-only audit ledger: hash-chained JSON lines, each entry signed with the site's Ed25519 key.

One line per entry, the canonical JSON (sorted keys, separators ``,``/``:``, ASCII only, no NaN) of::

    {"seq": 0, "prev_hash": "00..00", "time": "2026-01-01T00:00:00.000000+00:00", "site": "hospital-a",
     "record": {...}, "hash": "<hex SHA-256 of the canonical JSON of the five fields above>",
     "signature": "<base64 Ed25519 signature of b'pfmh-ledger-v1\\x00' + the 32 hash bytes>"}

``seq`` counts from 0 and ``prev_hash`` of entry 0 is 64 zeros, so removing, inserting or reordering
entries breaks the sequence or the chain, editing breaks the hash, and re-hashing breaks the signature.
Cutting entries off the END leaves a valid shorter ledger: only a verifier that remembers the last head
it saw (``expected_head=(seq, hash)``) detects that. A crash during ``append`` leaves at most one torn
last line (no trailing newline), which ``Ledger.open`` and ``verify_ledger`` report as ``torn_tail``.
The ledger stores any JSON mapping, e.g. the DP release records of DESIGN.md section 3.

Security:
    The signed message carries the domain tag ``pfmh-ledger-v1\\x00`` so a ledger signature can never be
    replayed as another protocol's signature made with the same site key.

References:
    RFC 8032 (Ed25519); RFC 8785 motivates canonical JSON (ours is Python's sorted-key form).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from durable.atomic_file import fsync_path
from security.errors import InvalidMessage, LedgerTampered, SecurityError, SignatureInvalid
from security.signing import SigningKey, VerifyKey

logger = logging.getLogger(__name__)
GENESIS_HASH = "0" * 64
SIGNATURE_DOMAIN = b"pfmh-ledger-v1\x00"
_FIELDS = ("hash", "prev_hash", "record", "seq", "signature", "site", "time")


class LedgerFault(enum.StrEnum):
    """The ``reason`` codes of :class:`LedgerTampered` raised here."""

    MALFORMED = "malformed"
    HASH_MISMATCH = "hash_mismatch"
    BAD_SIGNATURE = "bad_signature"
    SEQ_GAP = "seq_gap"
    CHAIN_BROKEN = "chain_broken"
    WRONG_SITE = "wrong_site"
    TRUNCATED = "truncated"
    HEAD_MISMATCH = "head_mismatch"
    TORN_TAIL = "torn_tail"


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, ASCII only; NaN/infinity refused (ValueError)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One verified ledger entry (``record`` is the JSON round-trip of what was appended)."""

    seq: int
    prev_hash: str
    time: str
    site: str
    record: dict[str, Any]
    hash: str
    signature: str

    def to_line(self) -> str:
        """The entry's canonical JSON line, without the newline."""
        return canonical_json(asdict(self)).decode("ascii")


def _digest(seq: int, prev_hash: str, time: str, site: str, record: Mapping[str, Any]) -> str:
    body = {"seq": seq, "prev_hash": prev_hash, "time": time, "site": site, "record": record}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _parse(line: str, seq: int) -> LedgerEntry:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise LedgerTampered(LedgerFault.MALFORMED, seq, f"not JSON: {exc}") from exc
    if not isinstance(raw, dict) or tuple(sorted(raw)) != _FIELDS:
        raise LedgerTampered(LedgerFault.MALFORMED, seq, f"expected exactly the fields {_FIELDS}")
    types = {"seq": int, "prev_hash": str, "time": str, "site": str, "record": dict, "hash": str,
             "signature": str}
    bad = [k for k, t in types.items() if not isinstance(raw[k], t) or isinstance(raw[k], bool)]
    if bad or canonical_json(raw).decode("ascii") != line:
        raise LedgerTampered(LedgerFault.MALFORMED, seq, f"wrong field types {bad} or non-canonical encoding")
    return LedgerEntry(**raw)


def _check(entry: LedgerEntry, *, seq: int, prev_hash: str, site_id: str | None, key: VerifyKey) -> None:
    if site_id is not None and entry.site != site_id:
        raise LedgerTampered(LedgerFault.WRONG_SITE, seq, f"entry site {entry.site!r}, expected {site_id!r}")
    if _digest(entry.seq, entry.prev_hash, entry.time, entry.site, entry.record) != entry.hash:
        raise LedgerTampered(LedgerFault.HASH_MISMATCH, seq, "entry content does not match its hash (edited)")
    try:
        signature = base64.b64decode(entry.signature, validate=True)
        key.verify(signature, SIGNATURE_DOMAIN + bytes.fromhex(entry.hash))
    except (SignatureInvalid, binascii.Error, ValueError) as exc:
        raise LedgerTampered(LedgerFault.BAD_SIGNATURE, seq, "signature does not verify under the site key") \
            from exc
    if entry.seq != seq:
        raise LedgerTampered(LedgerFault.SEQ_GAP, seq, f"found seq {entry.seq} at position {seq} "
                             "(entry removed, inserted or reordered)")
    if entry.prev_hash != prev_hash:
        raise LedgerTampered(LedgerFault.CHAIN_BROKEN, seq, "prev_hash is not the previous entry's hash")


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """Complete lines of the file, and whether a torn (newline-less) last line follows them."""
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    try:
        return [ln.decode("ascii") for ln in lines], bool(tail)
    except UnicodeDecodeError as exc:
        raise LedgerTampered(LedgerFault.MALFORMED, None, f"{path} is not ASCII: {exc}") from exc


def verify_ledger(source: Path | str | Iterable[str], *, public_key: VerifyKey | Ed25519PublicKey,
                  site_id: str | None = None, expected_head: tuple[int, str] | None = None,
                  after: tuple[int, str] | None = None) -> list[LedgerEntry]:
    """Verify a whole ledger, or the entries that continue a verified one, and return them.

    Args:
        source: a ledger file path (``str`` or ``Path``), or its lines (e.g. from ``Ledger.export_lines``).
        public_key: the site's Ed25519 verify key (``security.pki_verify.site_signing_public_key(cert)``).
        site_id: when given, every entry must name this site (else all must name the site of entry 0).
        expected_head: ``(seq, hash)`` of the last entry the verifier saw before; it must still be there
            (whole ledgers only).
        after: ``(seq, hash)`` of the last entry of an already verified ledger: ``source`` then holds only
            the entries after it, the first with seq ``seq + 1`` and ``prev_hash`` ``hash``
            (an increment, e.g. ``Ledger.export_lines()[seq + 1:]``; it may be empty).

    Raises:
        LedgerTampered: ``reason`` is a :class:`LedgerFault` value and ``seq`` the first bad position.
    """
    if isinstance(source, (str, Path)):
        lines, torn = _read_lines(Path(source))
        if torn:
            raise LedgerTampered(LedgerFault.TORN_TAIL, len(lines), f"{source} ends in a partial line")
    else:
        lines = [ln.removesuffix("\n") for ln in source]
    if after is not None and expected_head is not None:
        raise ValueError("expected_head checks a whole ledger; an increment (after=) cannot hold it")
    key = public_key if isinstance(public_key, VerifyKey) else VerifyKey(public_key)
    entries: list[LedgerEntry] = []
    first, prev = (0, GENESIS_HASH) if after is None else (after[0] + 1, after[1])
    for seq, line in enumerate(lines, start=first):
        entry = _parse(line, seq)
        _check(entry, seq=seq, prev_hash=prev, site_id=site_id or (entries[0].site if entries else None),
               key=key)
        entries.append(entry)
        prev = entry.hash
    if expected_head is not None:
        require_head(entries, count=expected_head[0] + 1, head_hash=expected_head[1])
    return entries


def require_head(entries: Sequence[LedgerEntry], *, count: int, head_hash: str) -> None:
    """Check that a whole ledger still holds the head a verifier saw: ``count`` entries, the last one ``head_hash``.

    A tail cut off (or a ledger restored from an old backup) verifies on its own; only this comparison with
    a head remembered elsewhere (the coordinator's) detects it. ``count == 0`` checks nothing.

    Raises:
        LedgerTampered: ``truncated`` (fewer than ``count`` entries) or ``head_mismatch`` (another entry there).
    """
    if count <= 0:
        return
    if count > len(entries):
        raise LedgerTampered(LedgerFault.TRUNCATED, len(entries),
                             f"ledger has {len(entries)} entries, but {count} (up to seq {count - 1}) were "
                             "seen earlier")
    if entries[count - 1].hash != head_hash:
        raise LedgerTampered(LedgerFault.HEAD_MISMATCH, count - 1, "differs from the head seen before")


class Ledger:
    """An open, locked, append-only ledger file of one site (use ``Ledger.open``; close or use ``with``).

    Security:
        The signing key never leaves memory. An exclusive ``flock`` keeps a second writer out.
    """

    def __init__(self, *, path: Path, fd: int, signing_key: SigningKey, site_id: str,
                 entries: list[LedgerEntry]) -> None:
        self._path, self._fd, self._key, self._site_id = path, fd, signing_key, site_id
        self._entries = entries
        self._lines = [e.to_line() for e in entries]  # exported as written, whatever callers do to records
        self._broken = False

    @classmethod
    def open(cls, path: Path | str, *, signing_key: SigningKey | Ed25519PrivateKey, site_id: str,
             repair_torn_tail: bool = False) -> Ledger:
        """Create or load ``path``, verifying every entry under ``signing_key``'s public key and ``site_id``.

        ``signing_key`` is the site's Ed25519 key (``signing.key`` of its PKI directory, e.g. loaded with
        ``SigningKey.load``), whose public half its certificate carries.

        Raises:
            LedgerTampered: verification failed, or the last line is torn and ``repair_torn_tail`` is False.
            SecurityError: another process holds the ledger open.
        """
        key = signing_key if isinstance(signing_key, SigningKey) else SigningKey(signing_key)
        path = Path(path)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if created:
                fsync_path(path.parent)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SecurityError(f"ledger {path} is open in another process; stop it first") from exc
            lines, torn = _read_lines(path)
            if torn and not repair_torn_tail:
                raise LedgerTampered(LedgerFault.TORN_TAIL, len(lines), f"{path} ends in a partial line; "
                                     "pass repair_torn_tail=True to drop it after checking the file")
            if torn:
                logger.warning("dropping torn last line of ledger %s after seq %d", path, len(lines) - 1)
                os.ftruncate(fd, sum(len(ln) + 1 for ln in lines))
                os.fsync(fd)
            entries = verify_ledger(lines, public_key=key.verify_key(), site_id=site_id)
        except BaseException:
            os.close(fd)
            raise
        return cls(path=path, fd=fd, signing_key=key, site_id=site_id, entries=entries)

    @property
    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last entry, to be remembered by verifiers; None while empty."""
        return (self._entries[-1].seq, self._entries[-1].hash) if self._entries else None

    def append(self, record: Mapping[str, Any], *, now: dt.datetime | None = None) -> LedgerEntry:
        """Sign and durably append ``record`` (a JSON-able mapping); returns the new entry once fsynced.

        Raises:
            InvalidMessage: ``record`` is not a JSON object of finite values.
            SecurityError: the ledger is closed or an earlier append failed midway.
        """
        if self._fd < 0 or self._broken:
            raise SecurityError(f"ledger {self._path} is closed or broken by a failed write; reopen it")
        try:
            if not isinstance(record, Mapping):
                raise TypeError(f"got {type(record).__name__}, not a mapping")
            clean = json.loads(canonical_json(dict(record)))
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"ledger record is not JSON-able ({exc}); use str keys and finite "
                                 "str/int/float/bool/None/list/dict values") from exc
        seq, prev = len(self._entries), self._entries[-1].hash if self._entries else GENESIS_HASH
        time = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="microseconds")
        digest = _digest(seq, prev, time, self._site_id, clean)
        signature = base64.b64encode(self._key.sign(SIGNATURE_DOMAIN + bytes.fromhex(digest))).decode("ascii")
        entry = LedgerEntry(seq=seq, prev_hash=prev, time=time, site=self._site_id, record=clean, hash=digest,
                            signature=signature)
        line = entry.to_line()
        data = (line + "\n").encode("ascii")
        self._broken = True  # until the write and fsync complete
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        self._broken = False
        self._entries.append(entry)
        self._lines.append(line)
        return entry

    def entries(self) -> list[LedgerEntry]:
        """All entries, oldest first."""
        return list(self._entries)

    def export_lines(self) -> list[str]:
        """The ledger as canonical lines (no newlines), for ``verify_ledger`` at the coordinator."""
        return list(self._lines)

    def close(self) -> None:
        """Release the lock and the file; further appends raise."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
