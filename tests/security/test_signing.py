"""Ed25519 site keys: bundle signatures, tampering, PEM round trips, file mode, hidden repr."""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from security.context import SessionContext
from security.errors import KeyFormatError, SignatureInvalid
from security.key_agreement import AgreementPrivateKey, AgreementPublicKey
from security.signing import SigningKey, VerifyKey, sign_key_bundle, verify_key_bundle

CTX = SessionContext("fed", 3, "site-a", "*")


def _bundle() -> tuple[SigningKey, AgreementPublicKey, AgreementPublicKey, bytes]:
    key = SigningKey.generate()
    pk_c, pk_s = AgreementPrivateKey.generate().public_key(), AgreementPrivateKey.generate().public_key()
    sig = sign_key_bundle(signing_key=key, context=CTX, share_public_key=pk_c, mask_public_key=pk_s)
    return key, pk_c, pk_s, sig


def test_bundle_signature_verifies() -> None:
    # Prepare
    key, pk_c, pk_s, sig = _bundle()
    # Execute / Assert (returns None, raises on failure)
    verify_key_bundle(verify_key=key.verify_key(), context=CTX, share_public_key=pk_c, mask_public_key=pk_s,
                      signature=sig)


def test_any_change_breaks_the_signature() -> None:
    # Prepare
    key, pk_c, pk_s, sig = _bundle()
    other_pk = AgreementPrivateKey.generate().public_key()
    cases = [
        dict(verify_key=SigningKey.generate().verify_key(), context=CTX, share_public_key=pk_c, mask_public_key=pk_s),
        dict(verify_key=key.verify_key(), context=dataclasses.replace(CTX, round=4), share_public_key=pk_c,
             mask_public_key=pk_s),
        dict(verify_key=key.verify_key(), context=dataclasses.replace(CTX, sender="site-b"),
             share_public_key=pk_c, mask_public_key=pk_s),
        dict(verify_key=key.verify_key(), context=CTX, share_public_key=pk_s, mask_public_key=pk_c),
        dict(verify_key=key.verify_key(), context=CTX, share_public_key=other_pk, mask_public_key=pk_s),
    ]
    # Execute / Assert
    for case in cases:
        with pytest.raises(SignatureInvalid):
            verify_key_bundle(signature=sig, **case)  # type: ignore[arg-type]
    with pytest.raises(SignatureInvalid, match="64 bytes"):
        verify_key_bundle(verify_key=key.verify_key(), context=CTX, share_public_key=pk_c, mask_public_key=pk_s,
                          signature=sig[:-1])


def test_pem_round_trip_with_and_without_passphrase(tmp_path: Path) -> None:
    # Prepare
    key = SigningKey.generate()
    # Execute
    key.save(tmp_path / "plain.key", passphrase=None)
    key.save(tmp_path / "enc.key", passphrase=b"correct horse")
    plain = SigningKey.load(tmp_path / "plain.key", passphrase=None)
    enc = SigningKey.load(tmp_path / "enc.key", passphrase=b"correct horse")
    # Assert
    assert plain.verify_key() == enc.verify_key() == key.verify_key()
    assert stat.S_IMODE((tmp_path / "enc.key").stat().st_mode) == 0o600
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()
    with pytest.raises(KeyFormatError, match="passphrase"):
        SigningKey.load(tmp_path / "enc.key", passphrase=b"wrong")
    assert VerifyKey.from_pem(key.verify_key().to_pem()) == key.verify_key()
    assert VerifyKey.from_bytes(key.verify_key().to_bytes()) == key.verify_key()


def test_save_fsyncs_the_key_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: record what os.fsync flushes (a key whose folder entry is lost in a power cut is lost)
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    # Execute
    SigningKey.generate().save(tmp_path / "signing.key", passphrase=None)
    # Assert
    assert len(synced) == 2 and synced[-1] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]


def test_wrong_key_types_are_rejected() -> None:
    # Prepare
    from cryptography.hazmat.primitives import serialization
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    pub = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    # Execute / Assert
    with pytest.raises(KeyFormatError):
        SigningKey.from_pem(pem, passphrase=None)
    with pytest.raises(KeyFormatError):
        VerifyKey.from_pem(pub)
    with pytest.raises(KeyFormatError):
        VerifyKey.from_bytes(b"x" * 31)


def test_signing_key_repr_hides_material() -> None:
    # Prepare
    key = SigningKey.generate()
    # Execute / Assert
    assert repr(key) == "SigningKey(<secret>)"
