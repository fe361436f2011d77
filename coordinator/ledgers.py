"""Sites' signed privacy ledgers as reported to the coordinator: verified on arrival, kept for audit.

A site reports the entries after the head the coordinator last verified for it (``first_seq`` of
``LedgerReport``; the head is handed to the site at Join). The increment is verified with the Ed25519
key bound to the site's certificate (so the coordinator cannot forge entries and a site cannot disown
them) and must link by hash to the stored head; a report that starts earlier must repeat the stored
entries unchanged (a site cannot silently drop or rewrite releases). Accepted ledgers are stored
atomically as ``<state_dir>/ledgers/<site>.jsonl`` plus the site's certificate, and the head in
``heads.json``; ``pfmh-coordinator audit`` re-verifies them independently. A rejected report is kept,
with the reason, as ``<state_dir>/ledgers/rejected/<site>/<n>.json`` (at most ``MAX_REJECTED`` per site),
and fails the audit of that site until an operator has looked at it and moved it away.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from coordinator.persistence import atomic_write
from security.errors import LedgerTampered, StageOutOfOrder
from security.ledger import LedgerFault, verify_ledger
from security.pki_verify import load_certificate, site_signing_public_key

logger = logging.getLogger(__name__)
REJECTED_DIR = "rejected"
MAX_REJECTED = 100          # kept per site; later rejections are only logged (the audit fails already)
EXCERPT_CHARS = 64 * 1024   # of a rejected report's lines kept verbatim (the rest by count and SHA-256)


class LedgerOutOfSync(StageOutOfOrder):
    """A report starts after the coordinator's head (FAILED_PRECONDITION): the site must send its whole ledger."""


def _key_bytes(certificate_pem: bytes) -> bytes:
    key = site_signing_public_key(load_certificate(certificate_pem))
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


class LedgerStore:
    """Verified ledgers of all sites under ``<state_dir>/ledgers``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "ledgers"
        self._lock = threading.Lock()

    def heads(self) -> dict[str, list]:
        path = self.dir / "heads.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def head(self, site: str) -> tuple[int, str]:
        """``(entries, hash of the last one)`` verified for ``site``; ``(0, "")`` before its first report."""
        with self._lock:
            previous = self.heads().get(site)
        return (int(previous[0]) + 1, str(previous[1])) if previous else (0, "")

    def _stored(self, site: str, count: int) -> list[str] | None:
        """The stored ledger's lines if they are exactly the ``count`` entries ``heads.json`` names, else None."""
        path = self.dir / f"{site}.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return lines if len(lines) == count else None

    def receive(self, site: str, lines: list[str], certificate_pem: bytes, first_seq: int = 0) -> int:
        """Verify and store one site's report (its entries from seq ``first_seq`` on); returns the entry count.

        Raises:
            LedgerTampered: the report breaks the chain, a signature, or drops or rewrites verified entries
                (the report is kept under ``rejected/``).
            LedgerOutOfSync: it starts after the stored head, or the stored copy is unusable and it is partial.
        """
        key = site_signing_public_key(load_certificate(certificate_pem))
        with self._lock:
            heads = self.heads()
            previous = heads.get(site)
            count, head_hash = (int(previous[0]) + 1, str(previous[1])) if previous else (0, "")
            stored = self._stored(site, count) if count else []
            if first_seq > count or (stored is None and first_seq):
                raise LedgerOutOfSync(f"ledger report of {site} starts at seq {first_seq}, but the coordinator "
                                      f"holds {count if stored is not None else 'no usable copy of its'} entries; "
                                      "send the whole ledger (first_seq 0)")
            try:
                combined = self._verify(site, lines, first_seq, stored, count, head_hash, key, certificate_pem)
            except LedgerTampered as exc:
                self._keep_rejected(site, exc, lines, first_seq, certificate_pem)
                raise
            atomic_write(self.dir / f"{site}.jsonl", "".join(f"{line}\n" for line in combined).encode())
            atomic_write(self.dir / f"{site}.crt", certificate_pem)
            if combined:
                last = json.loads(combined[-1])
                heads[site] = [last["seq"], last["hash"]]
                atomic_write(self.dir / "heads.json", json.dumps(heads, indent=1).encode())
        logger.info("ledger of %s verified: %d entries (%d new)", site, len(combined), len(combined) - count)
        return len(combined)

    def _verify(self, site: str, lines: list[str], first_seq: int, stored: list[str] | None, count: int,
                head_hash: str, key, certificate_pem: bytes) -> list[str]:  # noqa: ANN001
        """The whole ledger after this report, once its new entries verified (see :meth:`receive`)."""
        if stored is None:  # heads.json without a matching stored copy: only a whole ledger can be checked
            verify_ledger(lines, public_key=key, site_id=site, expected_head=(count - 1, head_hash))
            return list(lines)
        overlap = count - first_seq  # entries the report repeats: they must be the stored ones, unchanged
        if len(lines) < overlap:
            end = first_seq + len(lines)
            raise LedgerTampered(LedgerFault.TRUNCATED, end, f"the report ends before seq {count - 1}, which the "
                                 "coordinator verified earlier (entries were cut off)")
        for offset, (line, known) in enumerate(zip(lines[:overlap], stored[first_seq:], strict=True)):
            if line != known:
                raise LedgerTampered(LedgerFault.HEAD_MISMATCH, first_seq + offset,
                                     "differs from the entry the coordinator verified earlier")
        increment = lines[overlap:]
        cert_path = self.dir / f"{site}.crt"
        same_key = not count or (cert_path.is_file() and _key_bytes(cert_path.read_bytes()) == _key_bytes(
            certificate_pem))
        if same_key:  # only the increment needs the signature and hash-link checks
            verify_ledger(increment, public_key=key, site_id=site, after=(count - 1, head_hash) if count else None)
        else:  # a new certificate: every entry must verify under its key
            verify_ledger(stored + increment, public_key=key, site_id=site)
        return stored + increment

    def _keep_rejected(self, site: str, exc: LedgerTampered, lines: list[str], first_seq: int,
                       certificate_pem: bytes) -> None:
        folder = self.dir / REJECTED_DIR / site
        kept = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
        logger.error("ledger report of %s rejected: %s", site, exc)
        if kept >= MAX_REJECTED:
            logger.error("%d rejected reports of %s kept already; not keeping this one", kept, site)
            return
        excerpt, size = [], 0
        for line in lines:
            size += len(line) + 1
            if size > EXCERPT_CHARS:
                break
            excerpt.append(line)
        doc = {"site": site, "received": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "reason": str(exc.reason), "seq": exc.seq, "message": str(exc), "first_seq": first_seq,
               "line_count": len(lines),
               "lines_sha256": hashlib.sha256("".join(f"{ln}\n" for ln in lines).encode()).hexdigest(),
               "lines": excerpt, "lines_complete": len(excerpt) == len(lines),
               "certificate_pem": certificate_pem.decode("ascii", "replace")}
        atomic_write(folder / f"{kept:06d}.json", json.dumps(doc, indent=1).encode())


def load_rejected(ledger_dir: Path) -> dict[str, list[dict]]:
    """The kept rejected reports under ``ledger_dir/rejected``, per site, oldest first."""
    out: dict[str, list[dict]] = {}
    root = ledger_dir / REJECTED_DIR
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        doc = json.loads(path.read_text())
        out.setdefault(path.parent.name, []).append({**doc, "file": str(path)})
    return out
