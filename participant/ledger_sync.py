"""The site's side of the ledger cross-check: hold the local ledger to the coordinator's verified head,
and report only the entries after it.

At Join the coordinator hands the site ``(entries, head hash)`` of the ledger it last verified for it.
A local ledger with fewer entries, or another entry at that position, was cut or restored from an old
backup: it would rebuild a smaller epsilon, so the site refuses to train (:func:`require_coordinator_head`).
After each round the site sends ``LedgerReport(first_seq=n, lines=lines[n:])`` where ``n`` is the count
the coordinator verified last (:class:`LedgerReporter`); the coordinator checks the increment's hash link
to its stored head and its signatures (``coordinator.ledgers.LedgerStore.receive``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import grpc

from participant.client import CoordinatorClient, CoordinatorError
from proto import federation_pb2 as pb
from security.errors import LedgerTampered, SecurityError
from security.ledger import Ledger, require_head

logger = logging.getLogger(__name__)


class LedgerBehind(SecurityError):
    """The local ledger is behind the head the coordinator verified: it was truncated or restored (fatal)."""


def require_coordinator_head(ledger: Ledger, *, entries: int, head_hash: str, path: Path | str) -> None:
    """Refuse to go on if ``ledger`` lacks the ``entries`` the coordinator verified, or differs at its head.

    Raises:
        LedgerBehind: one line naming the ledger, both heads and the fix.
    """
    try:
        require_head(ledger.entries(), count=entries, head_hash=head_hash)
    except LedgerTampered as exc:
        have = len(ledger.entries())
        what = (f"has {have} entries but the coordinator verified {entries}" if exc.reason == "truncated"
                else f"differs at seq {entries - 1} from the entry the coordinator verified "
                     f"(hash {head_hash[:16]}...)")
        raise LedgerBehind(f"the local privacy ledger {path} {what}: it was cut or restored from an old backup, "
                           "and training on it would reset the spent privacy budget; refusing to train. Restore "
                           "the complete ledger.jsonl of this site") from exc


class LedgerReporter:
    """Sends the ledger entries the coordinator has not verified yet (``ReportLedger`` after each round).

    Args:
        client: the coordinator connection.
        federation_id: this federation.
        ledger: the site's open ledger.
        verified: entries the coordinator already verified (``JoinReply.ledger_entries``).
    """

    def __init__(self, client: CoordinatorClient, federation_id: str, ledger: Ledger, *, verified: int) -> None:
        self.client, self.federation_id, self.ledger = client, federation_id, ledger
        self.verified = verified

    def report(self) -> None:
        """Report the new entries; the whole ledger if the coordinator holds fewer entries than assumed."""
        lines = self.ledger.export_lines()
        try:
            self.client.call("ReportLedger", pb.LedgerReport(
                federation_id=self.federation_id, lines=lines[self.verified:], first_seq=self.verified))
        except CoordinatorError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            logger.warning("the coordinator holds fewer ledger entries than expected (%s); sending all %d",
                           exc.detail, len(lines))
            self.client.call("ReportLedger", pb.LedgerReport(federation_id=self.federation_id, lines=lines,
                                                             first_seq=0))
        self.verified = len(lines)
