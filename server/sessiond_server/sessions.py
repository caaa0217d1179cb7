"""The session rules: create, verify, refresh with theft detection, revoke, data.

Refresh tokens rotate on every refresh. The new (child) token is not stored:
it names its parent, and the parent stays stored until the client proves it
holds the child, by refreshing with it or by verifying an access token
issued with it. Then the child replaces the parent. A refresh token that is
neither the stored one nor a child of it is an old token replayed, so the
session is deleted and the caller gets TOKEN_THEFT_DETECTED.

Two refreshes racing with the same token both succeed: each sees the same
stored parent (or promotes the same child) under the row lock, and each
returns its own child. For refresh_grace_period_s after the stored token
changes, the token it replaced and that token's other children are still
accepted, and the first use of such a sibling makes it the stored token. So
a client that keeps either response of a concurrent refresh stays logged in.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config
from .errors import TokenTheftDetectedError, TryRefreshTokenError, UnauthorisedError
from .keys import KeyManager
from .storage import Rotation, SessionRecord, Storage
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
    """What a caller learns about a session from its tokens."""

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


class SessionManager:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        keys: KeyManager,
        refresh_codec: RefreshTokenCodec,
        clock: Callable[[], int],
    ) -> None:
        self._config = config
        self._storage = storage
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
        expires_at_ms = record.expires_at_ms
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

    # -- operations -----------------------------------------------------------

    def create_session(
        self, user_id: str, payload_json: str | None, session_data_json: str | None
    ) -> IssuedSession:
        check_user_id(user_id)
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
            expires_at_ms=now + self._config.refresh_token_validity_s * 1000,
            refresh_token_changed_at_ms=now,
        )
        self._storage.create_session(record)
        logger.debug("session created handle=%s", handle)
        return self._issue(record, refresh_token, parent_hash1=None, now_ms=now)

    def verify_session(
        self, access_token: str, anti_csrf_token: str | None, *, check_database: bool
    ) -> VerifiedSession:
        claims = self._access_codec.verify(access_token)
        if self._config.anti_csrf:
            _check_anti_csrf(claims, anti_csrf_token)
        view = SessionView(
            claims.session_handle, claims.user_id, dump_json(claims.payload)
        )
        if claims.parent_refresh_hash1 is not None:
            return self._promote(claims, view)
        if check_database or self._config.blacklisting:
            record = self._storage.get_session(claims.session_handle, self._clock())
            if record is None or record.user_id != claims.user_id:
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
            # access token itself is genuine and unexpired, so it stays valid
            # as a stateless token would; its refresh token is what a replay
            # would use, and the refresh path deals with that.
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
        result = self._storage.rotate_refresh_token(
            parsed.session_handle,
            sha256(parsed.hash1),
            sha256(parsed.parent_hash1) if parsed.parent_hash1 is not None else None,
            now,
            now + self._config.refresh_token_validity_s * 1000,
            self._config.refresh_grace_period_s * 1000,
        )
        record = result.session
        if result.outcome is Rotation.NOT_FOUND or record is None:
            raise UnauthorisedError(
                "session does not exist or has expired; log the user in again"
            )
        if result.outcome is Rotation.THEFT:
            logger.warning("token theft detected handle=%s", parsed.session_handle)
            raise TokenTheftDetectedError(record.session_handle, record.user_id)
        expires_at = now + self._config.refresh_token_validity_s * 1000
        record = dataclasses.replace(record, expires_at_ms=expires_at)
        child = self._refresh_codec.issue(record.session_handle, parsed.hash1)
        return self._issue(record, child, parent_hash1=parsed.hash1, now_ms=now)

    def revoke_session(self, handle: str) -> bool:
        check_handle(handle)
        return bool(self._storage.revoke_sessions([handle]))

    def revoke_sessions(self, handles: list[str]) -> list[str]:
        check_handles(handles)
        return self._storage.revoke_sessions(handles)

    def revoke_all_sessions_for_user(self, user_id: str) -> list[str]:
        check_user_id(user_id)
        return self._storage.revoke_all_sessions_for_user(user_id, self._clock())

    def list_session_handles(self, user_id: str) -> list[str]:
        check_user_id(user_id)
        return self._storage.list_session_handles(user_id, self._clock())

    def get_session_info(self, handle: str) -> SessionRecord:
        check_handle(handle)
        record = self._storage.get_session(handle, self._clock())
        if record is None:
            raise UnauthorisedError("session does not exist or has expired")
        return record

    def get_session_data(self, handle: str) -> tuple[str, int]:
        check_handle(handle)
        found = self._storage.get_session_data(handle, self._clock())
        if found is None:
            raise UnauthorisedError("session does not exist or has expired")
        return found

    def update_session_data(self, handle: str, session_data_json: str) -> int:
        check_handle(handle)
        parse_json(
            session_data_json, "session_data", self._config.max_session_data_bytes
        )
        version = self._storage.update_session_data(
            handle, session_data_json, self._clock()
        )
        if version is None:
            raise UnauthorisedError("session does not exist or has expired")
        return version


def _view(record: SessionRecord) -> SessionView:
    return SessionView(
        record.session_handle, record.user_id, record.access_token_payload
    )


def _check_anti_csrf(claims: AccessClaims, anti_csrf_token: str | None) -> None:
    """Compare the anti-CSRF token with the hash in the access token, in constant time.

    A failure asks the caller to refresh and never ends the session, so a
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
