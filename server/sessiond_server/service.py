"""The gRPC servicer: proto messages to session calls, errors to status codes."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from sessiond.v1 import session_pb2 as pb
from sessiond.v1 import session_pb2_grpc

from . import revocations
from .config import Config
from .errors import (
    InvalidArgumentError,
    MalformedRequestError,
    SessiondError,
    UnavailableError,
    error_status,
)
from .keys import KeyManager
from .revocations import RevocationFeed
from .sessions import IssuedSession, IssuedToken, SessionManager, SessionView
from .storage import Revocation, RevocationReason, SessionListing
from .validation import Device

logger = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., Any])


_INTERNAL = SessiondError("internal error; the daemon's log has the details")


class _RateLimitedLog:
    """Log a failure at most once per interval, with how many happened since.

    The log line starts with event, such as "database unavailable", and
    names the peer of the logged call when record gets one.
    """

    def __init__(self, event: str, interval_s: float) -> None:
        self._event = event
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last_s = -interval_s
        self._suppressed = 0

    def record(self, method: str, error: Exception, peer: str = "") -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_s < self._interval_s:
                self._suppressed += 1
                return
            count, self._suppressed, self._last_s = self._suppressed + 1, 0, now
        peer_field = f" peer={peer}" if peer else ""
        logger.warning(
            "%s method=%s%s failures=%d error=%s",
            self._event,
            method,
            peer_field,
            count,
            error,
        )


_unavailable_log = _RateLimitedLog("database unavailable", interval_s=10.0)
# A client can send malformed requests in a loop, so they are logged at the
# same bounded rate.
_malformed_log = _RateLimitedLog("malformed request rejected", interval_s=10.0)


def translate_errors(handler: Handler) -> Handler:
    """Turn domain errors into a status, and anything else into INTERNAL with a fixed message."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except UnavailableError as error:
            _unavailable_log.record(handler.__name__, error)
            context.abort_with_status(error_status(error))
        except SessiondError as error:
            context.abort_with_status(error_status(error))
        except Exception:
            logger.exception("call failed method=%s", handler.__name__)
            context.abort_with_status(error_status(_INTERNAL))

    return wrapper  # type: ignore[return-value]


def _token(token: IssuedToken | None) -> pb.Token | None:
    return (
        None
        if token is None
        else pb.Token(token=token.token, expiry_ms=token.expiry_ms)
    )


def _summary(view: SessionView) -> pb.SessionSummary:
    return pb.SessionSummary(
        session_handle=view.session_handle,
        user_id=view.user_id,
        access_token_payload_json=view.access_token_payload_json,
    )


def _issued_fields(issued: IssuedSession) -> dict[str, Any]:
    return {
        "session": _summary(issued.session),
        "access_token": _token(issued.access_token),
        "refresh_token": _token(issued.refresh_token),
        "anti_csrf_token": _token(issued.anti_csrf_token),
    }


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _device(message: pb.CreateSessionRequest) -> Device | None:
    if not message.HasField("device"):
        return None
    return Device(
        user_agent=message.device.user_agent,
        ip_address=message.device.ip_address,
        label=message.device.label,
    )


_REASONS = {
    RevocationReason.REVOKED: pb.Revocation.REVOKED,
    RevocationReason.THEFT: pb.Revocation.TOKEN_THEFT_DETECTED,
    RevocationReason.EVICTED: pb.Revocation.EVICTED,
}


def _revocation(row: Revocation) -> pb.Revocation:
    return pb.Revocation(
        seq=row.seq,
        session_handle=row.session_handle,
        user_id=row.user_id,
        reason=_REASONS[row.reason],
        revoked_at_ms=row.revoked_at_ms,
    )


