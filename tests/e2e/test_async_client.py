"""AsyncSessionClient against a real daemon, on both backends.

The tests run their coroutines with asyncio.run, so they need no pytest
plugin. Each creates its client inside the coroutine, as grpc.aio requires.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import pytest
from sessiond_testing import DaemonProcess

import sessiond

T = TypeVar("T")
API_KEY = "async-test-key-0123456789"


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def tokens(session: sessiond.AsyncSession | sessiond.Session) -> tuple[str, ...]:
    """The access, anti-CSRF and refresh tokens a create or refresh issued."""
    issued = (session.access_token, session.anti_csrf_token, session.refresh_token)
    return tuple(token.value for token in issued if token is not None)


def test_whole_flow(daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with sessiond.AsyncSessionClient(daemon.address) as client:
            device = sessiond.DeviceInfo(user_agent="pytest", ip_address="::1")
            session = await client.create_new_session(
                "async-1", {"role": "reader"}, {"cart": []}, device=device
            )
            assert isinstance(session, sessiond.AsyncSession)
            assert repr(session).startswith("AsyncSession(handle=")
            access, csrf, refresh = tokens(session)

            verified = await client.get_session(access, csrf)
            assert isinstance(verified, sessiond.AsyncSession)
            assert verified.handle == session.handle
            assert verified.user_id == "async-1"
            assert verified.access_token_payload == {"role": "reader"}
            assert verified.access_token is None

            # Session data through the session's own coroutines.
            assert await verified.get_session_data() == {"cart": []}
            assert await verified.update_session_data({"cart": ["book"]}) == 2
            merged = await verified.merge_session_data({"theme": "dark"})
            assert merged == sessiond.SessionData(
                {"cart": ["book"], "theme": "dark"}, 3
            )
            current = await verified.get_session_data_versioned()
            assert current == merged
            assert (
                await verified.update_session_data(
                    {"cart": []}, expected_version=current.version
                )
                == 4
            )
            modified = await verified.modify_session_data(
                lambda data: {**data, "cart": data["cart"] + ["pen"]}
            )
            assert modified == sessiond.SessionData({"cart": ["pen"]}, 5)
            assert await client.get_session_data(session.handle) == {"cart": ["pen"]}
            info = await verified.get_session_info()
            assert (info.handle, info.user_id, info.data_version) == (
                session.handle,
                "async-1",
                5,
            )

            # Payload: stored for later tokens, and a new token at once.
            await verified.update_access_token_payload({"role": "editor"})
            assert verified.access_token_payload == {"role": "editor"}
            regenerated = await client.regenerate_access_token(access)
            assert regenerated.access_token is not None
            assert regenerated.access_token_payload == {"role": "editor"}
            again = await client.get_session(regenerated.access_token.value, csrf)
            assert again.access_token_payload == {"role": "editor"}

            refreshed = await client.refresh_session(refresh)
            assert refreshed.handle == session.handle
            new_access, new_csrf, new_refresh = tokens(refreshed)
            assert new_refresh != refresh
            await client.get_session(new_access, new_csrf)

            (details,) = await client.list_sessions("async-1")
            assert details.handle == session.handle
            assert details.device == sessiond.DeviceInfo(
                user_agent="pytest", ip_address="::1"
            )
            jwks = await client.get_jwks()
            assert jwks["keys"]

            # Logout, one, several and all.
            others = [await client.create_new_session("async-1") for _ in range(3)]
            handles = await client.get_all_session_handles_for_user("async-1")
            # Handles come in order of creation time, then handle, and the
            # three sessions may share one millisecond.
            assert handles[0] == session.handle
            assert sorted(handles[1:]) == sorted(other.handle for other in others)
            assert await others[0].revoke() is True
            assert await others[0].revoke() is False
            assert await client.revoke_session(others[0].handle) is False
            assert await client.revoke_sessions(
                [others[0].handle, others[1].handle]
            ) == [others[1].handle]
            assert sorted(
                await client.revoke_all_sessions_for_user("async-1")
            ) == sorted([session.handle, others[2].handle])
            assert await client.get_all_session_handles_for_user("async-1") == []
            with pytest.raises(sessiond.UnauthorisedError):
                await client.get_session(new_access, new_csrf, check_database=True)

        with pytest.raises(sessiond.GeneralError, match="closed"):
            await client.get_jwks()
        await client.close()  # a second close does nothing

    run(main)


def test_modify_accepts_sync_and_async_change(daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with sessiond.AsyncSessionClient(daemon.address) as client:
            session = await client.create_new_session("async-2", None, {"n": 0})

            async def add_two(data: Any) -> Any:
                await asyncio.sleep(0)
                return {"n": data["n"] + 2}

            assert await client.modify_session_data(
                session.handle, lambda data: {"n": data["n"] + 1}
            ) == sessiond.SessionData({"n": 1}, 2)
            assert await session.modify_session_data(add_two) == sessiond.SessionData(
                {"n": 3}, 3
            )
            with pytest.raises(sessiond.InvalidArgumentError) as caught:
                await session.modify_session_data(add_two, max_attempts=0)
            assert caught.value.field == "max_attempts"

    run(main)


def test_concurrent_calls_share_one_channel(daemon: DaemonProcess) -> None:
    count = 100

    async def main() -> None:
        async with sessiond.AsyncSessionClient(daemon.address) as client:
            sessions = await asyncio.gather(
                *(
                    client.create_new_session(f"async-many-{i}", {"i": i})
                    for i in range(count)
                )
            )
            assert len({session.handle for session in sessions}) == count
            verified = await asyncio.gather(
                *(client.get_session(*tokens(s)[:2]) for s in sessions)
            )
            assert [v.access_token_payload for v in verified] == [
                {"i": i} for i in range(count)
            ]

            # Concurrent merges of different keys all survive, and so do
            # concurrent read-modify-write increments.
            shared = sessions[0]
            await asyncio.gather(
                *(shared.merge_session_data({f"k{i}": i}) for i in range(20))
            )
            data = await shared.get_session_data()
            assert {key: data[key] for key in data if key.startswith("k")} == {
                f"k{i}": i for i in range(20)
            }
            await shared.update_session_data({"n": 0})
            await asyncio.gather(
                *(
                    shared.modify_session_data(
                        lambda data: {"n": data["n"] + 1}, max_attempts=100
                    )
                    for _ in range(10)
                )
            )
            assert await shared.get_session_data() == {"n": 10}

            revoked = await asyncio.gather(*(s.revoke() for s in sessions))
            assert revoked == [True] * count

    run(main)


def test_created_outside_an_event_loop() -> None:
    with pytest.raises(sessiond.GeneralError, match="inside a coroutine"):
        sessiond.AsyncSessionClient("127.0.0.1:1")


# -- exceptions -----------------------------------------------------------------


async def outcome(
    client: sessiond.SessionClient | sessiond.AsyncSessionClient,
    method: str,
    *args: Any,
    **kwargs: Any,
) -> sessiond.SessionError:
    """Call a method of either client and return the SessionError it raised."""
    try:
        result = getattr(client, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            await result
    except sessiond.SessionError as error:
        return error
    raise AssertionError(f"{method} did not raise")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_exceptions_match_the_sync_client(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, refresh_grace_period_s=0, api_keys=API_KEY)

    async def main() -> None:
        sync = daemon.client(api_key=API_KEY)
        aio = sessiond.AsyncSessionClient(daemon.address, api_key=API_KEY)
        session = sync.create_new_session("async-errors", None, {"v": 0})
        access, csrf, _ = tokens(session)
        cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("get_session", ("not-a-token", csrf), {}),
            ("get_session", (access, "wrong-csrf"), {}),
            ("get_session", (access,), {}),
            ("get_session_data", ("no-such-handle",), {}),
            ("get_session_info", ("0" * 32,), {}),
            ("update_session_data", (session.handle, {}), {"expected_version": 9}),
            ("merge_session_data", (session.handle, {}), {"expected_version": 9}),
            ("create_new_session", ("",), {}),
            ("create_new_session", ("u", {"sub": "x"}), {}),
            ("create_new_session", ("u", None, {"x": object()}), {}),
            (
                "create_new_session",
                ("u",),
                {"device": sessiond.DeviceInfo(ip_address="not-an-ip")},
            ),
            ("modify_session_data", (session.handle, dict), {"max_attempts": 0}),
            ("refresh_session", ("garbage",), {}),
            ("regenerate_access_token", ("garbage",), {}),
            ("update_access_token_payload", (session.handle, {"exp": 1}), {}),
            ("revoke_sessions", ([""] * 2,), {}),
        ]
        for method, args, kwargs in cases:
            expected = await outcome(sync, method, *args, **kwargs)
            actual = await outcome(aio, method, *args, **kwargs)
            assert type(actual) is type(expected), (method, args)
            assert vars(actual) == vars(expected), (method, args)
            assert str(actual) == str(expected)
        kinds = {type(await outcome(sync, m, *a, **k)) for m, a, k in cases}
        assert {
            sessiond.UnauthorisedError,
            sessiond.TryRefreshTokenError,
            sessiond.ConflictError,
            sessiond.InvalidArgumentError,
        } <= kinds

        # Token theft: each client replays an old token of its own session.
        for client in (sync, aio):
            first = sync.create_new_session("async-theft")
            old = tokens(first)[2]
            second = sync.refresh_session(old)
            sync.refresh_session(tokens(second)[2])
            theft = await outcome(client, "refresh_session", old)
            assert type(theft) is sessiond.TokenTheftDetectedError
            assert isinstance(theft, sessiond.TokenTheftDetectedError)
            assert (theft.session_handle, theft.user_id) == (
                first.handle,
                "async-theft",
            )
            assert theft.code == grpc.StatusCode.UNAUTHENTICATED

        # A missing API key, an unreachable daemon and a closed client.
        anonymous = (
            daemon.client(),
            sessiond.AsyncSessionClient(daemon.address),
        )
        unreachable = (
            sessiond.SessionClient(f"127.0.0.1:{closed_port()}", retries=0),
            sessiond.AsyncSessionClient(f"127.0.0.1:{closed_port()}", retries=0),
        )
        pairs: list[tuple[Any, Any, str]] = [
            (*anonymous, "get_jwks"),
            (*unreachable, "get_jwks"),
        ]
        for expected_error, actual_error in [
            (await outcome(s, m), await outcome(a, m)) for s, a, m in pairs
        ]:
            assert type(actual_error) is type(expected_error)
            assert actual_error.code == expected_error.code
        assert type(await outcome(anonymous[1], "get_jwks")) is sessiond.GeneralError
        assert (
            type(await outcome(unreachable[1], "get_jwks")) is sessiond.UnavailableError
        )
        for s, a in (anonymous, unreachable, (sync, aio)):
            s.close()
            await a.close()
        for client in (sync, aio):
            assert type(await outcome(client, "get_jwks")) is sessiond.GeneralError

    run(main)


# -- deadlines --------------------------------------------------------------------


def test_deadline_covers_the_call() -> None:
    """A daemon that never replies makes the call raise at its deadline."""
    # The kernel completes TCP handshakes for the backlog, but nothing ever
    # speaks HTTP/2 on this socket, so no call can finish.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> None:
            async with sessiond.AsyncSessionClient(
                address, timeout=0.3, retries=0
            ) as client:
                started = time.monotonic()
                with pytest.raises(sessiond.UnavailableError) as caught:
                    await client.get_jwks()
                assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                # A generous bound: the point is that the call does not hang.
                assert time.monotonic() - started < 5

        run(main)
