"""Deadlines and retries of both clients, against a real daemon on a fixed port.

Each test runs with SessionClient and with AsyncSessionClient: ``call``
awaits what an AsyncSessionClient method returns and takes a
SessionClient's result as it is.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from sessiond_testing import DaemonProcess

import sessiond

Client = sessiond.SessionClient | sessiond.AsyncSessionClient
StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retries.db'}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def new_client(kind: str, address: str, **settings: Any) -> Client:
    """A client of either kind; an AsyncSessionClient must be made in the loop."""
    if kind == "sync":
        return sessiond.SessionClient(address, **settings)
    return sessiond.AsyncSessionClient(address, **settings)


async def call(client: Client, method: str, *args: Any, **kwargs: Any) -> Any:
    result = getattr(client, method)(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


async def timed(coroutine: Coroutine[Any, Any, Any]) -> tuple[Any, float]:
    """Await coroutine; return what it returned or raised, and the seconds it took."""
    started = time.monotonic()
    try:
        result = await coroutine
    except sessiond.SessionError as error:
        result = error
    return result, time.monotonic() - started


def start_later(start: Callable[[], DaemonProcess], delay_s: float) -> threading.Thread:
    """Start a daemon in a thread after delay_s; the daemon itself takes about 0.5 s."""
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), start()))
    thread.start()
    return thread


RETRYING = {
    "timeout": 8.0,
    "retries": 50,
    "retry_backoff_s": 0.4,
    "retry_backoff_max_s": 0.4,
}
# The same retries, for tests that set their own timeout.
RETRIES_ONLY = {key: value for key, value in RETRYING.items() if key != "timeout"}

# How the tests below show that a call was not retried: it fails while the
# daemon is starting, and a retried call of the same client, made after it,
# gets through within the deadline they share in length. Had the first call
# been retried in the same way, it would have got through too.


def test_idempotent_call_waits_for_the_daemon_to_listen(
    kind: str, start_daemon: StartDaemon, sqlite_url: str
) -> None:
    address = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        client = new_client(kind, address, **RETRYING)
        thread = start_later(lambda: start_daemon(sqlite_url, listen=address), 0.2)
        try:
            # Nothing listens yet: a create is sent once and fails at once.
            created, create_s = await timed(call(client, "create_new_session", "u"))
            assert isinstance(created, sessiond.UnavailableError)
            assert created.code == grpc.StatusCode.UNAVAILABLE
            assert create_s < 1

            # An idempotent call is retried until the daemon answers.
            jwks, jwks_s = await timed(call(client, "get_jwks"))
            assert not isinstance(jwks, sessiond.SessionError), jwks
            assert jwks["keys"]
            assert jwks_s < RETRYING["timeout"]

            # The failed create was not sent again once the daemon was up.
            assert await call(client, "get_all_session_handles_for_user", "u") == []
        finally:
            thread.join()
            await call(client, "close")

    run(main)


def test_idempotent_call_survives_restart(
    kind: str, start_daemon: StartDaemon, sqlite_url: str
) -> None:
    address = f"127.0.0.1:{free_port()}"
    first = start_daemon(sqlite_url, listen=address)

    async def main() -> None:
        client = new_client(kind, address, **RETRYING)
        try:
            session = await call(client, "create_new_session", "u", None, {"v": 1})
            assert first.stop() == 0
            thread = start_later(lambda: start_daemon(sqlite_url, listen=address), 0.2)
            try:
                refreshed, refresh_s = await timed(
                    call(client, "refresh_session", session.refresh_token.value)
                )
                assert isinstance(refreshed, sessiond.UnavailableError)
                assert refresh_s < 1

                # A versioned write is retried until the new daemon takes it.
                version, update_s = await timed(
                    call(
                        client,
                        "update_session_data",
                        session.handle,
                        {"v": 2},
                        expected_version=1,
                    )
                )
                assert version == 2
                assert update_s < RETRYING["timeout"]
            finally:
                thread.join()
            assert await call(
                client, "get_session_data_versioned", session.handle
            ) == sessiond.SessionData({"v": 2}, 2)
            # The refresh that failed stored nothing: its token still works.
            refreshed = await call(
                client, "refresh_session", session.refresh_token.value
            )
            assert refreshed.handle == session.handle
            assert await call(client, "revoke_session", session.handle) is True
        finally:
            await call(client, "close")

    run(main)


def test_retries_stop_at_the_deadline(kind: str) -> None:
    """Nothing ever listens: the deadline, not the number of retries, ends the call."""
    address = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        client = new_client(
            kind,
            address,
            timeout=1.0,
            retries=1000,
            retry_backoff_s=0.05,
            retry_backoff_max_s=0.2,
        )
        error, elapsed_s = await timed(call(client, "get_session_info", "h"))
        await call(client, "close")
        assert isinstance(error, sessiond.UnavailableError)
        # It gives up as soon as the next wait would end past the deadline.
        assert 0.7 < elapsed_s < 1.5

    run(main)


def test_retries_zero_sends_once(kind: str) -> None:
    address = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        client = new_client(
            kind, address, retries=0, retry_backoff_s=5, retry_backoff_max_s=5
        )
        error, elapsed_s = await timed(call(client, "get_jwks"))
        await call(client, "close")
        assert isinstance(error, sessiond.UnavailableError)
        assert elapsed_s < 1

    run(main)


@pytest.fixture
def silent_address() -> Iterator[str]:
    """An address whose TCP connections are accepted by the kernel but never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_unanswered_call_raises_at_its_deadline(kind: str, silent_address: str) -> None:
    async def main() -> None:
        client = new_client(kind, silent_address, timeout=0.5, **RETRIES_ONLY)
        error, elapsed_s = await timed(call(client, "get_jwks"))
        await call(client, "close")
        assert isinstance(error, sessiond.UnavailableError)
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.45 < elapsed_s < 1.5

    run(main)