def _session_details(listing: SessionListing) -> pb.SessionDetails:
    details = pb.SessionDetails(
        session_handle=listing.session_handle,
        user_id=listing.user_id,
        created_at_ms=listing.created_at_ms,
        last_refreshed_at_ms=listing.last_refreshed_at_ms,
        expires_at_ms=listing.ends_at_ms,
        access_token_payload_json=listing.access_token_payload,
    )
    # A session created without device details has only empty fields, and
    # gets no device message.
    if listing.device_user_agent or listing.device_ip_address or listing.device_label:
        details.device.CopyFrom(
            pb.DeviceInfo(
                user_agent=listing.device_user_agent,
                ip_address=listing.device_ip_address,
                label=listing.device_label,
            )
        )
    return details


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(
        self,
        sessions: SessionManager,
        keys: KeyManager,
        config: Config,
        feed: RevocationFeed | None = None,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._config = config
        self._feed = feed
        self._watchers = threading.BoundedSemaphore(
            max(1, config.max_revocation_watchers)
        )

    @translate_errors
    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        issued = self._sessions.create_session(
            request.user_id,
            _optional(request, "access_token_payload_json"),
            _optional(request, "session_data_json"),
            _device(request),
        )
        return pb.CreateSessionResponse(**_issued_fields(issued))

    @translate_errors
    def VerifySession(
        self, request: pb.VerifySessionRequest, context: grpc.ServicerContext
    ) -> pb.VerifySessionResponse:
        verified = self._sessions.verify_session(
            request.access_token,
            _optional(request, "anti_csrf_token"),
            check_database=request.check_database,
        )
        return pb.VerifySessionResponse(
            session=_summary(verified.session),
            new_access_token=_token(verified.new_access_token),
        )

    @translate_errors
    def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: grpc.ServicerContext
    ) -> pb.RefreshSessionResponse:
        issued = self._sessions.refresh_session(request.refresh_token)
        return pb.RefreshSessionResponse(**_issued_fields(issued))

    @translate_errors
    def RevokeSession(
        self, request: pb.RevokeSessionRequest, context: grpc.ServicerContext
    ) -> pb.RevokeSessionResponse:
        return pb.RevokeSessionResponse(
            revoked=self._sessions.revoke_session(request.session_handle)
        )

    @translate_errors
    def RevokeSessions(
        self, request: pb.RevokeSessionsRequest, context: grpc.ServicerContext
    ) -> pb.RevokeSessionsResponse:
        revoked = self._sessions.revoke_sessions(list(request.session_handles))
        return pb.RevokeSessionsResponse(revoked_session_handles=revoked)

    @translate_errors
    def RevokeAllSessionsForUser(
        self, request: pb.RevokeAllSessionsForUserRequest, context: grpc.ServicerContext
    ) -> pb.RevokeAllSessionsForUserResponse:
        revoked = self._sessions.revoke_all_sessions_for_user(request.user_id)
        return pb.RevokeAllSessionsForUserResponse(revoked_session_handles=revoked)

    @translate_errors
    def ListSessionHandles(
        self, request: pb.ListSessionHandlesRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionHandlesResponse:
        handles = self._sessions.list_session_handles(request.user_id)
        return pb.ListSessionHandlesResponse(session_handles=handles)

    @translate_errors
    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsResponse:
        listings = self._sessions.list_sessions(request.user_id)
        return pb.ListSessionsResponse(
            sessions=[_session_details(listing) for listing in listings]
        )

    @translate_errors
    def GetSessionInfo(
        self, request: pb.GetSessionInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionInfoResponse:
        record = self._sessions.get_session_info(request.session_handle)
        return pb.GetSessionInfoResponse(
            session_handle=record.session_handle,
            user_id=record.user_id,
            created_at_ms=record.created_at_ms,
            expires_at_ms=record.ends_at_ms,
            access_token_payload_json=record.access_token_payload,
            data_version=record.data_version,
        )

    @translate_errors
    def GetSessionData(
        self, request: pb.GetSessionDataRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionDataResponse:
        data, version = self._sessions.get_session_data(request.session_handle)
        return pb.GetSessionDataResponse(session_data_json=data, data_version=version)

    @translate_errors
    def UpdateSessionData(
        self, request: pb.UpdateSessionDataRequest, context: grpc.ServicerContext
    ) -> pb.UpdateSessionDataResponse:
        version = self._sessions.update_session_data(
            request.session_handle,
            request.session_data_json,
            _optional(request, "expected_data_version"),
        )
        return pb.UpdateSessionDataResponse(data_version=version)

    @translate_errors
    def MergeSessionData(
        self, request: pb.MergeSessionDataRequest, context: grpc.ServicerContext
    ) -> pb.MergeSessionDataResponse:
        data, version = self._sessions.merge_session_data(
            request.session_handle,
            request.patch_json,
            _optional(request, "expected_data_version"),
        )
        return pb.MergeSessionDataResponse(session_data_json=data, data_version=version)

    @translate_errors
    def UpdateAccessTokenPayload(
        self, request: pb.UpdateAccessTokenPayloadRequest, context: grpc.ServicerContext
    ) -> pb.UpdateAccessTokenPayloadResponse:
        self._sessions.update_access_token_payload(
            request.session_handle, request.access_token_payload_json
        )
        return pb.UpdateAccessTokenPayloadResponse()

    @translate_errors
    def RegenerateAccessToken(
        self, request: pb.RegenerateAccessTokenRequest, context: grpc.ServicerContext
    ) -> pb.RegenerateAccessTokenResponse:
        regenerated = self._sessions.regenerate_access_token(
            request.access_token, _optional(request, "access_token_payload_json")
        )
        return pb.RegenerateAccessTokenResponse(
            session=_summary(regenerated.session),
            access_token=_token(regenerated.access_token),
        )

    @translate_errors
    def GetJwks(
        self, request: pb.GetJwksRequest, context: grpc.ServicerContext
    ) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(
            jwks_json=json.dumps(self._keys.jwks(), separators=(",", ":")),
            issuer=self._config.issuer,
            clock_skew_leeway_s=self._config.clock_skew_leeway_s,
            anti_csrf=self._config.anti_csrf,
            blacklisting=self._config.blacklisting,
            access_token_validity_s=self._config.access_token_validity_s,
        )

    def WatchRevocations(
        self, request: pb.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchRevocationsResponse]:
        if request.after_seq < 0:
            context.abort_with_status(
                error_status(
                    InvalidArgumentError(
                        "after_seq",
                        f"{request.after_seq} is negative; send 0 or the "
                        "resume_after_seq of the last message",
                    )
                )
            )
        if self._feed is None or self._config.max_revocation_watchers == 0:
            context.abort_with_status(
                error_status(
                    UnavailableError(
                        "revocation stream is off (max_revocation_watchers = 0); "
                        "verify tokens through VerifySession"
                    )
                )
            )
        if not self._watchers.acquire(blocking=False):
            logger.warning(
                "revocation watcher rejected, limit reached max_revocation_watchers=%d",
                self._config.max_revocation_watchers,
            )
            context.abort_with_status(
                error_status(
                    UnavailableError(
                        "too many revocation watchers on this daemon; retry later, "
                        "or raise max_revocation_watchers"
                    )
                )
            )
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._watchers.release()

        # Runs when the stream ends for any reason, including a client that
        # goes away while the generator waits.
        context.add_callback(release)
        heartbeat_ms = int(revocations.HEARTBEAT_S * 1000)
        try:
            for batch in self._feed.watch(request.after_seq):
                if not context.is_active():
                    return
                yield pb.WatchRevocationsResponse(
                    revocations=[_revocation(row) for row in batch.revocations],
                    resume_after_seq=batch.resume_after_seq,
                    heartbeat_ms=heartbeat_ms,
                )
        finally:
            release()


class _MalformedRequest:
    """A request that did not parse, passed from the deserializer to the handler."""

    def __init__(self, error: MalformedRequestError) -> None:
        self.error = error


# Requests in session.proto nest one level (CreateSessionRequest.device).
# The limit stops the search on a message type that contains itself.
_MAX_FIELD_DEPTH = 8


def _field_path(message: Descriptor, full_name: str, depth: int = 0) -> str:
    """Return the path of the field named full_name within message, such as
    "device.user_agent", or "" when message has no such field."""
    for field in message.fields:
        if field.full_name == full_name:
            return str(field.name)
        if field.message_type is not None and depth < _MAX_FIELD_DEPTH:
            inner = _field_path(field.message_type, full_name, depth + 1)
            if inner:
                return f"{field.name}.{inner}"
    return ""


def malformed_request_error(
    message: Descriptor, error: DecodeError | UnicodeDecodeError
) -> MalformedRequestError:
    """Build the error for bytes that do not parse as message, without quoting the bytes."""
    if isinstance(error, UnicodeDecodeError):
        # The pure-Python runtime of protobuf 7.36 raises this for a string
        # field and appends " in field: <full field name>" to the reason. The
        # upb runtime raises DecodeError instead and names no field.
        _, marker, full_name = error.reason.rpartition(" in field: ")
        field = _field_path(message, full_name) if marker else ""
        if field:
            return MalformedRequestError(
                message.full_name, f"field {field} is not valid UTF-8", field
            )
        return MalformedRequestError(
            message.full_name, "a string field is not valid UTF-8"
        )
    # upb reports "Error parsing message with type '<type>': <cause>", and
    # the pure-Python runtime reports the cause alone, such as "Truncated
    # message.". In protobuf 7.36 neither quotes the request bytes.
    cause = str(error).rpartition("': ")[2].rstrip(".") or "parse failed"
    return MalformedRequestError(message.full_name, cause)


def _lenient_deserializer(request_class: Any) -> Callable[[bytes], Any]:
    """Return a deserializer that returns a _MalformedRequest in place of raising.

    When a deserializer raises, grpc (grpcio 1.85) ends the call with
    INTERNAL and logs a traceback, and no handler or interceptor behaviour
    runs.
    """

    def deserialize(data: bytes) -> Any:
        try:
            return request_class.FromString(data)
        except (DecodeError, UnicodeDecodeError) as error:
            return _MalformedRequest(
                malformed_request_error(request_class.DESCRIPTOR, error)
            )

    return deserialize


def _rejecting_malformed(
    method: str, behaviour: Callable[[Any, grpc.ServicerContext], Any]
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _MalformedRequest):
            _malformed_log.record(method, request.error, peer=context.peer())
            context.abort_with_status(error_status(request.error))
        return behaviour(request, context)

    return handle


def add_session_service(servicer: SessionServicer, server: grpc.Server) -> None:
    """Register the SessionService methods of servicer on server.

    It replaces the generated add_SessionServiceServicer_to_server, so a
    request that does not parse fails with INVALID_ARGUMENT and reason
    MALFORMED_REQUEST, in place of grpc's INTERNAL.
    """
    service = pb.DESCRIPTOR.services_by_name["SessionService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            # The handler receives an iterator of requests, which
            # _rejecting_malformed does not check.
            raise NotImplementedError(
                f"{method.full_name} is client-streaming, which "
                "add_session_service does not support"
            )
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make_handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make_handler(
            _rejecting_malformed(method.name, getattr(servicer, method.name)),
            request_deserializer=_lenient_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Registered handlers take precedence over generic ones and skip a
    # lookup per call, as the generated code does. grpc-stubs 1.53 does not
    # declare the method.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
