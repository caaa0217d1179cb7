"""Signing keys: creation, rotation, lookup by kid, and the JWK Set.

Keys live in the database so that every daemon on it signs and verifies with
the same ones. The newest key signs until its rotation time; after that it
still verifies for the access token lifetime plus the leeway, so every token
it signed can live out its expiry.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from . import clock, metrics
from .config import Config
from .sealing import Sealer
from .storage import SigningKeyRecord, Storage

logger = logging.getLogger(__name__)

# An unknown kid reloads keys from the database at most this often, so a
# flood of tokens with made-up kids costs no more than one query per interval.
UNKNOWN_KID_RELOAD_INTERVAL_MS = 1000
# A daemon that is signing reloads the key list at least this often, so it
# stops signing with a key within this time of a rotation made elsewhere.
SIGNING_STATE_MAX_AGE_MS = 1000


@dataclass(frozen=True)
class SigningKey:
    """A key pair loaded from the database."""

    kid: str
    algorithm: str
    private_key: Any
    public_key: Any
    created_at_ms: int
    signs_until_ms: int

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = get_default_algorithms()[self.algorithm].to_jwk(
            self.public_key, as_dict=True
        )
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk


def generate_private_key(algorithm: str) -> Any:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def _load(record: SigningKeyRecord, sealer: Sealer) -> SigningKey:
    pem = sealer.open(record.private_key_pem, f"signing key {record.kid}")
    private_key = serialization.load_pem_private_key(pem, password=None)
    return SigningKey(
        kid=record.kid,
        algorithm=record.algorithm,
        private_key=private_key,
        public_key=private_key.public_key(),
        created_at_ms=record.created_at_ms,
        signs_until_ms=record.signs_until_ms,
    )


class KeyManager:
    """The signing keys of one daemon, cached in memory and kept in step with the database."""

    def __init__(
        self,
        storage: Storage,
        *,
        algorithm: str,
        rotation_interval_s: int,
        verify_window_s: int,
        clock: Callable[[], int],
        sealer: Sealer | None = None,
    ) -> None:
        self._storage = storage
        self._sealer = sealer or Sealer(None)
        self._algorithm = algorithm
        self._rotation_interval_ms = rotation_interval_s * 1000
        # How long after it stops signing a key still verifies: the longest
        # life of a token it signed, plus the time other daemons may go on
        # signing with it before they notice a forced rotation.
        self._verify_window_ms = verify_window_s * 1000 + 2 * SIGNING_STATE_MAX_AGE_MS
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._signing: SigningKey | None = None
        self._lock = threading.Lock()
        self._last_reload_ms = 0
        self._last_kid_reload_ms = 0

    @classmethod
    def for_config(cls, config: Config, storage: Storage) -> KeyManager:
        """Build the key manager the settings describe, on the wall clock."""
        return cls(
            storage,
            algorithm=config.signing_algorithm,
            rotation_interval_s=config.key_rotation_interval_s,
            verify_window_s=config.access_token_validity_s + config.clock_skew_leeway_s,
            clock=clock.now_ms,
            sealer=Sealer(config.key_encryption_key_bytes()),
        )

    def _make_record(self, now_ms: int) -> SigningKeyRecord:
        private_key = generate_private_key(self._algorithm)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        kid = secrets.token_urlsafe(12)
        return SigningKeyRecord(
            kid=kid,
            algorithm=self._algorithm,
            private_key_pem=self._sealer.seal(pem, f"signing key {kid}"),
            created_at_ms=now_ms,
            signs_until_ms=now_ms + self._rotation_interval_ms,
        )

    def reload(self) -> None:
        """Load every key that may still verify a live token, adding a signing key if due."""
        with self._lock:
            self._reload_locked()

    def _reload_locked(self) -> None:
        now = self._clock()
        records = self._storage.load_signing_keys(now - self._verify_window_ms)
        if not any(record.signs_until_ms > now for record in records):
            created = self._storage.add_signing_key_if_due(
                self._make_record, now, force=False
            )
            if created is not None:
                metrics.KEY_ROTATIONS.inc()
                logger.info(
                    "signing key created kid=%s algorithm=%s",
                    created.kid,
                    created.algorithm,
                )
            records = self._storage.load_signing_keys(now - self._verify_window_ms)
        keys = {
            record.kid: self._keys.get(record.kid) or _load(record, self._sealer)
            for record in records
        }
        # Signing keys whose signs_until changed (forced rotation) must be reloaded.
        for record in records:
            if keys[record.kid].signs_until_ms != record.signs_until_ms:
                keys[record.kid] = _load(record, self._sealer)
        signers = [key for key in keys.values() if key.signs_until_ms > now]
        self._keys = keys
        self._signing = (
            max(signers, key=lambda key: key.created_at_ms) if signers else None
        )
        self._last_reload_ms = now

    def rotate(self) -> SigningKey:
        """Stop signing with the current key now and create a new one."""
        with self._lock:
            created = self._storage.add_signing_key_if_due(
                self._make_record, self._clock(), force=True
            )
            if created is not None:
                metrics.KEY_ROTATIONS.inc()
                logger.info(
                    "signing key rotated kid=%s algorithm=%s",
                    created.kid,
                    created.algorithm,
                )
            self._reload_locked()
            assert self._signing is not None
            return self._signing

    def signing_key(self) -> SigningKey:
        """Return the key to sign with, rotating first when the current one is due.

        The key list is reloaded at most once per SIGNING_STATE_MAX_AGE_MS
        while signing, so a rotation made by another daemon or by `sessiond
        keys rotate` takes effect here within that time.
        """
        now = self._clock()
        key = self._signing
        if key is not None and key.signs_until_ms > now:
            if now - self._last_reload_ms >= SIGNING_STATE_MAX_AGE_MS:
                self._refresh_in_background_of(key)
            return self._signing or key
        with self._lock:
            key = self._signing
            if key is None or key.signs_until_ms <= self._clock():
                self._reload_locked()
                key = self._signing
        if key is None:
            raise RuntimeError("no signing key is available after reloading keys")
        return key

    def _refresh_in_background_of(self, key: SigningKey) -> None:
        """Reload keys unless another thread is already doing it; on failure keep key."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._reload_locked()
        except Exception as exc:
            # Signing needs no database, so a failed reload must not fail
            # the call; the next one tries again.
            self._last_reload_ms = self._clock()
            logger.warning("signing key reload failed kid=%s error=%s", key.kid, exc)
        finally:
            self._lock.release()

    def verification_key(self, kid: str) -> SigningKey | None:
        """Return the key named kid, reloading (rate-limited) when it is unknown."""
        key = self._keys.get(kid)
        if key is not None:
            return (
                key
                if key.signs_until_ms + self._verify_window_ms > self._clock()
                else None
            )
        # Only reloads made for an unknown kid count against the limit: the
        # periodic reloads of a signing daemon must not hide a key that
        # another daemon created a moment ago.
        if self._clock() - self._last_kid_reload_ms < UNKNOWN_KID_RELOAD_INTERVAL_MS:
            return None
        with self._lock:
            if (
                self._clock() - self._last_kid_reload_ms
                >= UNKNOWN_KID_RELOAD_INTERVAL_MS
            ):
                self._last_kid_reload_ms = self._clock()
                self._reload_locked()
        return self._keys.get(kid)

    def delete_retired(self) -> int:
        """Delete keys that can no longer verify any live token; return how many."""
        return self._storage.delete_signing_keys(self._clock() - self._verify_window_ms)

    @property
    def verify_window_ms(self) -> int:
        """Time after a key stops signing during which it still verifies."""
        return self._verify_window_ms

    def loaded(self) -> list[SigningKey]:
        """Return the keys in memory, oldest first."""
        return sorted(self._keys.values(), key=lambda key: key.created_at_ms)

    def jwks(self) -> dict[str, Any]:
        """Return the JWK Set of the keys that may have signed a live token.

        The key list is brought up to date first, as for signing: reloaded
        when it is older than SIGNING_STATE_MAX_AGE_MS, and a signing key is
        created when none is current. So a daemon that signs nothing still
        lists, within about a second, a key that another daemon or `sessiond
        keys rotate` created, and never serves an empty set.
        """
        self.signing_key()
        now = self._clock()
        keys = [
            key.public_jwk()
            for key in self._keys.values()
            if key.signs_until_ms + self._verify_window_ms > now
        ]
        return {"keys": keys}
