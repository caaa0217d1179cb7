"""The pure half of every client call: the request, whether it may be resent, the parsing.

``SessionClient`` and ``AsyncSessionClient`` differ only in how they wait
for the daemon. For each of their methods a function here returns a
``Call``: the name of the ``SessionService`` method, the request message,
whether the call is idempotent (safe to send again after UNAVAILABLE), and
the function that turns the response into what the method returns. The
clients send ``call.request`` on the stub method ``call.rpc`` and give the
response to ``call.parse``. Nothing here does I/O.

Calls that return a session parse to ``SessionFields``; each client wraps
them in its own session class (``Session`` or ``AsyncSession``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

from ._arguments import build_request as _request
from ._arguments import wrong_type_error
from ._session import DeviceInfo, SessionData, SessionDetails, SessionInfo, Token
from .errors import InvalidArgumentError
from .v1 import session_pb2 as pb

T = TypeVar("T")


class _NotGiven:
    """The default of an argument the caller left out, where None is a value."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


# Session data left out at create is stored as {}; None is JSON null.
NOT_GIVEN: Any = _NotGiven()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary call of SessionService, ready to send."""

    rpc: str
    """The method's name in the service, such as ``VerifySession``."""
    request: Any
    parse: Callable[[Any], T]
    """Turns the response message into the client method's result."""
    idempotent: bool
    """True when sending the request twice has the effect of sending it once."""


class SessionFields(TypedDict):
    """The fields of a ``Session`` or ``AsyncSession``, as a response carries them."""

    handle: str
    user_id: str
    access_token_payload: dict[str, Any]
    access_token: Token | None
    refresh_token: Token | None
    anti_csrf_token: Token | None


def dump(value: Any, field: str) -> str:
    """Return value as compact JSON text, or raise InvalidArgumentError naming field."""
    try:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"invalid {field}: cannot be sent as JSON: {exc}", field=field
        ) from None
    except RecursionError:
        # The encoder recurses once per level of lists and dicts, so the
        # interpreter's recursion limit (1000 by default) bounds the depth.
        raise InvalidArgumentError(
            f"invalid {field}: is nested too deeply to send as JSON; flatten the value",
            field=field,
        ) from None


def _token(response: Any, name: str) -> Token | None:
    if not response.HasField(name):
        return None
    message = getattr(response, name)
    return Token(message.token, message.expiry_ms)


def _session_fields(
    response: Any,
    *,
    access_token: str = "access_token",
    refresh_token: str | None = None,
    anti_csrf_token: str | None = None,
) -> SessionFields:
    """Read a response with a ``session`` summary and the token fields named."""
    summary = response.session
    return SessionFields(
        handle=summary.session_handle,
        user_id=summary.user_id,
        access_token_payload=json.loads(summary.access_token_payload_json),
        access_token=_token(response, access_token),
        refresh_token=_token(response, refresh_token) if refresh_token else None,
        anti_csrf_token=_token(response, anti_csrf_token) if anti_csrf_token else None,
    )


def _issued_session(response: Any) -> SessionFields:
    """Read a create or refresh response, which issues all three tokens."""
    return _session_fields(
        response, refresh_token="refresh_token", anti_csrf_token="anti_csrf_token"
    )


def _session_data(response: Any) -> SessionData:
    return SessionData(
        json.loads(response.session_data_json), int(response.data_version)
    )


def _device_info(message: Any) -> DeviceInfo | None:
    if not message.HasField("device"):
        return None
    device = message.device
    return DeviceInfo(
        user_agent=device.user_agent or None,
        ip_address=device.ip_address or None,
        label=device.label or None,
    )


def _session_details(response: Any) -> list[SessionDetails]:
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


def _session_info(response: Any) -> SessionInfo:
    return SessionInfo(
        handle=response.session_handle,
        user_id=response.user_id,
        created_at_ms=response.created_at_ms,
        expires_at_ms=response.expires_at_ms,
        access_token_payload=json.loads(response.access_token_payload_json),
        data_version=response.data_version,
    )


def _jwks(response: Any) -> dict[str, Any]:
    jwks: dict[str, Any] = json.loads(response.jwks_json)
    return jwks


def _nothing(response: Any) -> None:
    return None


def _revoked(response: Any) -> bool:
    return bool(response.revoked)


def _revoked_handles(response: Any) -> list[str]:
    return list(response.revoked_session_handles)


def _handles(response: Any) -> list[str]:
    return list(response.session_handles)


def _data_version(response: Any) -> int:
    return int(response.data_version)


# -- sessions -------------------------------------------------------------------


def create_new_session(
    user_id: str,
    access_token_payload: dict[str, Any] | None,
    session_data: Any,
    device: DeviceInfo | None,
) -> Call[SessionFields]:
    request = _request(
        pb.CreateSessionRequest,
        user_id=user_id,
        access_token_payload_json=(
            None
            if access_token_payload is None
            else dump(access_token_payload, "access_token_payload")
        ),
        session_data_json=(
            None if session_data is NOT_GIVEN else dump(session_data, "session_data")
        ),
    )
    if device is not None:
        request.device.CopyFrom(_device_request(device))
    return Call("CreateSession", request, _issued_session, idempotent=False)


