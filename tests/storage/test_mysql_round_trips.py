"""MySQL storage through a loopback proxy: round trips, and connections lost mid-write.

The proxy relays the storage's connections to the test server packet by
packet. It counts the commands the client sends, each of which costs one
round trip, and it can close a connection just before a chosen statement
reaches the server, or just after the server has replied to it, without
passing the reply on. The second case is a write that the server committed
while its client never learns the outcome.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pymysql
import pytest
from sessiond_testing import mysql_connect

from sessiond_server.errors import UnavailableError
from sessiond_server.storage import Rotation, SessionRecord, Storage, open_storage

pytestmark = pytest.mark.mysql

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
GRACE_MS = 10_000

COM_QUERY = 0x03
OK_PACKET = 0x00
ERR_PACKET = 0xFF
SERVER_MORE_RESULTS_EXISTS = 0x0008

QueryTest = Callable[[str], bool]


def read_length_encoded(data: bytes, offset: int) -> int:
    """Return the offset after a length-encoded integer of the MySQL protocol."""
    first = data[offset]
    return offset + {0xFC: 3, 0xFD: 4, 0xFE: 9}.get(first, 1)


def ends_response(packet: bytes) -> bool:
    """Return whether a server packet is an OK or ERR that ends the reply to a command."""
    payload = packet[4:]
    if not payload:
        return False
    if payload[0] == ERR_PACKET:
        return True
    if payload[0] != OK_PACKET:
        return False
    offset = read_length_encoded(payload, 1)  # affected rows
    offset = read_length_encoded(payload, offset)  # last insert id
    status = int.from_bytes(payload[offset : offset + 2], "little")
    return not status & SERVER_MORE_RESULTS_EXISTS


def split_packets(buffer: bytearray) -> Iterator[bytes]:
    """Remove and yield the complete packets at the start of buffer."""
    while len(buffer) >= 4:
        size = 4 + int.from_bytes(buffer[:3], "little")
        if len(buffer) < size:
            return
        packet = bytes(buffer[:size])
        del buffer[:size]
        yield packet


@dataclass
class Relay:
    """One client connection and its connection to the server."""

    client: socket.socket
    server: socket.socket
    # Set once a statement marked drop_after has gone to the server.
    drop_after_answer: bool = False

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@dataclass
class Proxy:
    """A loopback TCP proxy in front of a MySQL server."""

    server_address: tuple[str, int]
    listener: socket.socket = field(init=False)
    commands: int = 0
    queries: list[str] = field(default_factory=list)
    # Close the connection instead of sending a matching statement on.
    drop_before: QueryTest | None = None
    # Send a matching statement, then close the connection when the server
    # has replied to it, without passing the reply on.
    drop_after: QueryTest | None = None
    relays: list[Relay] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Proxy:
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.server_address)
            relay = Relay(client, server)
            with self.lock:
                self.relays.append(relay)
            threading.Thread(target=self._to_server, args=(relay,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(relay,), daemon=True).start()

    def _to_server(self, relay: Relay) -> None:
        buffer = bytearray()
        while chunk := _receive(relay.client):
            buffer += chunk
            for packet in split_packets(buffer):
                # Every command starts a new exchange with sequence id 0.
                if packet[3] == 0 and len(packet) > 4:
                    if not self._pass_command(relay, packet):
                        relay.close()
                        return
                if not _send(relay.server, packet):
                    return
        relay.close()

    def _pass_command(self, relay: Relay, packet: bytes) -> bool:
        """Count a command; return False when the connection must close before it."""
        query = ""
        if packet[4] == COM_QUERY:
            query = packet[5:].decode("utf-8", "replace")
        with self.lock:
            self.commands += 1
            if query:
                self.queries.append(query)
            if query and self.drop_before is not None and self.drop_before(query):
                self.drop_before = None
                return False
            if query and self.drop_after is not None and self.drop_after(query):
                self.drop_after = None
                relay.drop_after_answer = True
        return True

    def _to_client(self, relay: Relay) -> None:
        buffer = bytearray()
        while chunk := _receive(relay.server):
            buffer += chunk
            for packet in split_packets(buffer):
                if relay.drop_after_answer and ends_response(packet):
                    relay.close()
                    return
                if not _send(relay.client, packet):
                    return
        relay.close()

    def close_connections(self) -> None:
        """Close every relayed connection, as a server restart or KILL would."""
        with self.lock:
            relays, self.relays = self.relays, []
        for relay in relays:
            relay.close()

    def count(self, query: str) -> int:
        """Return how many statements sent so far start with query."""
        with self.lock:
            return sum(1 for sent in self.queries if sent.startswith(query))

    def stop(self) -> None:
        self.listener.close()
        self.close_connections()


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


@pytest.fixture
def proxy(mysql_url: str) -> Iterator[Proxy]:
    parts = urlsplit(mysql_url)
    started = Proxy((parts.hostname or "127.0.0.1", parts.port or 3306)).start()
    yield started
    started.stop()


@pytest.fixture
def storage(mysql_url: str, proxy: Proxy) -> Iterator[Storage]:
    parts = urlsplit(mysql_url)
    user = parts.username or "root"
    netloc = f"{user}@127.0.0.1:{proxy.port}"
    if parts.password:
        netloc = f"{user}:{parts.password}@127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    opened = open_storage(url, pool_size=2, timeout_s=5.0)
    opened.migrate(NOW_MS)
    yield opened
    opened.close()


def stored_row(mysql_url: str, handle: str) -> list[tuple[object, ...]]:
    """Read a session's data and version straight from the server, past the proxy."""
    with mysql_connect(mysql_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT CAST(session_data AS CHAR), data_version, refresh_token_hash2 "
            "FROM sessiond_sessions WHERE session_handle = %s",
            (handle,),
        )
        return list(cursor.fetchall())


