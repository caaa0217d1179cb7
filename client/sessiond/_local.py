"""Access token verification in process, with revocations pushed by the daemon.

A LocalVerifier checks a token as the daemon's VerifySession does: the key
named by the kid header, the algorithm of that key, the issuer, exp with
the daemon's leeway, and the anti-CSRF hash. The keys come from the
daemon's JWK Set. A watch stream reports which sessions ended.

The verifier returns a result only while that stream is current. Otherwise
it returns None and the client calls the daemon, so a lost stream costs
speed and never lets a revoked session through for long. A token seen
before is checked from a cache without a signature check, until it expires
or its session is revoked.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import threading
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import grpc
import jwt

from ._cache import TokenCache
from .errors import TryRefreshTokenError, UnauthorisedError
from .v1 import session_pb2 as pb
from .v1 import session_pb2_grpc

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10_000
# A stream with no message for this long is taken as lost, and tokens go to
# the daemon until it is back. The daemon sends a message at least once
# per heartbeat (1 s), so this allows one missed heartbeat and some delay.
STALE_AFTER_HEARTBEATS = 2.5
# Refetch the JWK Set for an unknown kid at most this often, so forged
# tokens with random kids cannot make every verify fetch it.
JWKS_REFETCH_INTERVAL_S = 1.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
# Longer tokens go to the daemon, which has the real limit from its config.
MAX_LOCAL_TOKEN_CHARS = 64 * 1024
# Revocations are kept this much longer than the access token validity,
# for clocks that differ between hosts.
REVOCATION_SLACK_MS = 60_000
REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "sid", "rth"]
RESERVED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "rth", "prth", "csrf"}
)


@dataclass(frozen=True)
class LocalClaims:
    """The part of a verified access token a session needs."""

    session_handle: str
    user_id: str
    payload: dict[str, Any]
    expiry_s: int
    anti_csrf_hash: str | None


@dataclass(frozen=True)
class _Settings:
    keys: dict[str, jwt.PyJWK]
    issuer: str
    leeway_s: int
    anti_csrf: bool
    blacklisting: bool
    retention_ms: int


class _CacheEntry:
    """A verified token's claims, and the anti-CSRF token last accepted with it."""

    __slots__ = ("accepted_anti_csrf", "claims")

    def __init__(self, claims: LocalClaims) -> None:
        self.claims = claims
        self.accepted_anti_csrf: bytes | None = None

    def check_anti_csrf(self, anti_csrf_token: str | None) -> None:
        # Hashing costs more than the rest of a cached verify, so a repeat of
        # the token already accepted is compared directly, in constant time.
        if anti_csrf_token and self.accepted_anti_csrf is not None:
            presented = anti_csrf_token.encode("utf-8", "surrogatepass")
            if hmac.compare_digest(presented, self.accepted_anti_csrf):
                return
        _check_anti_csrf(self.claims, anti_csrf_token)
        assert anti_csrf_token is not None
        self.accepted_anti_csrf = anti_csrf_token.encode("utf-8", "surrogatepass")


def _hash_anti_csrf(token: str) -> str:
    return (
        urlsafe_b64encode(sha256(token.encode("utf-8", "surrogatepass")).digest())
        .rstrip(b"=")
        .decode()
    )


