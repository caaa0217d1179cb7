"""The synchronous client: one gRPC channel to a sessiond daemon."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from ._session import (
    DeviceInfo,
    Session,
    SessionData,
    SessionDetails,
    SessionInfo,
    Token,
)
from .errors import ConflictError, GeneralError, InvalidArgumentError, from_rpc_error
from .v1 import session_pb2 as pb
from .v1 import session_pb2_grpc

__all__ = ["DEFAULT_TIMEOUT_S", "SessionClient"]

DEFAULT_TIMEOUT_S = 10.0
MAX_RECEIVE_MESSAGE_BYTES = 65 * 1024 * 1024
API_KEY_METADATA = "x-api-key"
# modify_session_data waits a random time between attempts, up to this many
# seconds after the first conflict, doubling per attempt up to the maximum.
RETRY_BACKOFF_FIRST_S = 0.005
RETRY_BACKOFF_MAX_S = 0.1
T = TypeVar("T")


def channel_options_with_defaults(
    options: Sequence[tuple[str, Any]],
) -> list[tuple[str, Any]]:
    """Return options plus defaults for any the caller did not set.

    The receive limit matches the largest session data a daemon may be
    configured to accept (64 MiB) plus room for the rest of the message,
    where gRPC's own default of 4 MiB would reject large data on read.
    """
    given = {name for name, _ in options}
    defaults = [("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)]
    return list(options) + [item for item in defaults if item[0] not in given]


def _dump(value: Any, field: str) -> str:
    try:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"invalid {field}: cannot be sent as JSON: {exc}", field=field
        ) from None


def _token(message: pb.Token, present: bool) -> Token | None:
    return Token(message.token, message.expiry_ms) if present else None


def _device_info(message: pb.SessionDetails) -> DeviceInfo | None:
    if not message.HasField("device"):
        return None
    device = message.device
    return DeviceInfo(
        user_agent=device.user_agent or None,
        ip_address=device.ip_address or None,
        label=device.label or None,
    )


class SessionClient:
    """A client of one sessiond daemon.

    Args:
        target: the daemon's address, such as ``127.0.0.1:50051`` or
            ``unix:/run/sessiond/sessiond.sock``.
        api_key: sent with every call when the daemon requires API keys.
        timeout: the deadline of each call, in seconds.
        credentials: TLS channel credentials; None for a plaintext channel.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._timeout = timeout
        self._metadata = ((API_KEY_METADATA, api_key),) if api_key else ()
        channel_options = channel_options_with_defaults(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(
                target, credentials, options=channel_options
            )
        self._stub = session_pb2_grpc.SessionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._channel.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        if self._closed:
            raise GeneralError("the client is closed; create a new SessionClient")
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _session(self, response: Any, *, issued: bool) -> Session:
        summary = response.session
        return Session(
            self,
            handle=summary.session_handle,
            user_id=summary.user_id,
            access_token_payload=json.loads(summary.access_token_payload_json),
            access_token=_token(
                response.access_token, issued and response.HasField("access_token")
            ),
            refresh_token=_token(
                response.refresh_token, issued and response.HasField("refresh_token")
            ),
            anti_csrf_token=_token(
                response.anti_csrf_token,
                issued and response.HasField("anti_csrf_token"),
            ),
        )

    # -- sessions -------------------------------------------------------------

    def create_new_session(
        self,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = None,
        *,
        device: DeviceInfo | None = None,
    ) -> Session:
        """Log a user in. A None payload or session data is stored as ``{}``.

        ``device`` is returned by ``list_sessions``; a bad field raises
        InvalidArgumentError naming it, such as ``device.ip_address``.
        """
        request = pb.CreateSessionRequest(user_id=user_id)
        if access_token_payload is not None:
            request.access_token_payload_json = _dump(
                access_token_payload, "access_token_payload"
            )
        if session_data is not None:
            request.session_data_json = _dump(session_data, "session_data")
        if device is not None:
            request.device.CopyFrom(
                pb.DeviceInfo(
                    user_agent=device.user_agent or "",
                    ip_address=device.ip_address or "",
                    label=device.label or "",
                )
            )
        return self._session(self._call(self._stub.CreateSession, request), issued=True)

    def get_session(
        self,
        access_token: str,
        anti_csrf_token: str | None = None,
        *,
        check_database: bool = False,
    ) -> Session:
        """Verify an access token.

        Raises:
            TryRefreshTokenError: the token expired or the anti-CSRF check failed.
            UnauthorisedError: the token is invalid or the session is gone.
        """
        request = pb.VerifySessionRequest(
            access_token=access_token, check_database=check_database
        )
        if anti_csrf_token is not None:
            request.anti_csrf_token = anti_csrf_token
        response = self._call(self._stub.VerifySession, request)
        summary = response.session
        return Session(
            self,
            handle=summary.session_handle,
            user_id=summary.user_id,
            access_token_payload=json.loads(summary.access_token_payload_json),
            access_token=_token(
                response.new_access_token, response.HasField("new_access_token")
            ),
        )

    def refresh_session(self, refresh_token: str) -> Session:
        """Rotate the refresh token; the returned session carries all new tokens."""
        request = pb.RefreshSessionRequest(refresh_token=refresh_token)
        return self._session(
            self._call(self._stub.RefreshSession, request), issued=True
        )

    def regenerate_access_token(
        self, access_token: str, payload: dict[str, Any] | None = None
    ) -> Session:
        """Return a new access token for the session of a valid access token.

        The token is checked as ``get_session`` checks it, but without the
        anti-CSRF token. The new token carries ``payload``, which the daemon
        also stores for later refreshes, or the stored payload when payload
        is None. It stays bound to the same refresh and anti-CSRF tokens.
        The returned session has ``access_token`` set.

        Raises:
            TryRefreshTokenError: the token expired.
            UnauthorisedError: the token is invalid or the session is gone.
            InvalidArgumentError: the payload is not a JSON object, or uses a
                claim name that sessiond sets.
        """
        request = pb.RegenerateAccessTokenRequest(access_token=access_token)
        if payload is not None:
            request.access_token_payload_json = _dump(payload, "access_token_payload")
        response = self._call(self._stub.RegenerateAccessToken, request)
        summary = response.session
        return Session(
            self,
            handle=summary.session_handle,
            user_id=summary.user_id,
            access_token_payload=json.loads(summary.access_token_payload_json),
            access_token=_token(response.access_token, True),
        )

    def update_access_token_payload(self, handle: str, payload: dict[str, Any]) -> None:
        """Store a new access token payload for a session.

        Access tokens issued by the next refresh, and by the next verify that
        returns a replacement token, carry it. Tokens issued before keep the
        old payload until they expire; ``regenerate_access_token`` gives a
        new token at once.
        """
        request = pb.UpdateAccessTokenPayloadRequest(
            session_handle=handle,
            access_token_payload_json=_dump(payload, "access_token_payload"),
        )
        self._call(self._stub.UpdateAccessTokenPayload, request)

    def revoke_session(self, handle: str) -> bool:
        request = pb.RevokeSessionRequest(session_handle=handle)
        return bool(self._call(self._stub.RevokeSession, request).revoked)

    def revoke_sessions(self, handles: Sequence[str]) -> list[str]:
        """Revoke several sessions; return the handles that existed."""
        request = pb.RevokeSessionsRequest(session_handles=list(handles))
        return list(
            self._call(self._stub.RevokeSessions, request).revoked_session_handles
        )

    def revoke_all_sessions_for_user(self, user_id: str) -> list[str]:
        request = pb.RevokeAllSessionsForUserRequest(user_id=user_id)
        return list(
            self._call(
                self._stub.RevokeAllSessionsForUser, request
            ).revoked_session_handles
        )

    def get_all_session_handles_for_user(self, user_id: str) -> list[str]:
        request = pb.ListSessionHandlesRequest(user_id=user_id)
        return list(self._call(self._stub.ListSessionHandles, request).session_handles)

    def list_sessions(self, user_id: str) -> list[SessionDetails]:
        """Return the live sessions of a user, oldest first."""
        response = self._call(
            self._stub.ListSessions, pb.ListSessionsRequest(user_id=user_id)
        )
        return [
            SessionDetails(
                handle=details.session_handle,
                user_id=details.user_id,
                created_at_ms=details.created_at_ms,
                last_refreshed_at_ms=details.last_refreshed_at_ms,
                expires_at_ms=details.expires_at_ms,
                access_token_payload=json.loads(details.access_token_payload_json),
                device=_device_info(details),
            )
            for details in response.sessions
        ]

    def get_session_info(self, handle: str) -> SessionInfo:
        response = self._call(
            self._stub.GetSessionInfo, pb.GetSessionInfoRequest(session_handle=handle)
        )
        return SessionInfo(
            handle=response.session_handle,
            user_id=response.user_id,
            created_at_ms=response.created_at_ms,
            expires_at_ms=response.expires_at_ms,
            access_token_payload=json.loads(response.access_token_payload_json),
            data_version=response.data_version,
        )

    # -- session data ---------------------------------------------------------

    def get_session_data(self, handle: str) -> Any:
        return self.get_session_data_versioned(handle).value

    def get_session_data_versioned(self, handle: str) -> SessionData:
        """Return a session's data with the version to pass as ``expected_version``."""
        response = self._call(
            self._stub.GetSessionData, pb.GetSessionDataRequest(session_handle=handle)
        )
        return SessionData(
            json.loads(response.session_data_json), int(response.data_version)
        )

    def update_session_data(
        self, handle: str, data: Any, *, expected_version: int | None = None
    ) -> int:
        """Overwrite a session's data with any JSON value; return its new version.

        Without ``expected_version`` the last writer wins. With it, the write
        happens only if the stored version still equals it.

        Raises:
            ConflictError: the stored version differs from expected_version;
                ``current_version`` has it and the data is unchanged.
        """
        request = pb.UpdateSessionDataRequest(
            session_handle=handle, session_data_json=_dump(data, "session_data")
        )
        if expected_version is not None:
            request.expected_data_version = expected_version
        return int(self._call(self._stub.UpdateSessionData, request).data_version)

    def merge_session_data(
        self, handle: str, patch: Any, *, expected_version: int | None = None
    ) -> SessionData:
        """Apply a JSON merge patch (RFC 7396) to a session's data; return the result.

        A dict patch sets its keys, recursively, and a key whose value is None
        is removed. Any other patch value replaces the data whole. The daemon
        applies the patch under the row lock, so concurrent merges of
        different keys all survive.

        Raises:
            InvalidArgumentError: the result would exceed the daemon's
                max_session_data_bytes (field ``session_data``); the data is
                unchanged.
            ConflictError: as for ``update_session_data``.
        """
        request = pb.MergeSessionDataRequest(
            session_handle=handle, patch_json=_dump(patch, "patch")
        )
        if expected_version is not None:
            request.expected_data_version = expected_version
        response = self._call(self._stub.MergeSessionData, request)
        return SessionData(
            json.loads(response.session_data_json), int(response.data_version)
        )

    def modify_session_data(
        self, handle: str, change: Callable[[Any], Any], *, max_attempts: int = 5
    ) -> SessionData:
        """Replace a session's data with change(data), retrying when another write comes first.

        Each attempt reads the data and its version, calls change on the
        value and writes the result with that version as expected_version.
        change may run several times, so it must compute the new value from
        its argument alone. After a conflict the helper sleeps a random time
        of up to 5 ms, doubling per attempt to at most 100 ms, so that
        colliding writers spread out. Return the written value and version.

        Raises:
            ConflictError: every one of max_attempts writes conflicted; this is
                the last conflict.
            InvalidArgumentError: max_attempts is below 1.
        """
        if max_attempts < 1:
            raise InvalidArgumentError(
                f"invalid max_attempts: {max_attempts}; pass 1 or more",
                field="max_attempts",
            )
        attempt = 1
        while True:
            current = self.get_session_data_versioned(handle)
            value = change(current.value)
            try:
                version = self.update_session_data(
                    handle, value, expected_version=current.version
                )
            except ConflictError:
                if attempt >= max_attempts:
                    raise
                backoff_s = min(
                    RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_FIRST_S * 2 ** (attempt - 1)
                )
                time.sleep(random.uniform(0, backoff_s))
                attempt += 1
                continue
            return SessionData(value, version)

    # -- keys -----------------------------------------------------------------

    def get_jwks(self) -> dict[str, Any]:
        """Return the daemon's public signing keys as a JWK Set."""
        response = self._call(self._stub.GetJwks, pb.GetJwksRequest())
        jwks: dict[str, Any] = json.loads(response.jwks_json)
        return jwks
