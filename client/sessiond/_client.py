"""The synchronous client: one gRPC channel to a sessiond daemon."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from ._session import Session, SessionInfo, Token
from .errors import GeneralError, InvalidArgumentError, from_rpc_error
from .v1 import session_pb2 as pb
from .v1 import session_pb2_grpc

__all__ = ["DEFAULT_TIMEOUT_S", "SessionClient"]

DEFAULT_TIMEOUT_S = 10.0
API_KEY_METADATA = "x-api-key"
T = TypeVar("T")


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
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(
                target, credentials, options=list(options)
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
    ) -> Session:
        """Log a user in. A None payload or session data is stored as ``{}``."""
        request = pb.CreateSessionRequest(user_id=user_id)
        if access_token_payload is not None:
            request.access_token_payload_json = _dump(
                access_token_payload, "access_token_payload"
            )
        if session_data is not None:
            request.session_data_json = _dump(session_data, "session_data")
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
        response = self._call(
            self._stub.GetSessionData, pb.GetSessionDataRequest(session_handle=handle)
        )
        return json.loads(response.session_data_json)

    def update_session_data(self, handle: str, data: Any) -> int:
        """Overwrite a session's data with any JSON value; return its new version."""
        request = pb.UpdateSessionDataRequest(
            session_handle=handle, session_data_json=_dump(data, "session_data")
        )
        return int(self._call(self._stub.UpdateSessionData, request).data_version)

    # -- keys -----------------------------------------------------------------

    def get_jwks(self) -> dict[str, Any]:
        """Return the daemon's public signing keys as a JWK Set."""
        response = self._call(self._stub.GetJwks, pb.GetJwksRequest())
        jwks: dict[str, Any] = json.loads(response.jwks_json)
        return jwks
