"""Domain errors of the daemon and the gRPC status each one maps to.

    SessiondError
    ├── UnauthorisedError        no such session, expired or revoked
    ├── TryRefreshTokenError     access token expired, key unknown, CSRF check failed
    ├── TokenTheftDetectedError  an old refresh token was replayed
    ├── InvalidArgumentError     bad input; names the field
    ├── MalformedRequestError    request bytes that do not parse as the method's message
    ├── ConflictError            session data is not at the expected version
    └── UnavailableError         the database cannot be reached

Messages never contain tokens, keys or session data: they go to callers and
to the log.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "sessiond"


class SessiondError(Exception):
    """Base class of the errors the servicer turns into a gRPC status."""

    reason = "GENERAL_ERROR"
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def metadata(self) -> dict[str, str]:
        """Return the key-value pairs sent in google.rpc.ErrorInfo."""
        return {}


class UnauthorisedError(SessiondError):
    reason = "UNAUTHORISED"
    code = grpc.StatusCode.UNAUTHENTICATED


class TryRefreshTokenError(SessiondError):
    reason = "TRY_REFRESH_TOKEN"
    code = grpc.StatusCode.UNAUTHENTICATED


class TokenTheftDetectedError(SessiondError):
    reason = "TOKEN_THEFT_DETECTED"
    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, session_handle: str, user_id: str) -> None:
        super().__init__(
            "a refresh token was used after it had been rotated out; "
            "the session has been revoked"
        )
        self.session_handle = session_handle
        self.user_id = user_id

    def metadata(self) -> dict[str, str]:
        return {"session_handle": self.session_handle, "user_id": self.user_id}


class InvalidArgumentError(SessiondError):
    reason = "INVALID_ARGUMENT"
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field

    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


class MalformedRequestError(SessiondError):
    """A request that does not parse as the method's request message.

    It has the status and the ErrorInfo metadata of InvalidArgumentError, and
    a reason of its own. The field is empty unless protobuf's parse error
    names one.
    """

    reason = "MALFORMED_REQUEST"
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message_type: str, cause: str, field: str = "") -> None:
        super().__init__(
            f"request is not a valid {message_type} protobuf message ({cause}). "
            "Check that the client's stubs or request serializer are generated "
            "from sessiond/v1/session.proto"
        )
        self.field = field

    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


class ConflictError(SessiondError):
    reason = "CONFLICT"
    code = grpc.StatusCode.ABORTED

    def __init__(self, expected_data_version: int, current_data_version: int) -> None:
        super().__init__(
            f"session data is at version {current_data_version}, not the expected "
            f"version {expected_data_version}; read the data again and retry the change"
        )
        self.expected_data_version = expected_data_version
        self.current_data_version = current_data_version

    def metadata(self) -> dict[str, str]:
        return {"current_data_version": str(self.current_data_version)}


class UnavailableError(SessiondError):
    reason = "UNAVAILABLE"
    code = grpc.StatusCode.UNAVAILABLE


def error_status(error: SessiondError) -> grpc.Status:
    """Build a status carrying google.rpc.ErrorInfo with the error's reason."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata()
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=error.code.value[0], message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)