def make_session(user_id: str = "alice") -> SessionRecord:
    return SessionRecord(
        session_handle=str(uuid.uuid4()),
        user_id=user_id,
        refresh_token_hash2=b"s" * 32,
        access_token_payload="{}",
        session_data='{"n":0}',
        data_version=1,
        created_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + HOUR_MS,
        refresh_token_changed_at_ms=NOW_MS,
        last_refreshed_at_ms=NOW_MS,
    )


def commands_of(proxy: Proxy, call: Callable[[], object]) -> int:
    before = proxy.commands
    call()
    return proxy.commands - before


# -- round trips ------------------------------------------------------------------


def test_round_trips_per_call(storage: Storage, proxy: Proxy) -> None:
    record = make_session()
    handle = record.session_handle
    child = b"c" * 32
    grandchild = b"g" * 32
    sibling = b"b" * 32
    calls: list[tuple[str, int, Callable[[], object]]] = [
        ("create", 1, lambda: storage.create_session(record)),
        ("get data", 1, lambda: storage.get_session_data(handle, NOW_MS)),
        ("update data", 1, lambda: storage.update_session_data(handle, "{}", NOW_MS)),
        (
            "update data at a version",
            1,
            lambda: storage.update_session_data(handle, "{}", NOW_MS, 2),
        ),
        ("merge data", 2, lambda: storage.rewrite_session_data(handle, str, NOW_MS)),
        (
            "refresh with a child",
            1,
            lambda: storage.rotate_refresh_token(
                handle,
                child,
                record.refresh_token_hash2,
                NOW_MS,
                NOW_MS + HOUR_MS,
                GRACE_MS,
            ),
        ),
        (
            "promote a child",
            1,
            lambda: storage.promote_refresh_token(
                handle, child, grandchild, NOW_MS, GRACE_MS
            ),
        ),
        (
            "refresh with the stored token",
            1,
            lambda: storage.rotate_refresh_token(
                handle, grandchild, child, NOW_MS, NOW_MS + HOUR_MS, GRACE_MS
            ),
        ),
        # The rare outcomes take the common-case batch, then a transaction
        # of their own.
        (
            "refresh with the replaced token",
            3,
            lambda: storage.rotate_refresh_token(
                handle,
                child,
                record.refresh_token_hash2,
                NOW_MS,
                NOW_MS + HOUR_MS,
                GRACE_MS,
            ),
        ),
        (
            "promote a sibling",
            3,
            lambda: storage.promote_refresh_token(
                handle, child, sibling, NOW_MS, GRACE_MS
            ),
        ),
        ("revoke", 2, lambda: storage.revoke_sessions([handle], NOW_MS)),
    ]
    # Warm the pool, so that no call pays for a connection.
    storage.ping()
    storage.ping()
    # The first query above 1 KiB reads the server's max_allowed_packet once
    # per storage. A refresh of another session sends one.
    other = make_session("bob")
    storage.create_session(other)
    storage.rotate_refresh_token(
        other.session_handle,
        child,
        other.refresh_token_hash2,
        NOW_MS,
        NOW_MS + HOUR_MS,
        GRACE_MS,
    )

    for name, expected, call in calls:
        assert commands_of(proxy, call) == expected, name


def test_refresh_stores_token_and_deadlines(storage: Storage, mysql_url: str) -> None:
    record = make_session()
    storage.create_session(record)
    child = b"c" * 32

    result = storage.rotate_refresh_token(
        record.session_handle,
        child,
        record.refresh_token_hash2,
        NOW_MS + 5,
        NOW_MS + 2 * HOUR_MS,
        GRACE_MS,
    )
    stored = storage.get_session(record.session_handle, NOW_MS + 5)

    assert result.outcome is Rotation.PROMOTED
    assert stored is not None
    assert stored.refresh_token_hash2 == child
    assert stored.previous_refresh_token_hash2 == record.refresh_token_hash2
    assert stored.refresh_token_changed_at_ms == NOW_MS + 5
    assert stored.expires_at_ms == NOW_MS + 2 * HOUR_MS
    assert stored.last_refreshed_at_ms == NOW_MS + 5


