"""Session, AsyncSession, Token, SessionInfo and the other values the clients return or take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._aio import AsyncSessionClient
    from ._client import SessionClient

ClientT = TypeVar("ClientT")


@dataclass(frozen=True)
class Token:
    """A token and the time it stops being accepted, in ms since the epoch."""

    value: str = field(repr=False)
    expiry_ms: int


@dataclass(frozen=True)
class SessionInfo:
    handle: str
    user_id: str
    created_at_ms: int
    expires_at_ms: int
    access_token_payload: dict[str, Any]
    data_version: int


@dataclass(frozen=True)
class SessionData:
    """Session data with its version, which starts at 1 and grows by one per write."""

    value: Any
    version: int


@dataclass(frozen=True)
class DeviceInfo:
    """The device a session is created from, as the caller reports it.

    Each field is optional: ``user_agent`` (at most 512 UTF-8 bytes),
    ``ip_address`` (IPv4 or IPv6; the daemon stores its canonical form) and
    ``label`` (at most 255 UTF-8 bytes), a name for the user to recognise
    the device by.
    """

    user_agent: str | None = None
    ip_address: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class SessionDetails:
    """A live session as ``list_sessions`` returns it. Times are ms since the epoch.

    ``last_refreshed_at_ms`` equals ``created_at_ms`` until the first
    refresh. ``expires_at_ms`` is when the session ends unless it is
    refreshed before then. ``device`` is None when the session was created
    without one.
    """

    handle: str
    user_id: str
    created_at_ms: int
    last_refreshed_at_ms: int
    expires_at_ms: int
    access_token_payload: dict[str, Any]
    device: DeviceInfo | None


class SessionBase(Generic[ClientT]):
    """The fields of a live session, shared by ``Session`` and ``AsyncSession``.

    ``access_token_payload`` is read from the token, with no call. The token
    attributes hold the tokens this call issued, and are None for tokens it
    did not issue: ``get_session`` sets ``access_token`` only when the daemon
    sent a replacement, which the caller must then store.
    """

    def __init__(
        self,
        client: ClientT,
        *,
        handle: str,
        user_id: str,
        access_token_payload: dict[str, Any],
        access_token: Token | None = None,
        refresh_token: Token | None = None,
        anti_csrf_token: Token | None = None,
    ) -> None:
        self._client = client
        self.handle = handle
        self.user_id = user_id
        self.access_token_payload = access_token_payload
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.anti_csrf_token = anti_csrf_token

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(handle={self.handle!r}, user_id={self.user_id!r})"
        )

    def _stored_payload(self, payload: dict[str, Any]) -> None:
        self.access_token_payload = dict(payload)


class Session(SessionBase["SessionClient"]):
    """A live session, as ``SessionClient``'s create, get and refresh return it.

    Its methods call the client for this session's handle and block.
    """

    _client: SessionClient

    def get_session_data(self) -> Any:
        return self._client.get_session_data(self.handle)

    def get_session_data_versioned(self) -> SessionData:
        return self._client.get_session_data_versioned(self.handle)

    def update_session_data(
        self, data: Any, *, expected_version: int | None = None
    ) -> int:
        """Overwrite the session data; return its new version.

        See ``SessionClient.update_session_data`` for ``expected_version``.
        """
        return self._client.update_session_data(
            self.handle, data, expected_version=expected_version
        )

    def merge_session_data(
        self, patch: Any, *, expected_version: int | None = None
    ) -> SessionData:
        """Apply a JSON merge patch (RFC 7396) to the session data; return the result."""
        return self._client.merge_session_data(
            self.handle, patch, expected_version=expected_version
        )

    def modify_session_data(
        self, change: Callable[[Any], Any], *, max_attempts: int = 5
    ) -> SessionData:
        """Replace the session data with change(data), retrying on conflicts.

        See ``SessionClient.modify_session_data``.
        """
        return self._client.modify_session_data(
            self.handle, change, max_attempts=max_attempts
        )

    def update_access_token_payload(self, payload: dict[str, Any]) -> None:
        """Store a new access token payload and set ``access_token_payload`` to it.

        Access tokens issued from the next refresh on carry it; call
        ``SessionClient.regenerate_access_token`` to get one at once.
        """
        self._client.update_access_token_payload(self.handle, payload)
        self._stored_payload(payload)

    def get_session_info(self) -> SessionInfo:
        return self._client.get_session_info(self.handle)

    def revoke(self) -> bool:
        """Revoke this session; return False when it no longer existed."""
        return self._client.revoke_session(self.handle)


class AsyncSession(SessionBase["AsyncSessionClient"]):
    """A live session, as ``AsyncSessionClient``'s create, get and refresh return it.

    It has the fields of ``Session`` and the same methods, as coroutines:
    ``await session.merge_session_data(patch)``. ``modify_session_data``
    also accepts a coroutine function as ``change``.
    """

    _client: AsyncSessionClient

    async def get_session_data(self) -> Any:
        return await self._client.get_session_data(self.handle)

    async def get_session_data_versioned(self) -> SessionData:
        return await self._client.get_session_data_versioned(self.handle)

    async def update_session_data(
        self, data: Any, *, expected_version: int | None = None
    ) -> int:
        return await self._client.update_session_data(
            self.handle, data, expected_version=expected_version
        )

    async def merge_session_data(
        self, patch: Any, *, expected_version: int | None = None
    ) -> SessionData:
        return await self._client.merge_session_data(
            self.handle, patch, expected_version=expected_version
        )

    async def modify_session_data(
        self, change: Callable[[Any], Any], *, max_attempts: int = 5
    ) -> SessionData:
        return await self._client.modify_session_data(
            self.handle, change, max_attempts=max_attempts
        )

    async def update_access_token_payload(self, payload: dict[str, Any]) -> None:
        await self._client.update_access_token_payload(self.handle, payload)
        self._stored_payload(payload)

    async def get_session_info(self) -> SessionInfo:
        return await self._client.get_session_info(self.handle)

    async def revoke(self) -> bool:
        return await self._client.revoke_session(self.handle)
