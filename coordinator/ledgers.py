"""Sites' signed privacy ledgers as reported to the coordinator: verified on arrival, kept for audit.

Each report is the site's whole ledger. It is verified with the Ed25519 key bound to the site's
certificate (so the coordinator cannot forge entries and a site cannot disown them), and it must
still contain the head seen in the previous report (a site cannot silently drop releases).
Accepted reports are stored atomically as ``<state_dir>/ledgers/<site>.jsonl`` plus the site's
certificate, which ``pfmh-coordinator audit`` re-verifies independently.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from coordinator.persistence import atomic_write
from security.ledger import verify_ledger
from security.pki_verify import load_certificate, site_signing_public_key

logger = logging.getLogger(__name__)


class LedgerStore:
    """Verified ledgers of all sites under ``<state_dir>/ledgers``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "ledgers"
        self._lock = threading.Lock()

    def heads(self) -> dict[str, list]:
        path = self.dir / "heads.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def receive(self, site: str, lines: list[str], certificate_pem: bytes) -> int:
        """Verify and store one site's ledger; returns the number of entries. Raises LedgerTampered."""
        key = site_signing_public_key(load_certificate(certificate_pem))
        with self._lock:
            heads = self.heads()
            previous = heads.get(site)
            entries = verify_ledger(lines, public_key=key, site_id=site,
                                    expected_head=tuple(previous) if previous else None)  # type: ignore[arg-type]
            atomic_write(self.dir / f"{site}.jsonl", "".join(f"{line}\n" for line in lines).encode())
            atomic_write(self.dir / f"{site}.crt", certificate_pem)
            if entries:
                heads[site] = [entries[-1].seq, entries[-1].hash]
                atomic_write(self.dir / "heads.json", json.dumps(heads, indent=1).encode())
        logger.info("ledger of %s verified: %d entries", site, len(entries))
        return len(entries)
