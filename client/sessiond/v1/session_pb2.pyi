from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Token(_message.Message):
    __slots__ = ("token", "expiry_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_MS_FIELD_NUMBER: _ClassVar[int]
    token: str
    expiry_ms: int
    def __init__(self, token: _Optional[str] = ..., expiry_ms: _Optional[int] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_handle", "user_id", "access_token_payload_json")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    user_id: str
    access_token_payload_json: str
    def __init__(self, session_handle: _Optional[str] = ..., user_id: _Optional[str] = ..., access_token_payload_json: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("user_agent", "ip_address", "label")
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    user_agent: str
    ip_address: str
    label: str
    def __init__(self, user_agent: _Optional[str] = ..., ip_address: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("user_id", "access_token_payload_json", "session_data_json", "device")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSION_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    access_token_payload_json: str
    session_data_json: str
    device: DeviceInfo
    def __init__(self, user_id: _Optional[str] = ..., access_token_payload_json: _Optional[str] = ..., session_data_json: _Optional[str] = ..., device: _Optional[_Union[DeviceInfo, _Mapping]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session", "access_token", "refresh_token", "anti_csrf_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ANTI_CSRF_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: SessionSummary
    access_token: Token
    refresh_token: Token
    anti_csrf_token: Token
    def __init__(self, session: _Optional[_Union[SessionSummary, _Mapping]] = ..., access_token: _Optional[_Union[Token, _Mapping]] = ..., refresh_token: _Optional[_Union[Token, _Mapping]] = ..., anti_csrf_token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class VerifySessionRequest(_message.Message):
    __slots__ = ("access_token", "anti_csrf_token", "check_database")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ANTI_CSRF_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECK_DATABASE_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    anti_csrf_token: str
    check_database: bool
    def __init__(self, access_token: _Optional[str] = ..., anti_csrf_token: _Optional[str] = ..., check_database: _Optional[bool] = ...) -> None: ...

class VerifySessionResponse(_message.Message):
    __slots__ = ("session", "new_access_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NEW_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: SessionSummary
    new_access_token: Token
    def __init__(self, session: _Optional[_Union[SessionSummary, _Mapping]] = ..., new_access_token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class RefreshSessionRequest(_message.Message):
    __slots__ = ("refresh_token",)
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    refresh_token: str
    def __init__(self, refresh_token: _Optional[str] = ...) -> None: ...

class RefreshSessionResponse(_message.Message):
    __slots__ = ("session", "access_token", "refresh_token", "anti_csrf_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ANTI_CSRF_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: SessionSummary
    access_token: Token
    refresh_token: Token
    anti_csrf_token: Token
    def __init__(self, session: _Optional[_Union[SessionSummary, _Mapping]] = ..., access_token: _Optional[_Union[Token, _Mapping]] = ..., refresh_token: _Optional[_Union[Token, _Mapping]] = ..., anti_csrf_token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class RevokeSessionRequest(_message.Message):
    __slots__ = ("session_handle",)
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    def __init__(self, session_handle: _Optional[str] = ...) -> None: ...

class RevokeSessionResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class RevokeSessionsRequest(_message.Message):
    __slots__ = ("session_handles",)
    SESSION_HANDLES_FIELD_NUMBER: _ClassVar[int]
    session_handles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_handles: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeSessionsResponse(_message.Message):
    __slots__ = ("revoked_session_handles",)
    REVOKED_SESSION_HANDLES_FIELD_NUMBER: _ClassVar[int]
    revoked_session_handles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revoked_session_handles: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeAllSessionsForUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class RevokeAllSessionsForUserResponse(_message.Message):
    __slots__ = ("revoked_session_handles",)
    REVOKED_SESSION_HANDLES_FIELD_NUMBER: _ClassVar[int]
    revoked_session_handles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revoked_session_handles: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSessionHandlesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListSessionHandlesResponse(_message.Message):
    __slots__ = ("session_handles",)
    SESSION_HANDLES_FIELD_NUMBER: _ClassVar[int]
    session_handles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_handles: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSessionInfoRequest(_message.Message):
    __slots__ = ("session_handle",)
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    def __init__(self, session_handle: _Optional[str] = ...) -> None: ...

class GetSessionInfoResponse(_message.Message):
    __slots__ = ("session_handle", "user_id", "created_at_ms", "expires_at_ms", "access_token_payload_json", "data_version")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    user_id: str
    created_at_ms: int
    expires_at_ms: int
    access_token_payload_json: str
    data_version: int
    def __init__(self, session_handle: _Optional[str] = ..., user_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., access_token_payload_json: _Optional[str] = ..., data_version: _Optional[int] = ...) -> None: ...

class GetSessionDataRequest(_message.Message):
    __slots__ = ("session_handle",)
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    def __init__(self, session_handle: _Optional[str] = ...) -> None: ...

class GetSessionDataResponse(_message.Message):
    __slots__ = ("session_data_json", "data_version")
    SESSION_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_data_json: str
    data_version: int
    def __init__(self, session_data_json: _Optional[str] = ..., data_version: _Optional[int] = ...) -> None: ...

class UpdateSessionDataRequest(_message.Message):
    __slots__ = ("session_handle", "session_data_json", "expected_data_version")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    SESSION_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    session_data_json: str
    expected_data_version: int
    def __init__(self, session_handle: _Optional[str] = ..., session_data_json: _Optional[str] = ..., expected_data_version: _Optional[int] = ...) -> None: ...

class UpdateSessionDataResponse(_message.Message):
    __slots__ = ("data_version",)
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    data_version: int
    def __init__(self, data_version: _Optional[int] = ...) -> None: ...

class MergeSessionDataRequest(_message.Message):
    __slots__ = ("session_handle", "patch_json", "expected_data_version")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    patch_json: str
    expected_data_version: int
    def __init__(self, session_handle: _Optional[str] = ..., patch_json: _Optional[str] = ..., expected_data_version: _Optional[int] = ...) -> None: ...

class MergeSessionDataResponse(_message.Message):
    __slots__ = ("session_data_json", "data_version")
    SESSION_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_data_json: str
    data_version: int
    def __init__(self, session_data_json: _Optional[str] = ..., data_version: _Optional[int] = ...) -> None: ...

class UpdateAccessTokenPayloadRequest(_message.Message):
    __slots__ = ("session_handle", "access_token_payload_json")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    access_token_payload_json: str
    def __init__(self, session_handle: _Optional[str] = ..., access_token_payload_json: _Optional[str] = ...) -> None: ...

class UpdateAccessTokenPayloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegenerateAccessTokenRequest(_message.Message):
    __slots__ = ("access_token", "access_token_payload_json")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    access_token_payload_json: str
    def __init__(self, access_token: _Optional[str] = ..., access_token_payload_json: _Optional[str] = ...) -> None: ...

class RegenerateAccessTokenResponse(_message.Message):
    __slots__ = ("session", "access_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: SessionSummary
    access_token: Token
    def __init__(self, session: _Optional[_Union[SessionSummary, _Mapping]] = ..., access_token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class SessionDetails(_message.Message):
    __slots__ = ("session_handle", "user_id", "created_at_ms", "last_refreshed_at_ms", "expires_at_ms", "access_token_payload_json", "device")
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_REFRESHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    session_handle: str
    user_id: str
    created_at_ms: int
    last_refreshed_at_ms: int
    expires_at_ms: int
    access_token_payload_json: str
    device: DeviceInfo
    def __init__(self, session_handle: _Optional[str] = ..., user_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., last_refreshed_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., access_token_payload_json: _Optional[str] = ..., device: _Optional[_Union[DeviceInfo, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionDetails]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionDetails, _Mapping]]] = ...) -> None: ...

class GetJwksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetJwksResponse(_message.Message):
    __slots__ = ("jwks_json", "issuer", "clock_skew_leeway_s", "anti_csrf", "blacklisting", "access_token_validity_s")
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_LEEWAY_S_FIELD_NUMBER: _ClassVar[int]
    ANTI_CSRF_FIELD_NUMBER: _ClassVar[int]
    BLACKLISTING_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_VALIDITY_S_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    issuer: str
    clock_skew_leeway_s: int
    anti_csrf: bool
    blacklisting: bool
    access_token_validity_s: int
    def __init__(self, jwks_json: _Optional[str] = ..., issuer: _Optional[str] = ..., clock_skew_leeway_s: _Optional[int] = ..., anti_csrf: _Optional[bool] = ..., blacklisting: _Optional[bool] = ..., access_token_validity_s: _Optional[int] = ...) -> None: ...

class WatchRevocationsRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("seq", "session_handle", "user_id", "reason", "revoked_at_ms")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Revocation.Reason]
        REVOKED: _ClassVar[Revocation.Reason]
        TOKEN_THEFT_DETECTED: _ClassVar[Revocation.Reason]
        EVICTED: _ClassVar[Revocation.Reason]
    REASON_UNSPECIFIED: Revocation.Reason
    REVOKED: Revocation.Reason
    TOKEN_THEFT_DETECTED: Revocation.Reason
    EVICTED: Revocation.Reason
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SESSION_HANDLE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    session_handle: str
    user_id: str
    reason: Revocation.Reason
    revoked_at_ms: int
    def __init__(self, seq: _Optional[int] = ..., session_handle: _Optional[str] = ..., user_id: _Optional[str] = ..., reason: _Optional[_Union[Revocation.Reason, str]] = ..., revoked_at_ms: _Optional[int] = ...) -> None: ...

class WatchRevocationsResponse(_message.Message):
    __slots__ = ("revocations", "resume_after_seq", "heartbeat_ms")
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    resume_after_seq: int
    heartbeat_ms: int
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ..., resume_after_seq: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ...) -> None: ...
