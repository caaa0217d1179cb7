"""Module-level calls backed by one shared client, for code that holds only a handle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._calls import NOT_GIVEN
from ._client import SessionClient
from ._session import DeviceInfo, Session, SessionData, SessionDetails, SessionInfo
from .errors import GeneralError

_lock = threading.Lock()
_client: SessionClient | None = None


def init(target: str, **options: Any) -> SessionClient:
    """Create the shared client; options are those of SessionClient. A second call replaces it."""
    global _client
    with _lock:
        previous, _client = _client, SessionClient(target, **options)
    if previous is not None:
        previous.close()
    return _client


def close() -> None:
    """Close the shared client."""
    global _client
    with _lock:
        previous, _client = _client, None
    if previous is not None:
        previous.close()


def _shared() -> SessionClient:
    client = _client
    if client is None:
        raise GeneralError(
            "sessiond is not initialised; call sessiond.init(target) first"
        )
    return client


def create_new_session(
    user_id: str,
    access_token_payload: dict[str, Any] | None = None,
    session_data: Any = NOT_GIVEN,
    *,
    device: DeviceInfo | None = None,
) -> Session:
    return _shared().create_new_session(
        user_id, access_token_payload, session_data, device=device
    )


def get_session(
    access_token: str,
    anti_csrf_token: str | None = None,
    *,
    check_database: bool = False,
) -> Session:
    return _shared().get_session(
        access_token, anti_csrf_token, check_database=check_database
    )


def refresh_session(refresh_token: str) -> Session:
    return _shared().refresh_session(refresh_token)


def regenerate_access_token(
    access_token: str, payload: dict[str, Any] | None = None
) -> Session:
    return _shared().regenerate_access_token(access_token, payload)


def update_access_token_payload(handle: str, payload: dict[str, Any]) -> None:
    _shared().update_access_token_payload(handle, payload)


def revoke_session(handle: str) -> bool:
    return _shared().revoke_session(handle)


def revoke_sessions(handles: Sequence[str]) -> list[str]:
    return _shared().revoke_sessions(handles)


def revoke_all_sessions_for_user(user_id: str) -> list[str]:
    return _shared().revoke_all_sessions_for_user(user_id)


def get_all_session_handles_for_user(user_id: str) -> list[str]:
    return _shared().get_all_session_handles_for_user(user_id)


def list_sessions(user_id: str) -> list[SessionDetails]:
    return _shared().list_sessions(user_id)


def get_session_info(handle: str) -> SessionInfo:
    return _shared().get_session_info(handle)


def get_session_data(handle: str) -> Any:
    return _shared().get_session_data(handle)


def get_session_data_versioned(handle: str) -> SessionData:
    return _shared().get_session_data_versioned(handle)


def update_session_data(
    handle: str, data: Any, *, expected_version: int | None = None
) -> int:
    return _shared().update_session_data(
        handle, data, expected_version=expected_version
    )


def merge_session_data(
    handle: str, patch: Any, *, expected_version: int | None = None
) -> SessionData:
    return _shared().merge_session_data(
        handle, patch, expected_version=expected_version
    )


def modify_session_data(
    handle: str, change: Callable[[Any], Any], *, max_attempts: int = 5
) -> SessionData:
    return _shared().modify_session_data(handle, change, max_attempts=max_attempts)


def get_jwks() -> dict[str, Any]:
    return _shared().get_jwks()