def _device_request(device: DeviceInfo) -> Any:
    if not isinstance(device, DeviceInfo):
        raise wrong_type_error("device", device, "a sessiond.DeviceInfo or None")
    # DeviceInfo leaves an unknown field None, and the request leaves it empty.
    return _request(
        pb.DeviceInfo,
        "device.",
        user_agent="" if device.user_agent is None else device.user_agent,
        ip_address="" if device.ip_address is None else device.ip_address,
        label="" if device.label is None else device.label,
    )


def get_session(
    access_token: str, anti_csrf_token: str | None, check_database: bool
) -> Call[SessionFields]:
    request = _request(
        pb.VerifySessionRequest,
        access_token=access_token,
        anti_csrf_token=anti_csrf_token,  # None leaves it unset
        check_database=check_database,
    )
    return Call("VerifySession", request, _verified_session, idempotent=True)


def _verified_session(response: Any) -> SessionFields:
    # access_token is set only when the daemon sent a replacement.
    return _session_fields(response, access_token="new_access_token")


def refresh_session(refresh_token: str) -> Call[SessionFields]:
    request = _request(pb.RefreshSessionRequest, refresh_token=refresh_token)
    return Call("RefreshSession", request, _issued_session, idempotent=False)


def regenerate_access_token(
    access_token: str, payload: dict[str, Any] | None
) -> Call[SessionFields]:
    request = _request(
        pb.RegenerateAccessTokenRequest,
        access_token=access_token,
        access_token_payload_json=(
            None if payload is None else dump(payload, "access_token_payload")
        ),
    )
    return Call("RegenerateAccessToken", request, _session_fields, idempotent=False)


def update_access_token_payload(handle: str, payload: dict[str, Any]) -> Call[None]:
    request = _request(
        pb.UpdateAccessTokenPayloadRequest,
        session_handle=handle,
        access_token_payload_json=dump(payload, "access_token_payload"),
    )
    return Call("UpdateAccessTokenPayload", request, _nothing, idempotent=False)


def revoke_session(handle: str) -> Call[bool]:
    request = _request(pb.RevokeSessionRequest, session_handle=handle)
    return Call("RevokeSession", request, _revoked, idempotent=True)


def revoke_sessions(handles: Sequence[str]) -> Call[list[str]]:
    request = _request(pb.RevokeSessionsRequest, session_handles=handles)
    return Call("RevokeSessions", request, _revoked_handles, idempotent=True)


def revoke_all_sessions_for_user(user_id: str) -> Call[list[str]]:
    request = _request(pb.RevokeAllSessionsForUserRequest, user_id=user_id)
    return Call("RevokeAllSessionsForUser", request, _revoked_handles, idempotent=True)


def get_all_session_handles_for_user(user_id: str) -> Call[list[str]]:
    request = _request(pb.ListSessionHandlesRequest, user_id=user_id)
    return Call("ListSessionHandles", request, _handles, idempotent=True)


def list_sessions(user_id: str) -> Call[list[SessionDetails]]:
    request = _request(pb.ListSessionsRequest, user_id=user_id)
    return Call("ListSessions", request, _session_details, idempotent=True)


def get_session_info(handle: str) -> Call[SessionInfo]:
    request = _request(pb.GetSessionInfoRequest, session_handle=handle)
    return Call("GetSessionInfo", request, _session_info, idempotent=True)


# -- session data -----------------------------------------------------------------


def get_session_data_versioned(handle: str) -> Call[SessionData]:
    request = _request(pb.GetSessionDataRequest, session_handle=handle)
    return Call("GetSessionData", request, _session_data, idempotent=True)


def update_session_data(
    handle: str, data: Any, expected_version: int | None
) -> Call[int]:
    request = _request(
        pb.UpdateSessionDataRequest,
        session_handle=handle,
        session_data_json=dump(data, "session_data"),
        expected_data_version=expected_version,  # None leaves it unset
    )
    # Only a versioned write is safe to resend: without expected_version a
    # resent write could undo another writer's change made in between.
    versioned = expected_version is not None
    return Call("UpdateSessionData", request, _data_version, idempotent=versioned)


def merge_session_data(
    handle: str, patch: Any, expected_version: int | None
) -> Call[SessionData]:
    # Never resent, as the daemon applies each patch it receives to what is
    # stored at that moment.
    request = _request(
        pb.MergeSessionDataRequest,
        session_handle=handle,
        patch_json=dump(patch, "patch"),
        expected_data_version=expected_version,
    )
    return Call("MergeSessionData", request, _session_data, idempotent=False)


# -- keys -------------------------------------------------------------------------


def get_jwks() -> Call[dict[str, Any]]:
    return Call("GetJwks", _request(pb.GetJwksRequest), _jwks, idempotent=True)
