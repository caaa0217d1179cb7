"""MySQL limits: max_allowed_packet and db_timeout_s, on private MariaDB servers.

The packet tests share one server started with --max-allowed-packet=1M, so
data near 1 MiB is just below or above the limit. The timeout tests freeze
a server of their own with SIGSTOP: it keeps accepting TCP connections but
never responds, and every call must give up within about db_timeout_s.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from private_mysql import PrivateMysqlServer
from sessiond_testing import DaemonProcess

import sessiond
from sessiond_server import clock
from sessiond_server.errors import InvalidArgumentError, UnavailableError
from sessiond_server.storage import Storage, open_storage
from sessiond_server.storage.base import SessionRecord

pytestmark = pytest.mark.mysql

MAX_ALLOWED_PACKET = 1024 * 1024
# Room for the rest of the UPDATE query and the escapes of the special
# characters, so that data this much below the limit fits.
QUERY_MARGIN_BYTES = 4096
# Characters that PyMySQL escapes or that are not ASCII.
SPECIAL_TEXT = "é ü 😀 ' \" \\ \\0 \x00 \n \r \x1a %s %% ?"
DB_TIMEOUT_S = 2.0
HOUR_MS = 3600 * 1000


@pytest.fixture(scope="module")
def small_packet_server(
    module_private_mysql: Callable[..., PrivateMysqlServer],
) -> PrivateMysqlServer:
    return module_private_mysql(f"--max-allowed-packet={MAX_ALLOWED_PACKET}")


@pytest.fixture
def small_packet_url(small_packet_server: PrivateMysqlServer) -> Iterator[str]:
    """A new, empty database on the small-packet server."""
    name = f"limits_{uuid.uuid4().hex[:12]}"
    with small_packet_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    yield small_packet_server.url_for(name)
    with small_packet_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


def open_migrated(url: str, timeout_s: float = 5.0) -> Storage:
    storage = open_storage(url, pool_size=2, timeout_s=timeout_s)
    storage.migrate(clock.now_ms())
    return storage


def make_session(session_data: str = "{}", payload: str = "{}") -> SessionRecord:
    now_ms = clock.now_ms()
    return SessionRecord(
        session_handle=str(uuid.uuid4()),
        user_id="alice",
        refresh_token_hash2=b"s" * 32,
        access_token_payload=payload,
        session_data=session_data,
        data_version=1,
        created_at_ms=now_ms,
        expires_at_ms=now_ms + HOUR_MS,
        refresh_token_changed_at_ms=now_ms,
        last_refreshed_at_ms=now_ms,
    )


def data_of_size(size: int) -> dict[str, str]:
    """Return a JSON object whose compact UTF-8 text, as the daemon stores it, is size bytes."""
    value = {"text": SPECIAL_TEXT}
    overhead = len(
        json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    )
    value["text"] = SPECIAL_TEXT + "a" * (size - overhead)
    return value


# -- max_allowed_packet through the daemon --------------------------------------


def test_data_near_packet_limit(
    start_daemon: Callable[..., DaemonProcess], small_packet_url: str
) -> None:
    daemon = start_daemon(
        small_packet_url, max_session_data_bytes=2 * MAX_ALLOWED_PACKET
    )
    below = data_of_size(MAX_ALLOWED_PACKET - QUERY_MARGIN_BYTES)
    above = data_of_size(MAX_ALLOWED_PACKET + 16)

    with daemon.client() as client:
        session = client.create_new_session("alice", session_data=below)
        assert client.get_session_data(session.handle) == below
        version = client.update_session_data(session.handle, below)

        with pytest.raises(sessiond.InvalidArgumentError) as raised:
            client.update_session_data(session.handle, above)

        stored = client.get_session_data_versioned(session.handle)

    assert raised.value.field == "session_data"
    assert "max_allowed_packet" in str(raised.value)
    assert str(MAX_ALLOWED_PACKET) in str(raised.value)
    assert "max_session_data_bytes" in str(raised.value)
    assert stored.value == below
    assert stored.version == version


def test_create_above_packet_limit(
    start_daemon: Callable[..., DaemonProcess], small_packet_url: str
) -> None:
    daemon = start_daemon(
        small_packet_url, max_session_data_bytes=2 * MAX_ALLOWED_PACKET
    )
    above = data_of_size(MAX_ALLOWED_PACKET + 16)

    with daemon.client() as client:
        with pytest.raises(sessiond.InvalidArgumentError) as raised:
            client.create_new_session("bob", session_data=above)
        handles = client.get_all_session_handles_for_user("bob")

    assert raised.value.field == "session_data"
    assert handles == []


# -- max_allowed_packet in the storage ------------------------------------------


def test_special_text_round_trip(small_packet_url: str) -> None:
    storage = open_migrated(small_packet_url)
    try:
        record = make_session(SPECIAL_TEXT, SPECIAL_TEXT * 2)
        storage.create_session(record)
        created = storage.get_session(record.session_handle, clock.now_ms())
        storage.update_session_data(
            record.session_handle, SPECIAL_TEXT * 3, clock.now_ms()
        )
        updated = storage.get_session_data(record.session_handle, clock.now_ms())
    finally:
        storage.close()

    assert created is not None
    assert created.session_data == SPECIAL_TEXT
    assert created.access_token_payload == SPECIAL_TEXT * 2
    assert updated == (SPECIAL_TEXT * 3, 2)


def test_payload_above_packet_limit(small_packet_url: str) -> None:
    storage = open_migrated(small_packet_url)
    try:
        record = make_session()
        storage.create_session(record)
        with pytest.raises(InvalidArgumentError) as raised:
            storage.update_access_token_payload(
                record.session_handle, "p" * MAX_ALLOWED_PACKET, clock.now_ms()
            )
        stored = storage.get_session(record.session_handle, clock.now_ms())
    finally:
        storage.close()

    assert raised.value.field == "access_token_payload"
    assert "max_access_token_payload_bytes" in str(raised.value)
    assert stored is not None
    assert stored.access_token_payload == "{}"


def test_lowered_packet_limit_rejected(
    small_packet_server: PrivateMysqlServer, small_packet_url: str
) -> None:
    """A server limit lowered after the storage read it is found on the error path."""
    storage = open_migrated(small_packet_url)
    lowered = MAX_ALLOWED_PACKET // 2
    record = make_session()
    try:
        storage.create_session(record)
        # A large write makes the storage read and keep the limit of 1 MiB.
        storage.update_session_data(
            record.session_handle, "a" * (lowered // 2), clock.now_ms()
        )
        with small_packet_server.connect() as admin, admin.cursor() as cursor:
            cursor.execute(f"SET GLOBAL max_allowed_packet = {lowered}")
            # Close the pooled connections, so new ones get the lower limit.
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE id <> CONNECTION_ID() AND user = 'root'"
            )
            for (connection_id,) in cursor.fetchall():
                cursor.execute(f"KILL {int(connection_id)}")
        time.sleep(0.2)
        with pytest.raises(InvalidArgumentError) as raised:
            storage.update_session_data(
                record.session_handle, "b" * (lowered + 1024), clock.now_ms()
            )
        stored = storage.get_session_data(record.session_handle, clock.now_ms())
    finally:
        storage.close()
        with small_packet_server.connect() as admin, admin.cursor() as cursor:
            cursor.execute(f"SET GLOBAL max_allowed_packet = {MAX_ALLOWED_PACKET}")

    assert raised.value.field == "session_data"
    assert str(lowered) in str(raised.value)
    assert stored == ("a" * (lowered // 2), 2)


# -- db_timeout_s on a frozen server ----------------------------------------------


@pytest.fixture
def frozen_server(
    private_mysql: Callable[..., PrivateMysqlServer],
) -> Iterator[PrivateMysqlServer]:
    """A private server that the test freezes; it is thawed before teardown stops it."""
    server = private_mysql()
    yield server
    if server.running:
        server.thaw()


def timed_unavailable(call: Callable[[], Any]) -> tuple[float, str]:
    """Run a call that must raise UnavailableError; return its duration and message."""
    started = time.monotonic()
    with pytest.raises(UnavailableError) as raised:
        call()
    return time.monotonic() - started, str(raised.value)


def test_frozen_server_calls_time_out(frozen_server: PrivateMysqlServer) -> None:
    warm = open_migrated(frozen_server.url, timeout_s=DB_TIMEOUT_S)
    record = make_session()
    warm.create_session(record)
    frozen_server.freeze()
    try:
        # The write comes first, so it sends COMMIT on an open connection.
        write_s, write_message = timed_unavailable(
            lambda: warm.update_session_data(
                record.session_handle, '{"n":1}', clock.now_ms()
            )
        )
        read_s, read_message = timed_unavailable(
            lambda: warm.get_session(record.session_handle, clock.now_ms())
        )
        # A storage opened after the freeze must open new connections.
        cold = open_storage(frozen_server.url, pool_size=2, timeout_s=DB_TIMEOUT_S)
        cold_s, cold_message = timed_unavailable(
            lambda: cold.get_session(record.session_handle, clock.now_ms())
        )
    finally:
        frozen_server.thaw()
    warm.close()
    cold.close()

    limit_s = DB_TIMEOUT_S * 1.5
    assert read_s <= limit_s
    assert "did not respond within db_timeout_s" in read_message
    assert write_s <= limit_s
    assert "did not respond to COMMIT within db_timeout_s" in write_message
    assert "may or may not have been applied" in write_message
    assert cold_s <= limit_s
    assert "did not respond within db_timeout_s" in cold_message


def test_thawed_server_serves_again(frozen_server: PrivateMysqlServer) -> None:
    storage = open_migrated(frozen_server.url, timeout_s=DB_TIMEOUT_S)
    record = make_session()
    try:
        storage.create_session(record)
        frozen_server.freeze()
        try:
            timed_unavailable(
                lambda: storage.get_session(record.session_handle, clock.now_ms())
            )
        finally:
            frozen_server.thaw()
        stored = storage.get_session(record.session_handle, clock.now_ms())
    finally:
        storage.close()

    assert stored is not None
    assert stored.session_handle == record.session_handle
