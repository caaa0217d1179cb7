"""The floors: an empty gRPC call and the bare SQL statements each operation needs.

The gRPC floor server runs in a child process (floor_server.py), as the
daemon runs in its own, with grpc_workers threads and the daemon's server
options. The SQL floors go through a DBUtils PooledDB built with the
daemon's pool settings and connect arguments (see storage/mysql.py) and run
the daemon's statements on a table made by the daemon's own migration.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pymysql
from dbutils.pooled_db import PooledDB
from floor_server import FLOOR_METHOD
from harness import Exhausted, Operation

from sessiond_server.config import Config
from sessiond_server.daemon import max_message_bytes
from sessiond_server.storage import open_storage
from sessiond_server.storage.mysql import connect_arguments

DAY_MS = 24 * 3600 * 1000
# Starting Python and importing grpc took 0.14 s on the 2-core development
# machine, so the limit leaves room for a heavily loaded machine.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def daemon_server_options(config: Config) -> list[tuple[str, Any]]:
    """Return the channel options that daemon.py passes to grpc.server."""
    limit = max_message_bytes(config)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


@contextlib.contextmanager
def floor_grpc_server(config: Config) -> Iterator[tuple[str, int]]:
    """Start floor_server.py in a child process and yield its loopback address and PID.

    The child has config.grpc_workers threads and the daemon's server
    options. On exit it closes the child's stdin, sends SIGTERM to the
    child's PID, and sends SIGKILL if the child has not exited within
    STOP_TIMEOUT_S.
    """
    command = [
        sys.executable,
        str(Path(__file__).with_name("floor_server.py")),
        "--workers",
        str(config.grpc_workers),
        "--options",
        json.dumps(daemon_server_options(config)),
    ]
    # stderr goes to the bench's stderr, so the child's errors show in the log.
    child = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = _read_port(child)
        yield f"127.0.0.1:{port}", child.pid
    finally:
        _end_child(child)


def _read_port(child: subprocess.Popen[str]) -> int:
    """Return the port number the floor server prints as its first line."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
    if not ready:
        raise RuntimeError(
            f"the floor server (PID {child.pid}) printed no port within "
            f"{START_TIMEOUT_S:g} s"
        )
    line = child.stdout.readline().strip()
    if line.isdigit():
        return int(line)
    if line:
        raise RuntimeError(
            f"the floor server (PID {child.pid}) printed {line!r} instead of a port number"
        )
    # End of file: the child has exited or is about to.
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=STOP_TIMEOUT_S)
    raise RuntimeError(
        f"the floor server (PID {child.pid}) exited without printing a port "
        f"(exit code {child.poll()}); its error output is above"
    )


def _end_child(child: subprocess.Popen[str]) -> None:
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


def empty_call(channel: grpc.Channel) -> Operation:
    """Return a call of the floor method with an empty request, under the SDK's 10 s deadline."""
    # No serializers: the request and the response are raw bytes.
    stub = channel.unary_unary(
        FLOOR_METHOD, request_serializer=None, response_deserializer=None
    )

    def call() -> object:
        return stub(b"", timeout=10.0)

    return call