class LocalVerifier:
    """Verify access tokens in process while a revocation stream is current.

    Args:
        channel: a channel to the daemon, which close() closes.
        metadata: sent with every call (the API key).
        timeout: the deadline of the GetJwks call, in seconds.
        cache_size: verified tokens kept, at most.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: tuple[tuple[str, str], ...],
        timeout: float,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._channel = channel
        self._stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
        self._metadata = metadata
        self._timeout = timeout
        self._settings: _Settings | None = None
        self._settings_lock = threading.Lock()
        self._last_fetch_s = -JWKS_REFETCH_INTERVAL_S
        self._cache: TokenCache[_CacheEntry] = TokenCache(cache_size)
        # session handle -> revoked_at_ms.
        self._revoked: dict[str, int] = {}
        self._resume_after_seq = 0
        self._fresh_until_s = 0.0
        self._message = threading.Event()
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(
            target=self._watch, name="sessiond-revocations", daemon=True
        )
        self._thread.start()

    # -- public ---------------------------------------------------------------

    def wait_until_current(self, timeout: float) -> bool:
        """Wait until the revocation stream is current; return whether it is."""
        deadline = time.monotonic() + timeout
        while not self.current:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._message.wait(min(remaining, 0.05))
            self._message.clear()
        return True

    @property
    def current(self) -> bool:
        """Whether the revocation stream has had a message recently enough to trust."""
        return time.monotonic() < self._fresh_until_s

    def verify(
        self,
        access_token: str,
        anti_csrf_token: str | None,
        *,
        blocking: bool = True,
    ) -> LocalClaims | None:
        """Verify a token in process; return None when the daemon must decide.

        With blocking False, as in an event loop, a token that names an
        unknown key starts a JWK Set fetch in a thread and goes to the
        daemon, instead of waiting for the fetch.

        Raises:
            TryRefreshTokenError: expired, or the anti-CSRF check failed.
            UnauthorisedError: malformed, forged, or the session was revoked.
        """
        settings = self._settings
        if settings is None or settings.blacklisting or not self.current:
            return None
        entry = self._cache.get(access_token)
        if entry is None:
            checked = self._check_signature(access_token, settings, blocking=blocking)
            if checked is None:
                return None
            entry = _CacheEntry(checked)
            self._cache.put(access_token, entry)
        elif time.time() >= entry.claims.expiry_s + settings.leeway_s:
            raise _try_refresh("access token has expired; refresh the session")
        claims = entry.claims
        if settings.anti_csrf:
            entry.check_anti_csrf(anti_csrf_token)
        if claims.session_handle in self._revoked:
            raise _unauthorised(
                "session does not exist or has expired; log the user in again"
            )
        return claims

    def remember_verified(self, access_token: str) -> None:
        """Cache a token the daemon has just accepted, so the next use stays local.

        This is how a token issued by a refresh becomes local: its first use
        goes to the daemon, which promotes the new refresh token.
        """
        settings = self._settings
        if settings is None or settings.blacklisting:
            return
        try:
            claims = self._check_signature(access_token, settings, allow_parent=True)
        except (TryRefreshTokenError, UnauthorisedError):
            return
        if claims is not None:
            self._cache.put(access_token, _CacheEntry(claims))

    def note_revoked(self, handles: list[str]) -> None:
        """Record sessions this client revoked, before the stream reports them."""
        now_ms = int(time.time() * 1000)
        for handle in handles:
            self._revoked[handle] = now_ms

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._thread.join(timeout=5)
        self._channel.close()

    # -- verification -----------------------------------------------------------

    def _check_signature(
        self,
        token: str,
        settings: _Settings,
        *,
        allow_parent: bool = False,
        blocking: bool = True,
    ) -> LocalClaims | None:
        """Check a token's signature and time claims; return None to leave it to the daemon."""
        if len(token) > MAX_LOCAL_TOKEN_CHARS:
            return None
        if "=" in token:
            raise _unauthorised("access token is malformed")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, UnicodeError):
            raise _unauthorised("access token is malformed") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _unauthorised("access token has no kid header")

        key, settings = self._key(kid, settings, blocking)
        if key is None:
            # The daemon may know a key this copy of the JWK Set lacks.
            return None
        if header.get("alg") != key.algorithm_name:
            raise _unauthorised("access token alg header does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": REQUIRED_CLAIMS, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise _try_refresh(
                "access token has expired; refresh the session"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorised(
                f"access token is invalid: {type(exc).__name__}"
            ) from None

        if "prth" in claims and not allow_parent:
            # The first use of a token from a refresh promotes its refresh
            # token in the database.
            return None
        handle, user_id, expiry = claims["sid"], claims["sub"], claims["exp"]
        csrf = claims.get("csrf")
        if (
            not isinstance(handle, str)
            or not isinstance(user_id, str)
            or not isinstance(expiry, int)
            or (csrf is not None and not isinstance(csrf, str))
        ):
            raise _unauthorised("access token claims are malformed")
        payload = {
            name: value for name, value in claims.items() if name not in RESERVED_CLAIMS
        }
        return LocalClaims(handle, user_id, payload, expiry, csrf)

    def _key(
        self, kid: str, settings: _Settings, blocking: bool
    ) -> tuple[jwt.PyJWK | None, _Settings]:
        """Return the key named kid, fetching the JWK Set again if it is unknown.

        Without blocking, the fetch runs in a thread and the key is None.
        """
        key = settings.keys.get(kid)
        if key is not None:
            return key, settings
        if not blocking:
            if time.monotonic() - self._last_fetch_s >= JWKS_REFETCH_INTERVAL_S:
                threading.Thread(target=self._refetch_settings, daemon=True).start()
            return None, settings
        settings = self._refetch_settings() or settings
        return settings.keys.get(kid), settings

    # -- JWK Set ----------------------------------------------------------------

    def _fetch_settings(self) -> _Settings:
        response = self._stub.GetJwks(
            pb.GetJwksRequest(), timeout=self._timeout, metadata=self._metadata
        )
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in json.loads(response.jwks_json)["keys"]:
            keys[jwk["kid"]] = jwt.PyJWK(jwk)
        settings = _Settings(
            keys=keys,
            issuer=response.issuer,
            leeway_s=int(response.clock_skew_leeway_s),
            anti_csrf=response.anti_csrf,
            blacklisting=response.blacklisting,
            retention_ms=int(
                response.access_token_validity_s + response.clock_skew_leeway_s
            )
            * 1000
            + REVOCATION_SLACK_MS,
        )
        self._settings = settings
        self._last_fetch_s = time.monotonic()
        return settings

    def _refetch_settings(self) -> _Settings | None:
        """Fetch the JWK Set again unless that happened in the last interval."""
        with self._settings_lock:
            if time.monotonic() - self._last_fetch_s < JWKS_REFETCH_INTERVAL_S:
                return None
            self._last_fetch_s = time.monotonic()
            try:
                return self._fetch_settings()
            except grpc.RpcError as error:
                logger.warning("JWK Set fetch failed code=%s", error.code())
                return None

    # -- revocation stream -------------------------------------------------------

    def _watch(self) -> None:
        delay_s = RECONNECT_FIRST_S
        while not self._closed.is_set():
            try:
                if self._settings is None:
                    with self._settings_lock:
                        self._fetch_settings()
                self._stream = self._stub.WatchRevocations(
                    pb.WatchRevocationsRequest(after_seq=self._resume_after_seq),
                    metadata=self._metadata,
                )
                for message in self._stream:
                    self._apply(message)
                    delay_s = RECONNECT_FIRST_S
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                logger.info(
                    "revocation stream lost, verifying through the daemon code=%s",
                    error.code(),
                )
            except Exception:
                logger.exception("revocation stream failed")
            # The stream has ended, so no revocation can arrive until it is
            # back: stop trusting it now rather than when the heartbeat is late.
            self._fresh_until_s = 0.0
            if self._closed.wait(delay_s * random.uniform(0.5, 1.0)):
                return
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    def _apply(self, message: pb.WatchRevocationsResponse) -> None:
        now_ms = int(time.time() * 1000)
        settings = self._settings
        retention_ms = settings.retention_ms if settings is not None else 0
        for revocation in message.revocations:
            if now_ms - revocation.revoked_at_ms < retention_ms:
                self._revoked[revocation.session_handle] = revocation.revoked_at_ms
        self._resume_after_seq = message.resume_after_seq
        heartbeat_s = max(message.heartbeat_ms, 100) / 1000
        self._fresh_until_s = time.monotonic() + heartbeat_s * STALE_AFTER_HEARTBEATS
        self._forget_old_revocations(now_ms - retention_ms)
        self._message.set()

    def _forget_old_revocations(self, oldest_ms: int) -> None:
        # No token this verifier can still accept was issued before oldest_ms.
        old = [handle for handle, at in self._revoked.items() if at < oldest_ms]
        for handle in old:
            self._revoked.pop(handle, None)


def _unauthorised(message: str) -> UnauthorisedError:
    return UnauthorisedError(message, code=grpc.StatusCode.UNAUTHENTICATED)


def _try_refresh(message: str) -> TryRefreshTokenError:
    return TryRefreshTokenError(message, code=grpc.StatusCode.UNAUTHENTICATED)


def _check_anti_csrf(claims: LocalClaims, anti_csrf_token: str | None) -> None:
    if not anti_csrf_token:
        raise _try_refresh(
            "anti-CSRF token is missing; send the token issued with the session"
        )
    expected = claims.anti_csrf_hash
    if expected is None or not hmac.compare_digest(
        _hash_anti_csrf(anti_csrf_token), expected
    ):
        raise _try_refresh("anti-CSRF token does not match the access token")
