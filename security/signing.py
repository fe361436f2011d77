"""Ed25519 site signing keys: sign and verify advertised key bundles; load and save keys as PEM.

A site's Ed25519 verify key is bound to its X.509 certificate (see ``security.pki``); peers take it from the
certificate, never from the coordinator. The signed key bundle is::

    "pfmh-secagg-v1/advertise\\0" || SessionContext(federation, round, site, "*").to_bytes()
                                  || share public key (32) || mask public key (32)

References:
    RFC 8032 (Ed25519); Bonawitz et al., CCS 2017, Sec. 6 (signed key advertisements, active adversary).
"""
from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat

from durable.atomic_file import atomic_write
from security.context import SessionContext
from security.errors import KeyFormatError, SignatureInvalid
from security.key_agreement import AgreementPublicKey

SIGNATURE_BYTES = 64
_BUNDLE_LABEL = b"pfmh-secagg-v1/advertise\x00"


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PublicKey) -> None:
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"expected an Ed25519 public key, got {type(key).__name__}")
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyKey:
        """Load 32 raw bytes."""
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise KeyFormatError("Ed25519 public key must be 32 raw bytes")
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Load a SubjectPublicKeyInfo PEM."""
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFormatError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"PEM holds a {type(key).__name__}, expected Ed25519")
        return cls(key)

    def to_bytes(self) -> bytes:
        """The 32 raw bytes."""
        return self._key.public_bytes_raw()

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if ``signature`` is valid for ``message``; raise SignatureInvalid otherwise."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureInvalid("Ed25519 signature does not verify under the expected key") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"VerifyKey({self.to_bytes().hex()[:16]}...)"


class SigningKey:
    """An Ed25519 private signing key. Its repr hides the key."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"expected an Ed25519 private key, got {type(key).__name__}")
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the OS CSPRNG."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, *, passphrase: bytes | None) -> SigningKey:
        """Load a PKCS#8 PEM (``passphrase=None`` for an unencrypted file, written out on purpose)."""
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"cannot load signing key PEM: {exc}; check file and passphrase") from exc
        return cls(key)  # type: ignore[arg-type]  # __init__ checks the type

    @classmethod
    def load(cls, path: Path, *, passphrase: bytes | None) -> SigningKey:
        """Read :meth:`from_pem` input from ``path``."""
        return cls.from_pem(Path(path).read_bytes(), passphrase=passphrase)

    def to_pem(self, *, passphrase: bytes | None) -> bytes:
        """PKCS#8 PEM, encrypted with ``passphrase`` or, only if ``None`` is passed, unencrypted."""
        algorithm: serialization.KeySerializationEncryption = (
            serialization.NoEncryption() if passphrase is None
            else serialization.BestAvailableEncryption(passphrase))
        return self._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, algorithm)

    def save(self, path: Path, *, passphrase: bytes | None) -> None:
        """Write :meth:`to_pem` atomically to ``path`` with file mode 0600 (file and folder fsynced)."""
        atomic_write(path, self.to_pem(passphrase=passphrase), mode=0o600)

    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return VerifyKey(self._key.public_key())

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return "SigningKey(<secret>)"


def _bundle(context: SessionContext, share_public_key: AgreementPublicKey,
            mask_public_key: AgreementPublicKey) -> bytes:
    return _BUNDLE_LABEL + context.to_bytes() + share_public_key.to_bytes() + mask_public_key.to_bytes()


def sign_key_bundle(*, signing_key: SigningKey, context: SessionContext, share_public_key: AgreementPublicKey,
                    mask_public_key: AgreementPublicKey) -> bytes:
    """Sign the advertised (share, mask) public keys for ``context`` (sender = the site, recipient = "*")."""
    return signing_key.sign(_bundle(context, share_public_key, mask_public_key))


def verify_key_bundle(*, verify_key: VerifyKey, context: SessionContext, share_public_key: AgreementPublicKey,
                      mask_public_key: AgreementPublicKey, signature: bytes) -> None:
    """Raise SignatureInvalid unless ``signature`` signs this bundle under ``verify_key``."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise SignatureInvalid(f"signature of {context.sender!r} must be {SIGNATURE_BYTES} bytes")
    try:
        verify_key.verify(signature, _bundle(context, share_public_key, mask_public_key))
    except SignatureInvalid as exc:
        raise SignatureInvalid(
            f"key advertisement of {context.sender!r} for round {context.round} is not signed by its "
            f"certified key; reject the site for this round") from exc