class SqlFloor:
    """PyMySQL statements through a PooledDB set up as the daemon sets up its own.

    A semaphore guards checkout, as in MysqlStorage, because the pool is
    non-blocking and more threads than db_pool_size may share it.
    """

    def __init__(self, url: str, config: Config) -> None:
        # The daemon's migrations create the table, so the floors run on the
        # same columns, keys and row format as the daemon's statements.
        storage = open_storage(url, pool_size=1, timeout_s=config.db_timeout_s)
        try:
            storage.migrate(int(time.time() * 1000))
        finally:
            storage.close()
        self._timeout_s = config.db_timeout_s
        self._slots = threading.BoundedSemaphore(config.db_pool_size)
        # The same keyword arguments as MysqlStorage.__init__. isfatal is
        # left out: it only decides what happens after a lost connection.
        self._pool = PooledDB(
            creator=pymysql,
            maxconnections=config.db_pool_size,
            maxcached=config.db_pool_size,
            blocking=False,
            reset=False,
            ping=0,
            **connect_arguments(url, config.db_timeout_s),
        )
        self._columns: list[Column] = self._run(read_columns)
        names = ", ".join(column.name for column in self._columns)
        marks = ", ".join("%s" for _ in self._columns)
        self._insert = f"INSERT INTO sessiond_sessions ({names}) VALUES ({marks})"
        self._select = (
            f"SELECT {names} FROM sessiond_sessions "
            "WHERE session_handle = %s AND expires_at_ms > %s"
        )

    def close(self) -> None:
        self._pool.close()

    def _run(self, statements: Callable[[Any], Any]) -> Any:
        """Run statements on a pooled connection in autocommit mode.

        Statements that open a transaction send BEGIN and COMMIT themselves,
        as the daemon does. When they raise, a ROLLBACK ends any transaction
        still open, so the connection goes back to the pool clean.
        """
        if not self._slots.acquire(timeout=self._timeout_s):
            raise RuntimeError("no pooled connection became free within the timeout")
        try:
            connection = self._pool.connection()
            try:
                cursor = connection.cursor()
                try:
                    return statements(cursor)
                except BaseException:
                    with contextlib.suppress(pymysql.err.MySQLError):
                        connection.rollback()
                    raise
                finally:
                    cursor.close()
            finally:
                connection.close()
        finally:
            self._slots.release()

    def _row(self, handle: str) -> tuple[Any, ...]:
        """Return a live row shaped like one the daemon inserts at create."""
        now_ms = int(time.time() * 1000)
        return tuple(column.value(handle, now_ms) for column in self._columns)

    def insert_rows(self, count: int) -> list[str]:
        """Insert count live rows in batches of 1000; return their handles."""
        handles = [str(uuid.uuid4()) for _ in range(count)]
        rows = [self._row(handle) for handle in handles]

        def insert(cursor: Any) -> None:
            cursor.execute("BEGIN")
            for start in range(0, len(rows), 1000):
                cursor.executemany(self._insert, rows[start : start + 1000])
            cursor.execute("COMMIT")

        self._run(insert)
        return handles

    # Each method below is one worker's setup for harness.measure. Every
    # worker gets rows of its own, as each SDK worker has its own session.

    def insert(self, index: int) -> Operation:
        def call() -> None:
            row = self._row(str(uuid.uuid4()))
            self._run(lambda cursor: cursor.execute(self._insert, row))

        return call

    def select_by_key(self, index: int) -> Operation:
        handle = self.insert_rows(1)[0]

        def statements(cursor: Any) -> Any:
            cursor.execute(self._select, (handle, int(time.time() * 1000)))
            row = cursor.fetchone()
            if row is None:
                raise RuntimeError(f"floor row {handle} not found")
            return row

        return lambda: self._run(statements)

    def update_by_key(self, index: int) -> Operation:
        handle = self.insert_rows(1)[0]
        data = b'{"cart":["book"]}'

        def statements(cursor: Any) -> None:
            cursor.execute(_UPDATE_DATA, (data, handle))

        return lambda: self._run(statements)

    def locked_update(self, index: int) -> Operation:
        """SELECT ... FOR UPDATE, then one UPDATE, in a transaction: what a rotation needs.

        Two round trips, as in the daemon's _TransactionCursor: BEGIN goes in
        the COM_QUERY of the SELECT and COMMIT in that of the UPDATE, which
        the connect arguments' CLIENT.MULTI_STATEMENTS flag allows.
        """
        handle = self.insert_rows(1)[0]
        lock = "BEGIN; " + self._select + " FOR UPDATE"
        update = _UPDATE_ROTATION + "; COMMIT"

        def statements(cursor: Any) -> None:
            now = int(time.time() * 1000)
            # DBUtils must not run these again on a new connection after a
            # lost connection, where they would run outside the transaction.
            with cursor.no_failover():
                cursor.execute(lock, (handle, now))
                # execute reads only BEGIN's result, and nextset reads the
                # SELECT's. The server stops at the first failing statement,
                # and PyMySQL raises that error when it reads its result.
                cursor.nextset()
                if cursor.fetchone() is None:
                    raise RuntimeError(f"floor row {handle} not found")
                cursor.execute(
                    update,
                    (secrets.token_bytes(32), now, now + 100 * DAY_MS, handle),
                )
                # Read COMMIT's result, so the next query finds the
                # connection in sync and a failed COMMIT raises here.
                cursor.nextset()

        return lambda: self._run(statements)

    def delete_by_key(self, handles: list[str]) -> Callable[[int], Operation]:
        """Return a setup whose calls delete the given rows, one each, until none is left."""
        lock = threading.Lock()

        def setup(index: int) -> Operation:
            def call() -> None:
                with lock:
                    if not handles:
                        raise Exhausted
                    handle = handles.pop()
                self._run(lambda cursor: cursor.execute(_DELETE, (handle,)))

            return call

        return setup


@dataclass(frozen=True)
class Column:
    """A column of sessiond_sessions, as information_schema describes it."""

    name: str
    data_type: str
    nullable: bool

    def value(self, handle: str, now_ms: int) -> Any:
        """Return the value a fresh session row has in this column."""
        if self.name in _KNOWN_VALUES:
            return _KNOWN_VALUES[self.name](handle)
        if self.nullable:
            return None
        if "int" in self.data_type:
            # Columns the daemon adds later are times in ms: expiries lie
            # ahead, everything else is now.
            return now_ms + 100 * DAY_MS if "expires" in self.name else now_ms
        if "char" in self.data_type:
            return ""
        return b""


_KNOWN_VALUES: dict[str, Callable[[str], Any]] = {
    "session_handle": lambda handle: handle,
    "user_id": lambda handle: b"bench-user",
    "refresh_token_hash2": lambda handle: secrets.token_bytes(32),
    "access_token_payload": lambda handle: b'{"role":"reader"}',
    "session_data": lambda handle: b'{"cart":[]}',
    "data_version": lambda handle: 1,
}


def read_columns(cursor: Any) -> list[Column]:
    cursor.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sessiond_sessions' "
        "ORDER BY ORDINAL_POSITION"
    )
    columns = [
        Column(str(name), str(data_type).lower(), nullable == "YES")
        for name, data_type, nullable in cursor.fetchall()
    ]
    if not columns:
        raise RuntimeError("the daemon's migration created no sessiond_sessions table")
    return columns


_UPDATE_DATA = (
    "UPDATE sessiond_sessions SET session_data = %s, data_version = data_version + 1 "
    "WHERE session_handle = %s"
)
_UPDATE_ROTATION = (
    "UPDATE sessiond_sessions SET previous_refresh_token_hash2 = refresh_token_hash2, "
    "refresh_token_hash2 = %s, refresh_token_changed_at_ms = %s, expires_at_ms = %s "
    "WHERE session_handle = %s"
)
_DELETE = "DELETE FROM sessiond_sessions WHERE session_handle = %s"
