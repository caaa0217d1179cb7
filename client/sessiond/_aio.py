"""The asyncio client: ``SessionClient``'s calls as coroutines, over ``grpc.aio``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import _calls as calls
from ._base import ClientBase
from ._retry import ConflictRetries
from ._session import (
    AsyncSession,
    DeviceInfo,
    SessionData,
    SessionDetails,
    SessionInfo,
)
from .errors import ConflictError, GeneralError

__all__ = ["AsyncSessionClient"]

T = TypeVar("T")


class _AioCallError(grpc.RpcError, grpc.Call):
    """A grpc.aio error seen as the failed grpc.Call that ``from_rpc_error`` reads.

    ``AioRpcError`` has the code, details and metadata of the call but is
    not a ``grpc.Call``; with this view the error maps to the same
    exception as in ``SessionClient``.
    """

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self._error = error

    def code(self) -> grpc.StatusCode:
        return self._error.code()

    def details(self) -> str:
        return self._error.details() or ""

    def initial_metadata(self) -> Any:
        return self._error.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class AsyncSessionClient(ClientBase):
    """A client of one sessiond daemon whose calls are coroutines.

    It takes the arguments of ``SessionClient``, has the same methods as
    coroutines, raises the same exceptions, and retries and times out the
    same way. Sessions it returns are ``AsyncSession`` objects, whose
    methods are coroutines too. Create it in a coroutine of the event loop
    that uses it (elsewhere it raises GeneralError), and close it with
    ``await client.close()`` or ``async with``. Concurrent calls from many
    tasks share its channels (one unless ``connections`` says more).
    """

    _local_blocking = False

    _channels: list[grpc.aio.Channel]

    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> grpc.aio.Channel:
        try:
            # A grpc.aio channel belongs to the loop running when it is made.
            asyncio.get_running_loop()
        except RuntimeError:
            raise GeneralError(
                "create AsyncSessionClient inside a coroutine of the event loop that uses it"
            ) from None
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def __aenter__(self) -> AsyncSessionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        if not self._closed:
            self._closed = True
            self._close_local()
            for channel in self._channels:
                await channel.close(None)

    async def _invoke(self, call: calls.Call[T]) -> T:
        """Send call within the deadline, retrying as the policy allows; return the parsed response."""
        method = self._method(call)
        attempts = self._policy.attempts(call.idempotent)
        while True:
            try:
                response = await method(
                    call.request, timeout=attempts.timeout_s(), metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                await asyncio.sleep(attempts.wait_after(_AioCallError(error)))
                continue
            return call.parse(response)

    def _session(self, fields: calls.SessionFields) -> AsyncSession:
        return AsyncSession(self, **fields)

    # -- sessions ---------------------------------------------------------------
    # Each method is the coroutine of SessionClient's method of the same name,
    # which documents it.

    async def create_new_session(
        self,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = calls.NOT_GIVEN,
        *,
        device: DeviceInfo | None = None,
    ) -> AsyncSession:
        call = calls.create_new_session(
            user_id, access_token_payload, session_data, device
        )
        return self._session(await self._invoke(call))

    async def get_session(
        self,
        access_token: str,
        anti_csrf_token: str | None = None,
        *,
        check_database: bool = False,
    ) -> AsyncSession:
        local = self._verify_locally(access_token, anti_csrf_token, check_database)
        if local is not None:
            return self._session(local)
        call = calls.get_session(
            access_token, anti_csrf_token, self._remote_check_database(check_database)
        )
        fields = await self._invoke(call)
        self._verified_remotely(access_token, check_database)
        return self._session(fields)

    async def refresh_session(self, refresh_token: str) -> AsyncSession:
        return self._session(await self._invoke(calls.refresh_session(refresh_token)))

    async def regenerate_access_token(
        self, access_token: str, payload: dict[str, Any] | None = None
    ) -> AsyncSession:
        call = calls.regenerate_access_token(access_token, payload)
        return self._session(await self._invoke(call))

    async def update_access_token_payload(
        self, handle: str, payload: dict[str, Any]
    ) -> None:
        await self._invoke(calls.update_access_token_payload(handle, payload))

    async def revoke_session(self, handle: str) -> bool:
        revoked = await self._invoke(calls.revoke_session(handle))
        self._revoked([handle])
        return revoked

    async def revoke_sessions(self, handles: Sequence[str]) -> list[str]:
        revoked = await self._invoke(calls.revoke_sessions(handles))
        self._revoked(revoked)
        return revoked

    async def revoke_all_sessions_for_user(self, user_id: str) -> list[str]:
        revoked = await self._invoke(calls.revoke_all_sessions_for_user(user_id))
        self._revoked(revoked)
        return revoked

    async def get_all_session_handles_for_user(self, user_id: str) -> list[str]:
        return await self._invoke(calls.get_all_session_handles_for_user(user_id))

    async def list_sessions(self, user_id: str) -> list[SessionDetails]:
        return await self._invoke(calls.list_sessions(user_id))

    async def get_session_info(self, handle: str) -> SessionInfo:
        return await self._invoke(calls.get_session_info(handle))

    # -- session data -----------------------------------------------------------

    async def get_session_data(self, handle: str) -> Any:
        return (await self.get_session_data_versioned(handle)).value

    async def get_session_data_versioned(self, handle: str) -> SessionData:
        return await self._invoke(calls.get_session_data_versioned(handle))

    async def update_session_data(
        self, handle: str, data: Any, *, expected_version: int | None = None
    ) -> int:
        call = calls.update_session_data(handle, data, expected_version)
        return await self._invoke(call)

    async def merge_session_data(
        self, handle: str, patch: Any, *, expected_version: int | None = None
    ) -> SessionData:
        call = calls.merge_session_data(handle, patch, expected_version)
        return await self._invoke(call)

    async def modify_session_data(
        self, handle: str, change: Callable[[Any], Any], *, max_attempts: int = 5
    ) -> SessionData:
        """As ``SessionClient.modify_session_data``; change may also be a coroutine function."""
        conflicts = ConflictRetries(max_attempts)
        while True:
            current = await self.get_session_data_versioned(handle)
            value = change(current.value)
            if inspect.isawaitable(value):
                value = await value
            try:
                version = await self.update_session_data(
                    handle, value, expected_version=current.version
                )
            except ConflictError as conflict:
                await asyncio.sleep(conflicts.wait_after(conflict))
                continue
            return SessionData(value, version)

    # -- keys -------------------------------------------------------------------

    async def get_jwks(self) -> dict[str, Any]:
        return await self._invoke(calls.get_jwks())