# -- lost connections ---------------------------------------------------------------


def test_create_reply_lost_row_stored_once(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    record = make_session()
    storage.ping()
    proxy.drop_after = lambda query: query.startswith("INSERT INTO sessiond_sessions")

    evicted = storage.create_session(record)

    assert evicted == []
    assert proxy.count("INSERT INTO sessiond_sessions") == 2, (
        "the INSERT was not retried"
    )
    assert len(stored_row(mysql_url, record.session_handle)) == 1


def test_create_on_closed_connections(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    storage.ping()
    proxy.close_connections()
    record = make_session()

    storage.create_session(record)

    assert len(stored_row(mysql_url, record.session_handle)) == 1


def test_update_on_closed_connections_applies_once(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    record = make_session()
    storage.create_session(record)
    proxy.close_connections()

    version = storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    assert version == 2
    assert stored_row(mysql_url, record.session_handle)[0][:2] == ('{"n":1}', 2)


def test_lost_before_first_statement_retried(
    storage: Storage,
    proxy: Proxy,
    mysql_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = make_session()
    storage.create_session(record)
    proxy.drop_before = lambda query: query.startswith("BEGIN; SELECT")

    with caplog.at_level(logging.WARNING, logger="sessiond_server.storage.mysql"):
        written = storage.rewrite_session_data(
            record.session_handle, lambda _old: '{"n":1}', NOW_MS
        )

    assert written == ('{"n":1}', 2)
    assert proxy.count("BEGIN; SELECT") == 2, "the transaction was not retried"
    assert stored_row(mysql_url, record.session_handle)[0][:2] == ('{"n":1}', 2)
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1, retries
    # The line names the error by number and description.
    assert re.search(r"error=MySQL error \d+: \S", retries[0]), retries[0]


def test_lost_one_query_transaction_not_retried(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    # The whole write, COMMIT included, is one query, so when the connection
    # drops during it the client cannot know whether the server ran it.
    record = make_session()
    storage.create_session(record)
    proxy.drop_before = lambda query: query.startswith("BEGIN; UPDATE")

    with pytest.raises(UnavailableError, match="may or may not"):
        storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    assert proxy.count("BEGIN; UPDATE") == 1, "the write was sent again"
    assert stored_row(mysql_url, record.session_handle)[0][:2] == ('{"n":0}', 1)


def test_commit_reply_lost_not_retried(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    record = make_session()
    storage.create_session(record)
    proxy.drop_after = lambda query: query.endswith("; COMMIT")

    with pytest.raises(UnavailableError, match="may or may not"):
        storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    assert proxy.count("BEGIN; UPDATE sessiond_sessions") == 1, (
        "the committed write ran again"
    )
    assert stored_row(mysql_url, record.session_handle)[0][:2] == ('{"n":1}', 2)


def test_refresh_lost_before_commit_stores_nothing(
    storage: Storage, proxy: Proxy, mysql_url: str
) -> None:
    record = make_session()
    storage.create_session(record)
    child = b"c" * 32
    proxy.drop_before = lambda query: "UPDATE sessiond_sessions" in query

    # The client cannot tell whether the query with the UPDATE and COMMIT
    # ran, so it does not retry. It never reached the server, so the parent
    # is still the stored token.
    with pytest.raises(UnavailableError, match="may or may not"):
        storage.rotate_refresh_token(
            record.session_handle,
            child,
            record.refresh_token_hash2,
            NOW_MS,
            NOW_MS + HOUR_MS,
            GRACE_MS,
        )

    assert (
        stored_row(mysql_url, record.session_handle)[0][2] == record.refresh_token_hash2
    )
    retried = storage.rotate_refresh_token(
        record.session_handle,
        child,
        record.refresh_token_hash2,
        NOW_MS,
        NOW_MS + HOUR_MS,
        GRACE_MS,
    )
    assert retried.outcome is Rotation.PROMOTED


def test_failed_statement_rolled_back_before_reuse(
    storage: Storage, mysql_url: str
) -> None:
    record = make_session()
    storage.create_session(record)

    def fail(_stored: str) -> str:
        raise ValueError("rewrite failed")

    with pytest.raises(ValueError, match="rewrite failed"):
        storage.rewrite_session_data(record.session_handle, fail, NOW_MS)

    # The pool's two connections are free again and hold no open
    # transaction: the row lock is gone, so another connection can write.
    with mysql_connect(mysql_url) as connection, connection.cursor() as cursor:
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cursor.execute(
            "UPDATE sessiond_sessions SET data_version = 7 WHERE session_handle = %s",
            (record.session_handle,),
        )
    assert stored_row(mysql_url, record.session_handle)[0][1] == 7


def test_duplicate_handle_still_rejected(storage: Storage) -> None:
    record = make_session()
    storage.create_session(record)

    with pytest.raises(pymysql.err.IntegrityError):
        storage.create_session(record)
