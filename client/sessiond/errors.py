"""Exceptions raised by the sessiond client.

    SessionError
    ├── UnauthorisedError        no such session, expired or revoked: log in again
    ├── TryRefreshTokenError     access token expired or unknown key: call refresh_session
    ├── TokenTheftDetectedError  an old refresh token was replayed; the session is revoked
    ├── InvalidArgumentError     bad input; ``field`` names it
    ├── ConflictError            session data is not at the expected version;
    │                            ``current_version`` is the stored one
    ├── UnavailableError         the daemon or its database cannot be reached
    └── GeneralError             anything else, such as an internal error

The daemon sends the reason in google.rpc.ErrorInfo; this module maps it back
in one place, ``from_rpc_error``.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ConflictError",
    "GeneralError",
    "InvalidArgumentError",
    "SessionError",
    "TokenTheftDetectedError",
    "TryRefreshTokenError",
    "UnauthorisedError",
    "UnavailableError",
    "from_rpc_error",
]


class SessionError(Exception):
    """Base class of every error the client raises."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling passes only the positional arguments, so the
        # keyword-only attributes travel as state, for process pools and
        # task queues.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(
    cls: type[SessionError], message: str, state: dict[str, Any]
) -> SessionError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UnauthorisedError(SessionError):
    pass


class TryRefreshTokenError(SessionError):
    pass


class TokenTheftDetectedError(SessionError):
    def __init__(
        self,
        message: str,
        *,
        session_handle: str,
        user_id: str,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.session_handle = session_handle
        self.user_id = user_id


class InvalidArgumentError(SessionError):
    def __init__(
        self, message: str, *, field: str, code: grpc.StatusCode | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.field = field


class ConflictError(SessionError):
    """A versioned write found the session data at another version; nothing was written.

    Read the data again (``get_session_data_versioned``), redo the change
    and write with the new version, or use ``modify_session_data``, which
    does that in a loop.
    """

    def __init__(
        self, message: str, *, current_version: int, code: grpc.StatusCode | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.current_version = current_version


class UnavailableError(SessionError):
    pass


class GeneralError(SessionError):
    pass


_BY_REASON: dict[str, type[SessionError]] = {
    "UNAUTHORISED": UnauthorisedError,
    "TRY_REFRESH_TOKEN": TryRefreshTokenError,
    "UNAVAILABLE": UnavailableError,
}
# Codes that mean the daemon could not respond. CANCELLED is among them
# because the SDK never cancels a call it waits for: a daemon that is
# shutting down cancels the calls still queued.
_TRANSPORT_UNAVAILABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


def _error_info(error: grpc.Call) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _int_metadata(info: error_details_pb2.ErrorInfo, key: str) -> int:
    """Return an integer from ErrorInfo metadata, or 0 when it is missing or not a number."""
    try:
        return int(info.metadata.get(key, "0"))
    except ValueError:
        return 0


def from_rpc_error(error: grpc.RpcError) -> SessionError:
    """Translate a failed gRPC call into the matching SessionError."""
    call = error if isinstance(error, grpc.Call) else None
    code = call.code() if call is not None else None
    message = (call.details() if call is not None else None) or str(error)
    info = _error_info(call) if call is not None else None
    if info is None:
        if code in _TRANSPORT_UNAVAILABLE:
            return UnavailableError(message, code=code)
        return GeneralError(message, code=code)
    if info.reason == "TOKEN_THEFT_DETECTED":
        return TokenTheftDetectedError(
            message,
            session_handle=info.metadata.get("session_handle", ""),
            user_id=info.metadata.get("user_id", ""),
            code=code,
        )
    if info.reason == "CONFLICT":
        return ConflictError(
            message,
            current_version=_int_metadata(info, "current_data_version"),
            code=code,
        )
    # The daemon sends MALFORMED_REQUEST when the request bytes do not parse
    # as the method's message. Then field is empty unless protobuf named one.
    if info.reason in ("INVALID_ARGUMENT", "MALFORMED_REQUEST"):
        return InvalidArgumentError(
            message, field=info.metadata.get("field", ""), code=code
        )
    return _BY_REASON.get(info.reason, GeneralError)(message, code=code)
