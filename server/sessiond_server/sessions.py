"""The session rules: create, verify, refresh with theft detection, revoke, data.

Refresh tokens rotate on every refresh. The new (child) token is not stored:
it names its parent, and the parent stays stored until the client proves it
has the child, by refreshing with it or by verifying an access token
issued with it. Then the child replaces the parent. A refresh token that is
neither the stored one nor a child of it is an old token replayed, so the
session is deleted and the caller gets TOKEN_THEFT_DETECTED.

Two refreshes racing with the same token both succeed: each finds the same
stored parent (or promotes the same child) under the row lock, and each
returns its own child. For refresh_grace_period_s after the stored token
changes, the token it replaced and that token's other children are still
accepted, and the first use of such a sibling makes it the stored token. So
a client that keeps either response of a concurrent refresh stays logged in.

A session has two deadlines, and ends at the earlier one. expires_at_ms is
set at create and at each refresh to now + refresh_token_validity_s, but
never later than created + max_session_lifetime_s. idle_expires_at_ms is
set at the same times to now + idle_timeout_s.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .config import Config
from .errors import (
    InvalidArgumentError,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from .keys import KeyManager
from .merge_patch import apply_merge_patch
from .storage import (
    NO_IDLE_DEADLINE_MS,
    Rotation,
    SessionListing,
    SessionRecord,
    Storage,
    capped_expiry,
)
from .tokens import (
    AccessClaims,
    AccessTokenCodec,
    RefreshTokenCodec,
    hash1,
    hash_anti_csrf,
    new_anti_csrf_token,
    sha256,
)
from .validation import (
    Device,
    check_device,
    check_expected_version,
    check_handle,
    check_handles,
    check_user_id,
    dump_json,
    parse_json,
    parse_payload,
)

logger = logging.getLogger(__name__)

REFRESH_SECRET_NAME = "refresh_token_hmac"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expiry_ms: int


@dataclass(frozen=True)
class SessionView:
    """The part of a session that its access token carries."""

    session_handle: str
    user_id: str
    access_token_payload_json: str


@dataclass(frozen=True)
class IssuedSession:
    """The result of create and refresh: the session and its new tokens."""

    session: SessionView
    access_token: IssuedToken
    refresh_token: IssuedToken
    anti_csrf_token: IssuedToken | None


@dataclass(frozen=True)
class VerifiedSession:
    session: SessionView
    new_access_token: IssuedToken | None


@dataclass(frozen=True)
class RegeneratedAccessToken:
    session: SessionView
    access_token: IssuedToken


_SESSION_GONE = "session does not exist or has expired"


class SessionManager:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        keys: KeyManager,
        refresh_codec: RefreshTokenCodec,
        clock: Callable[[], int],
        *,
        on_revoke: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._storage = storage
        # Called after a commit that wrote the revocation log.
        self._on_revoke = on_revoke or (lambda: None)
        self._refresh_codec = refresh_codec
        self._clock = clock
        # A token is the JSON payload in base64 (4/3 larger), plus headers,
        # standard claims and a signature: bounded well below twice the
        # payload limit plus 4 KiB.
        self._access_codec = AccessTokenCodec(
            keys,
            issuer=config.issuer,
            validity_s=config.access_token_validity_s,
            leeway_s=config.clock_skew_leeway_s,
            max_token_chars=2 * config.max_access_token_payload_bytes + 4096,
            cache_size=config.verified_token_cache_size,
        )

    # -- tokens ---------------------------------------------------------------

    def _issue(
        self,
        record: SessionRecord,
        refresh_token: str,
        *,
        parent_hash1: bytes | None,
        now_ms: int,
    ) -> IssuedSession:
        """Sign an access token and a new anti-CSRF token to go with refresh_token."""
        anti_csrf = new_anti_csrf_token() if self._config.anti_csrf else None
        access_token, access_expiry_ms = self._access_codec.issue(
            session_handle=record.session_handle,
            user_id=record.user_id,
            payload=json.loads(record.access_token_payload),
            refresh_hash1=hash1(refresh_token),
            parent_refresh_hash1=parent_hash1,
            anti_csrf_hash=hash_anti_csrf(anti_csrf) if anti_csrf is not None else None,
            now_ms=now_ms,
        )
        expires_at_ms = record.ends_at_ms
        return IssuedSession(
            session=_view(record),
            access_token=IssuedToken(access_token, access_expiry_ms),
            refresh_token=IssuedToken(refresh_token, expires_at_ms),
            anti_csrf_token=IssuedToken(anti_csrf, expires_at_ms)
            if anti_csrf is not None
            else None,
        )

    def _reissue_access_token(
        self, claims: AccessClaims, record: SessionRecord, now_ms: int
    ) -> IssuedToken:
        """Sign a new access token for a promoted child: same refresh token and CSRF hash, no parent."""
        token, expiry_ms = self._access_codec.issue(
            session_handle=record.session_handle,
            user_id=record.user_id,
            payload=json.loads(record.access_token_payload),
            refresh_hash1=claims.refresh_hash1,
            parent_refresh_hash1=None,
            anti_csrf_hash=claims.anti_csrf_hash,
            now_ms=now_ms,
        )
        return IssuedToken(token, expiry_ms)

    def _idle_deadline(self, now_ms: int) -> int:
        if self._config.idle_timeout_s == 0:
            return NO_IDLE_DEADLINE_MS
        return now_ms + self._config.idle_timeout_s * 1000

    # -- operations -----------------------------------------------------------

    def create_session(
        self,
        user_id: str,
        payload_json: str | None,
        session_data_json: str | None,
        device: Device | None = None,
    ) -> IssuedSession:
        check_user_id(user_id)
        checked_device = check_device(device) if device is not None else Device()
        payload = (
            parse_payload(
                payload_json,
                "access_token_payload",
                self._config.max_access_token_payload_bytes,
            )
            if payload_json is not None
            else {}
        )
        if session_data_json is None:
            session_data_json = "{}"
        else:
            parse_json(
                session_data_json, "session_data", self._config.max_session_data_bytes
            )

        now = self._clock()
        handle = str(uuid.uuid4())
        # The first refresh token has no parent, so it is stored at once.
        refresh_token = self._refresh_codec.issue(handle, None)
        record = SessionRecord(
            session_handle=handle,
            user_id=user_id,
            refresh_token_hash2=sha256(hash1(refresh_token)),
            access_token_payload=dump_json(payload),
            session_data=session_data_json,
            data_version=1,
            created_at_ms=now,
            expires_at_ms=capped_expiry(
                now,
                now + self._config.refresh_token_validity_s * 1000,
                self._config.max_session_lifetime_s * 1000,
            ),
            refresh_token_changed_at_ms=now,
            last_refreshed_at_ms=now,
            idle_expires_at_ms=self._idle_deadline(now),
            device_user_agent=checked_device.user_agent,
            device_ip_address=checked_device.ip_address,
            device_label=checked_device.label,
        )

        evicted = self._storage.create_session(
            record, max_sessions_per_user=self._config.max_sessions_per_user
        )
        logger.debug("session created handle=%s", handle)
        metrics.SESSION_EVENTS.labels("created").inc()
        if evicted:
            self._revoked(evicted)
            logger.info(
                "oldest sessions revoked, max_sessions_per_user reached handle=%s revoked=%s",
                handle,
                ",".join(evicted),
            )
        return self._issue(record, refresh_token, parent_hash1=None, now_ms=now)

    def verify_session(
        self, access_token: str, anti_csrf_token: str | None, *, check_database: bool
    ) -> VerifiedSession:
        claims = self._access_codec.verify(access_token)
        if self._config.anti_csrf:
            _check_anti_csrf(claims, anti_csrf_token)
        view = SessionView(claims.session_handle, claims.user_id, claims.payload_json)
        if claims.parent_refresh_hash1 is not None:
            return self._promote(claims, view)
        if check_database or self._config.blacklisting:
            user_id = self._storage.live_session_user_id(
                claims.session_handle, self._clock()
            )
            if user_id != claims.user_id:
                raise UnauthorisedError(
                    "session does not exist or has expired; log the user in again"
                )
        return VerifiedSession(view, None)

    def _promote(self, claims: AccessClaims, view: SessionView) -> VerifiedSession:
        """Handle the first use of an access token issued with a child refresh token."""
        assert claims.parent_refresh_hash1 is not None
        now = self._clock()
        result = self._storage.promote_refresh_token(
            claims.session_handle,
            sha256(claims.parent_refresh_hash1),
            sha256(claims.refresh_hash1),
            now,
            self._config.refresh_grace_period_s * 1000,
        )
        record = result.session
        if record is None or record.user_id != claims.user_id:
            raise UnauthorisedError(
                "session does not exist or has expired; log the user in again"
            )
        if result.outcome is Rotation.THEFT:
            # The session moved on to another branch of refresh tokens. The
            # access token is genuine and unexpired, so it stays valid, as a
            # stateless token would. A replay of its refresh token is caught
            # by the refresh path.
            return VerifiedSession(view, None)
        if result.outcome is not Rotation.CURRENT:
            logger.debug(
                "refresh token promoted handle=%s outcome=%s",
                claims.session_handle,
                result.outcome.value,
            )
        return VerifiedSession(
            _view(record), self._reissue_access_token(claims, record, now)
        )

    def refresh_session(self, refresh_token: str) -> IssuedSession:
        parsed = self._refresh_codec.parse(refresh_token)
        now = self._clock()
        expires_at = now + self._config.refresh_token_validity_s * 1000
        idle_expires_at = self._idle_deadline(now)
        max_lifetime_ms = self._config.max_session_lifetime_s * 1000
        result = self._storage.rotate_refresh_token(
            parsed.session_handle,
            sha256(parsed.hash1),
            sha256(parsed.parent_hash1) if parsed.parent_hash1 is not None else None,
            now,
            expires_at,
            self._config.refresh_grace_period_s * 1000,
            idle_expires_at_ms=idle_expires_at,
            max_lifetime_ms=max_lifetime_ms,
        )
        record = result.session
        if result.outcome is Rotation.NOT_FOUND or record is None:
            raise UnauthorisedError(
                "session does not exist or has expired; log the user in again"
            )
        if result.outcome is Rotation.THEFT:
            logger.warning("token theft detected handle=%s", parsed.session_handle)
            metrics.SESSION_EVENTS.labels("theft_detected").inc()
            self._on_revoke()
            raise TokenTheftDetectedError(record.session_handle, record.user_id)
        # The same deadlines that rotate_refresh_token stored.
        record = dataclasses.replace(
            record,
            expires_at_ms=capped_expiry(
                record.created_at_ms, expires_at, max_lifetime_ms
            ),
            idle_expires_at_ms=idle_expires_at,
            last_refreshed_at_ms=now,
        )
        child = self._refresh_codec.issue(record.session_handle, parsed.hash1)
        metrics.SESSION_EVENTS.labels("refreshed").inc()
        return self._issue(record, child, parent_hash1=parsed.hash1, now_ms=now)

    def revoke_session(self, handle: str) -> bool:
        check_handle(handle)
        return bool(self.revoke_sessions([handle]))

    def revoke_sessions(self, handles: list[str]) -> list[str]:
        check_handles(handles)
        return self._revoked(self._storage.revoke_sessions(handles, self._clock()))

    def revoke_all_sessions_for_user(self, user_id: str) -> list[str]:
        check_user_id(user_id)
        revoked = self._storage.revoke_all_sessions_for_user(user_id, self._clock())
        return self._revoked(revoked)

    def _revoked(self, handles: list[str]) -> list[str]:
        if handles:
            metrics.SESSION_EVENTS.labels("revoked").inc(len(handles))
            self._on_revoke()
        return handles

    def list_session_handles(self, user_id: str) -> list[str]:
        check_user_id(user_id)
        return self._storage.list_session_handles(user_id, self._clock())

    def list_sessions(self, user_id: str) -> list[SessionListing]:
        # NOTE: there is no paging. A user with very many sessions, or many
        # large payloads, can exceed the gRPC message limit; setting
        # max_sessions_per_user bounds the response.
        check_user_id(user_id)
        return self._storage.list_sessions(user_id, self._clock())

    def get_session_info(self, handle: str) -> SessionRecord:
        check_handle(handle)
        record = self._storage.get_session(handle, self._clock())
        if record is None:
            raise UnauthorisedError(_SESSION_GONE)
        return record

    def get_session_data(self, handle: str) -> tuple[str, int]:
        check_handle(handle)
        found = self._storage.get_session_data(handle, self._clock())
        if found is None:
            raise UnauthorisedError(_SESSION_GONE)
        return found

    def update_session_data(
        self,
        handle: str,
        session_data_json: str,
        expected_version: int | None = None,
    ) -> int:
        """Overwrite the session data; return the new data version.

        Raises:
            ConflictError: expected_version is set and is not the stored version.
        """
        check_handle(handle)
        check_expected_version(expected_version)
        parse_json(
            session_data_json, "session_data", self._config.max_session_data_bytes
        )
        version = self._storage.update_session_data(
            handle, session_data_json, self._clock(), expected_version
        )
        if version is None:
            raise UnauthorisedError(_SESSION_GONE)
        return version

    def merge_session_data(
        self, handle: str, patch_json: str, expected_version: int | None = None
    ) -> tuple[str, int]:
        """Apply a JSON merge patch to the session data; return the new (data JSON, version).

        The patch is applied to the data as stored at that moment, under the
        row lock, so a merge never drops a write that committed before it.

        Raises:
            InvalidArgumentError: the patch is invalid, or the result is larger
                than max_session_data_bytes (field session_data).
            ConflictError: expected_version is set and is not the stored version.
        """
        check_handle(handle)
        check_expected_version(expected_version)
        max_bytes = self._config.max_session_data_bytes
        patch = parse_json(patch_json, "patch", max_bytes)

        def merge(stored_json: str) -> str:
            try:
                merged = dump_json(apply_merge_patch(json.loads(stored_json), patch))
            except RecursionError:
                raise InvalidArgumentError(
                    "patch",
                    "together with the stored data is nested too deeply to merge; "
                    "send a patch with fewer nested levels",
                ) from None
            size = len(merged.encode("utf-8"))
            if size > max_bytes:
                raise InvalidArgumentError(
                    "session_data",
                    f"would be {size} bytes after the merge; the maximum is "
                    f"{max_bytes} bytes, so the data was left unchanged",
                )
            return merged

        written = self._storage.rewrite_session_data(
            handle, merge, self._clock(), expected_version
        )
        if written is None:
            raise UnauthorisedError(_SESSION_GONE)
        return written

    def update_access_token_payload(self, handle: str, payload_json: str) -> None:
        """Store a new payload for the access tokens that refresh and promotion issue."""
        check_handle(handle)
        payload = parse_payload(
            payload_json,
            "access_token_payload",
            self._config.max_access_token_payload_bytes,
        )
        record = self._storage.update_access_token_payload(
            handle, dump_json(payload), self._clock()
        )
        if record is None:
            raise UnauthorisedError(_SESSION_GONE)

    def regenerate_access_token(
        self, access_token: str, payload_json: str | None
    ) -> RegeneratedAccessToken:
        """Verify an access token, without the anti-CSRF check, and sign a new one.

        The new token carries the given payload, which is also stored, or the
        stored payload when payload_json is None. It keeps the refresh token
        hashes (rth, prth) and the anti-CSRF hash of the old token, so the
        client's anti-CSRF token still matches, and a token issued with a
        child refresh token still promotes that child on its first verify.
        """
        claims = self._access_codec.verify(access_token)
        payload_text = (
            dump_json(
                parse_payload(
                    payload_json,
                    "access_token_payload",
                    self._config.max_access_token_payload_bytes,
                )
            )
            if payload_json is not None
            else None
        )
        now = self._clock()
        if payload_text is None:
            record = self._storage.get_session(claims.session_handle, now)
        else:
            record = self._storage.update_access_token_payload(
                claims.session_handle, payload_text, now
            )
        if record is None or record.user_id != claims.user_id:
            raise UnauthorisedError(
                "session does not exist or has expired; log the user in again"
            )
        token, expiry_ms = self._access_codec.issue(
            session_handle=record.session_handle,
            user_id=record.user_id,
            payload=json.loads(record.access_token_payload),
            refresh_hash1=claims.refresh_hash1,
            parent_refresh_hash1=claims.parent_refresh_hash1,
            anti_csrf_hash=claims.anti_csrf_hash,
            now_ms=now,
        )
        return RegeneratedAccessToken(_view(record), IssuedToken(token, expiry_ms))


def _view(record: SessionRecord) -> SessionView:
    return SessionView(
        record.session_handle, record.user_id, record.access_token_payload
    )


def _check_anti_csrf(claims: AccessClaims, anti_csrf_token: str | None) -> None:
    """Compare the anti-CSRF token with the hash in the access token, in constant time.

    A failure raises TRY_REFRESH_TOKEN and never ends the session, so a
    forged cross-site request cannot log the user out.
    """
    if not anti_csrf_token:
        raise TryRefreshTokenError(
            "anti-CSRF token is missing; send the token issued with the session"
        )
    expected = claims.anti_csrf_hash
    if expected is None or not hmac.compare_digest(
        hash_anti_csrf(anti_csrf_token), expected
    ):
        raise TryRefreshTokenError("anti-CSRF token does not match the access token")
