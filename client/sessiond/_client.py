"""The synchronous client: one gRPC channel to a sessiond daemon."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from . import _calls as calls
from ._base import ClientBase, channel_options_with_defaults, open_blocking_channel
from ._retry import DEFAULT_TIMEOUT_S, ConflictRetries
from ._session import (
    DeviceInfo,
    Session,
    SessionData,
    SessionDetails,
    SessionInfo,
)
from .errors import ConflictError

__all__ = ["DEFAULT_TIMEOUT_S", "SessionClient", "channel_options_with_defaults"]

T = TypeVar("T")


class SessionClient(ClientBase):
    """A client of one sessiond daemon, whose calls block; safe to share between threads.

    Args:
        target: the daemon's address, such as ``127.0.0.1:50051`` or
            ``unix:/run/sessiond/sessiond.sock``.
        api_key: sent with every call when the daemon requires API keys;
            printable ASCII without leading or trailing whitespace.
        timeout: the deadline of each call in seconds, above 0 and at most
            86400, which its retries and the waits between them share.
        credentials: TLS channel credentials; None for a plaintext channel.
        options: gRPC channel options; each replaces the default of the
            same name (see ``channel_options_with_defaults``).
        retries: how many times an idempotent call is sent again after
            UNAVAILABLE from the transport (the daemon could not be reached
            or went away); 0 turns retries off. Calls that are not
            idempotent (create, refresh, regenerate, merge, updates of the
            payload or of the data without ``expected_version``) are sent
            once.
        retry_backoff_s: the longest wait before the first retry. Each wait
            is a random time between half of its longest wait and all of
            it, and the longest wait doubles per retry.
        retry_backoff_max_s: the most the longest wait grows to.
        local_verification: verify access tokens in process while the
            daemon's revocation stream is current (see the README).
        local_cache_size: verified tokens the local verifier keeps; 0
            keeps none.
        connections: TCP connections to open, from 1 to 64; calls take
            them in turn. A daemon with several worker processes serves
            each connection from one worker, so a client spreads its load
            over them only with more connections than workers.
    """

    _channels: list[grpc.Channel]

    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> grpc.Channel:
        return open_blocking_channel(target, credentials, options)

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._close_local()
                for channel in self._channels:
                    channel.close()

    def _invoke(self, call: calls.Call[T]) -> T:
        """Send call within the deadline, retrying as the policy allows; return the parsed response."""
        method = self._method(call)
        attempts = self._policy.attempts(call.idempotent)
        while True:
            try:
                response = method(
                    call.request, timeout=attempts.timeout_s(), metadata=self._metadata
                )
            except grpc.RpcError as error:
                time.sleep(attempts.wait_after(error))
                continue
            return call.parse(response)

    def _session(self, fields: calls.SessionFields) -> Session:
        return Session(self, **fields)

    # -- sessions -------------------------------------------------------------

    def create_new_session(
        self,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = calls.NOT_GIVEN,
        *,
        device: DeviceInfo | None = None,
    ) -> Session:
        """Log a user in.

        A payload left out or None is stored as ``{}``. Session data left
        out is stored as ``{}``, and None as JSON null, as
        ``update_session_data(handle, None)`` stores it.

        ``device`` is returned by ``list_sessions``; a bad field raises
        InvalidArgumentError naming it, such as ``device.ip_address``.
        """
        return self._session(
            self._invoke(
                calls.create_new_session(
                    user_id, access_token_payload, session_data, device
                )
            )
        )

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
        local = self._verify_locally(access_token, anti_csrf_token, check_database)
        if local is not None:
            return self._session(local)
        call = calls.get_session(
            access_token, anti_csrf_token, self._remote_check_database(check_database)
        )
        fields = self._invoke(call)
        self._verified_remotely(access_token, check_database)
        return self._session(fields)

    def refresh_session(self, refresh_token: str) -> Session:
        """Rotate the refresh token; the returned session carries all new tokens."""
        return self._session(self._invoke(calls.refresh_session(refresh_token)))

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
        call = calls.regenerate_access_token(access_token, payload)
        return self._session(self._invoke(call))

    def update_access_token_payload(self, handle: str, payload: dict[str, Any]) -> None:
        """Store a new access token payload for a session.

        Access tokens issued by the next refresh, and by the next verify that
        returns a replacement token, carry it. Tokens issued before keep the
        old payload until they expire; ``regenerate_access_token`` gives a
        new token at once.
        """
        self._invoke(calls.update_access_token_payload(handle, payload))

    def revoke_session(self, handle: str) -> bool:
        """Revoke a session; return False when it no longer existed.

        A retry after a lost reply finds the session gone and returns False.
        """
        revoked = self._invoke(calls.revoke_session(handle))
        self._revoked([handle])
        return revoked

    def revoke_sessions(self, handles: Sequence[str]) -> list[str]:
        """Revoke several sessions; return the handles that existed."""
        revoked = self._invoke(calls.revoke_sessions(handles))
        self._revoked(revoked)
        return revoked

    def revoke_all_sessions_for_user(self, user_id: str) -> list[str]:
        """Revoke every session of a user; return their handles."""
        revoked = self._invoke(calls.revoke_all_sessions_for_user(user_id))
        self._revoked(revoked)
        return revoked

    def get_all_session_handles_for_user(self, user_id: str) -> list[str]:
        """Return the handles of a user's live sessions, oldest first."""
        return self._invoke(calls.get_all_session_handles_for_user(user_id))

    def list_sessions(self, user_id: str) -> list[SessionDetails]:
        """Return the live sessions of a user, oldest first."""
        return self._invoke(calls.list_sessions(user_id))

    def get_session_info(self, handle: str) -> SessionInfo:
        """Return one session's user, times, payload and data version."""
        return self._invoke(calls.get_session_info(handle))

    # -- session data ---------------------------------------------------------

    def get_session_data(self, handle: str) -> Any:
        """Return a session's data."""
        return self.get_session_data_versioned(handle).value

    def get_session_data_versioned(self, handle: str) -> SessionData:
        """Return a session's data with the version to pass as ``expected_version``."""
        return self._invoke(calls.get_session_data_versioned(handle))

    def update_session_data(
        self, handle: str, data: Any, *, expected_version: int | None = None
    ) -> int:
        """Overwrite a session's data with any JSON value; return its new version.

        Without ``expected_version`` the last writer wins. With it, the write
        happens only if the stored version still equals it, which also makes
        the call safe to retry after UNAVAILABLE; if a write was stored but
        its reply was lost, the retry raises ConflictError with
        ``current_version`` one above ``expected_version``.

        Raises:
            ConflictError: the stored version differs from expected_version;
                ``current_version`` has it and the data is unchanged.
        """
        call = calls.update_session_data(handle, data, expected_version)
        return self._invoke(call)

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
        call = calls.merge_session_data(handle, patch, expected_version)
        return self._invoke(call)

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
            InvalidArgumentError: max_attempts is not an int from 1 to 1000.
        """
        conflicts = ConflictRetries(max_attempts)
        while True:
            current = self.get_session_data_versioned(handle)
            value = change(current.value)
            try:
                version = self.update_session_data(
                    handle, value, expected_version=current.version
                )
            except ConflictError as conflict:
                time.sleep(conflicts.wait_after(conflict))
                continue
            return SessionData(value, version)

    # -- keys -----------------------------------------------------------------

    def get_jwks(self) -> dict[str, Any]:
        """Return the daemon's public signing keys as a JWK Set."""
        return self._invoke(calls.get_jwks())
