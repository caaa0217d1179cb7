"""Session, Token and SessionInfo: what the client returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import SessionClient


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


class Session:
    """A live session, as returned by create, get and refresh.

    ``access_token_payload`` is read from the token, with no call. The token
    attributes hold the tokens this call issued, and are None for tokens it
    did not issue: ``get_session`` sets ``access_token`` only when the daemon
    sent a replacement, which the caller must then store.
    """

    def __init__(
        self,
        client: SessionClient,
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
        return f"Session(handle={self.handle!r}, user_id={self.user_id!r})"

    def get_session_data(self) -> Any:
        return self._client.get_session_data(self.handle)

    def update_session_data(self, data: Any) -> int:
        """Overwrite the session data; return its new version."""
        return self._client.update_session_data(self.handle, data)

    def get_session_info(self) -> SessionInfo:
        return self._client.get_session_info(self.handle)

    def revoke(self) -> bool:
        """Revoke this session; return False when it no longer existed."""
        return self._client.revoke_session(self.handle)
