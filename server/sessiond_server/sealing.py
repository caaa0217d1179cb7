"""Encryption at rest of private signing keys and secrets (AES-256-GCM).

A sealed value is ``sdkek1:`` + 12-byte nonce + ciphertext and tag. The
associated data names what the value is (for example the key id), so a
sealed value copied onto another row does not decrypt. Values stored before
a key-encryption key was configured stay readable in the clear.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = b"sdkek1:"
_NONCE_BYTES = 12


class UnsealError(Exception):
    """A stored value cannot be decrypted with the configured key-encryption key."""


class Sealer:
    """Seal and open values with an optional key-encryption key."""

    def __init__(self, key_encryption_key: bytes | None) -> None:
        self._aead = AESGCM(key_encryption_key) if key_encryption_key else None

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def seal(self, value: bytes, context: str) -> bytes:
        if self._aead is None:
            return value
        nonce = os.urandom(_NONCE_BYTES)
        return (
            SEALED_PREFIX + nonce + self._aead.encrypt(nonce, value, context.encode())
        )

    def open(self, stored: bytes, context: str) -> bytes:
        if not stored.startswith(SEALED_PREFIX):
            return stored
        if self._aead is None:
            raise UnsealError(
                f"{context} is encrypted; set key_encryption_key or key_encryption_key_file"
            )
        body = stored[len(SEALED_PREFIX) :]
        try:
            return self._aead.decrypt(
                body[:_NONCE_BYTES], body[_NONCE_BYTES:], context.encode()
            )
        except InvalidTag:
            raise UnsealError(
                f"{context} does not decrypt with the configured key-encryption key"
            ) from None
