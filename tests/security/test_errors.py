"""Security exceptions: one base class, structured fields, messages with value and fix."""
from __future__ import annotations

import pytest

from security import errors
from security.errors import CertificateRejected, LedgerTampered, RejectReason, RoundAborted, SecurityError


def test_every_error_derives_from_security_error() -> None:
    # Prepare
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    # Execute / Assert
    assert len(classes) >= 14
    assert all(issubclass(c, SecurityError) for c in classes)


def test_structured_errors_keep_their_fields() -> None:
    # Execute
    aborted = RoundAborted("2 survivors < threshold 3")
    tampered = LedgerTampered("hash_mismatch", 7, "entry edited")
    rejected = CertificateRejected(RejectReason.EXPIRED, "not_after 2020-01-01")
    # Assert
    assert aborted.reason == "2 survivors < threshold 3" and "round aborted" in str(aborted)
    assert (tampered.reason, tampered.seq) == ("hash_mismatch", 7) and "at seq 7" in str(tampered)
    assert rejected.reason is RejectReason.EXPIRED and "(expired)" in str(rejected)
    with pytest.raises(SecurityError):
        raise aborted