@contextmanager
def sqlite_write_lock(database_url: str, hold_s: float) -> Iterator[None]:
    """Hold the database's write lock from another connection for hold_s seconds.

    The block runs while the lock is held, and its end waits for the release.
    """
    holder = sqlite3.connect(
        database_url[len("sqlite:///") :], isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(hold_s, holder.execute, ("ROLLBACK",))
    release.start()
    try:
        yield
    finally:
        release.join()
        holder.close()


async def versioned_write_while_locked(
    client: Client, database_url: str, handle: str, hold_s: float
) -> tuple[Any, float]:
    """Write {"v": 2} over version 1 while another connection holds the write lock.

    Return what the write returned or raised, and the seconds it took.
    """
    with sqlite_write_lock(database_url, hold_s):
        return await timed(
            call(client, "update_session_data", handle, {"v": 2}, expected_version=1)
        )


def test_slow_daemon_call_raises_at_its_deadline(
    kind: str, start_daemon: StartDaemon, sqlite_url: str
) -> None:
    """A write waiting on the database lock is given up at the deadline, and not retried."""
    daemon = start_daemon(sqlite_url, db_timeout_s=5)

    async def main() -> None:
        client = new_client(kind, daemon.address, timeout=0.5, **RETRIES_ONLY)
        session = await call(client, "create_new_session", "u", None, {"v": 1})
        error, elapsed_s = await versioned_write_while_locked(
            client, sqlite_url, session.handle, 1.0
        )
        assert isinstance(error, sessiond.UnavailableError)
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.45 < elapsed_s < 1.0
        await call(client, "close")

    run(main)


def test_unavailable_reported_by_the_daemon_is_not_retried(
    kind: str, start_daemon: StartDaemon, sqlite_url: str
) -> None:
    """The daemon answers UNAVAILABLE while its database is locked; the client does not resend.

    The daemon gives up on the lock after 0.3 s, and the lock is released
    after 1.5 s: a retry after that would get through within the deadline.
    """
    daemon = start_daemon(sqlite_url, db_timeout_s=0.3)

    async def main() -> None:
        client = new_client(kind, daemon.address, **RETRYING)
        session = await call(client, "create_new_session", "u", None, {"v": 1})
        error, elapsed_s = await versioned_write_while_locked(
            client, sqlite_url, session.handle, 1.5
        )
        assert isinstance(error, sessiond.UnavailableError)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert elapsed_s < 1.5
        assert await call(client, "get_session_data", session.handle) == {"v": 1}
        await call(client, "close")

    run(main)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("timeout", 0),
        ("retries", -1),
        ("retry_backoff_s", 0),
        ("retry_backoff_max_s", 0.01),
        ("local_cache_size", -1),
    ],
)
def test_bad_settings_rejected(kind: str, setting: str, value: float) -> None:
    async def main() -> None:
        with pytest.raises(sessiond.InvalidArgumentError) as caught:
            new_client(kind, "127.0.0.1:1", **{setting: value})
        assert caught.value.field == setting

    run(main)
