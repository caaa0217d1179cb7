"""MySQL and MariaDB storage through PyMySQL and a DBUtils PooledDB pool.

Pool settings, and why:
- ping=0: no COM_PING on each checkout, which would double the round trips
  of a primary-key read. A dead connection is found by the statement that
  uses it instead: for a read DBUtils reconnects and runs the statement
  again; for a write this module retries the whole transaction.
- reset=False: no ROLLBACK on each return to the pool, because every
  transaction here ends in an explicit COMMIT or ROLLBACK.
- A semaphore with a timeout guards checkout, because PooledDB blocks
  forever when every connection is in use.

Round trips: each statement costs one, and PyMySQL's begin() and commit()
cost one each. So a write transaction sends BEGIN in the same COM_QUERY as
its first statement, and COMMIT in the same COM_QUERY as the statement the
storage code runs through _execute_and_commit (or with the statements run
through _execute_all_and_commit, which share one COM_QUERY). A data update
is a whole transaction in one COM_QUERY. That needs the
CLIENT_MULTI_STATEMENTS flag. Every statement here is a constant string
whose values travel as PyMySQL parameters, which PyMySQL escapes, so no
value can add a statement. A create without a per-user session cap is one
INSERT in autocommit mode, which is atomic on its own.

Size: session data and the access token payload travel as str, which
PyMySQL escapes in place, and not as bytes, which it sends as a hex literal
of twice their size. The connection's character set is utf8mb4, so the
binary columns store the text's UTF-8 bytes. Each query is formatted here
and compared with the server's max_allowed_packet before it is sent.

Time: a call, with all its attempts, gets db_timeout_s in total. Every
attempt caps the socket timeouts of its connection, and of any connection
opened for it, to the time left, and no attempt starts once it is spent.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from dbutils.pooled_db import PooledDB
from pymysql.constants import CLIENT

from .. import metrics
from ..errors import InvalidArgumentError, UnavailableError
from .base import Cursor, StatementResult, Storage

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3
# Server error numbers after which the same transaction may simply run again.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
DUPLICATE_KEY = 1062
# ER_NET_PACKET_TOO_LARGE: a packet above the server's max_allowed_packet.
# The server rejects the packet before running anything in it.
PACKET_TOO_LARGE = 1153
# The documented minimum of max_allowed_packet in MySQL 8 and MariaDB 10.11,
# so a smaller query needs no check against the server's value.
MIN_MAX_ALLOWED_PACKET = 1024
# A connection or retry is not started with less time than this left.
MIN_ATTEMPT_S = 0.01
# A retry starts only with a lock wait plus this much of the budget left.
RETRY_MARGIN_S = 0.5
# Client and server error numbers meaning the connection is gone, so the
# server rolled back whatever the transaction had done.
CONNECTION_LOST = frozenset(
    {
        0,  # PyMySQL InterfaceError on an already closed connection
        1053,  # server shutdown in progress
        1927,  # MariaDB: connection was killed
        2003,  # cannot connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (system error)
        4031,  # MySQL 8: disconnected after wait_timeout
    }
)


def _error_number(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    return (
        isinstance(exc, pymysql.err.OperationalError)
        and _error_number(exc) in CONNECTION_LOST
    )


def _is_retryable(exc: BaseException) -> bool:
    if _is_connection_lost(exc):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and _error_number(exc) in (
        DEADLOCK,
        LOCK_WAIT_TIMEOUT,
    )


def lock_wait_timeout_s(timeout_s: float) -> int:
    """Return innodb_lock_wait_timeout for db_timeout_s: a quarter of it, at least 1 s.

    A lock wait then ends well inside the call's budget as a retryable
    error, rather than as a socket timeout, which during a query that
    carries COMMIT leaves the outcome unknown. A call has room for a retry.
    """
    return max(1, int(timeout_s // 4))


def connect_arguments(url: str, timeout_s: float) -> dict[str, Any]:
    """Turn mysql://user:password@host:port/database?unix_socket=PATH into PyMySQL arguments."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    # PyMySQL takes fractional seconds, but innodb_lock_wait_timeout takes
    # whole seconds.
    lock_wait_s = lock_wait_timeout_s(timeout_s)
    arguments: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": parts.path.lstrip("/"),
        "charset": "utf8mb4",
        "autocommit": True,
        # Report matched rows, not changed rows, from UPDATE. Allow several
        # statements in one COM_QUERY (see the module docstring).
        "client_flag": CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS,
        "connect_timeout": timeout_s,
        "read_timeout": timeout_s,
        "write_timeout": timeout_s,
        # Strict mode on the session whatever the server default is, so a
        # value that does not fit is an error and never silently cut. Lock
        # waits end before the read timeout, so they surface as a retryable
        # lock wait timeout and not as a lost connection.
        "init_command": (
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
            f"SESSION innodb_lock_wait_timeout = {lock_wait_s}"
        ),
    }
    if "unix_socket" in query:
        arguments["unix_socket"] = query["unix_socket"][0]
    return arguments


class MysqlStorage(Storage):
    dialect = "mysql"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int, timeout_s: float) -> None:
        self._arguments = connect_arguments(url, timeout_s)
        self._timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool_size = pool_size
        self._in_use = 0
        self._count_lock = threading.Lock()
        # The server's max_allowed_packet in bytes, read on first need.
        self._max_allowed_packet: int | None = None
        # Per thread: the monotonic deadline of the running call, and the
        # size and text fields of the last query it sent.
        self._call = threading.local()
        self._pool = PooledDB(
            creator=self._connect,
            maxconnections=pool_size,
            maxcached=pool_size,
            blocking=False,
            reset=False,
            ping=0,
            isfatal=_is_connection_lost,
            **self._arguments,
        )

    def _time_left(self) -> float:
        """Return the seconds left of the running call's db_timeout_s budget."""
        deadline: float | None = getattr(self._call, "deadline", None)
        if deadline is None:
            return self._timeout_s
        return min(self._timeout_s, deadline - time.monotonic())

    def _connect(self, **arguments: Any) -> Any:
        """Open a PyMySQL connection whose timeouts end with the running call's budget.

        DBUtils calls this for the pool, and again when it reconnects.
        """
        left = self._time_left()
        if left < MIN_ATTEMPT_S:
            raise pymysql.err.OperationalError(
                2003, f"no time left of db_timeout_s = {self._timeout_s:g} s to connect"
            )
        for name in ("connect_timeout", "read_timeout", "write_timeout"):
            arguments[name] = left
        return pymysql.connect(**arguments)

    def _cap_timeouts(self, connection: Any) -> None:
        """Cap the read and write timeouts of a PyMySQL connection to the time left.

        PyMySQL applies _read_timeout and _write_timeout to the socket before
        each read and write, so changing them affects the next statement.
        """
        left = max(MIN_ATTEMPT_S, self._time_left())
        connection._read_timeout = left
        connection._write_timeout = left

    def _format_query(self, cursor: Any, sql: str, params: Sequence[Any]) -> str:
        """Return the query that sends sql with params, after checking its size.

        cursor is a PyMySQL cursor, or a DBUtils cursor that passes mogrify
        and connection through to one.

        Raises:
            InvalidArgumentError: the query is above the server's
                max_allowed_packet, so the server would reject it.
        """
        texts = [value for value in params if isinstance(value, _FieldText)]
        values = tuple(
            value.text if isinstance(value, _FieldText) else value for value in params
        )
        query: str = cursor.mogrify(sql, values if values else None)
        connection = cursor.connection
        self._cap_timeouts(connection)
        size = _utf8_size(query)
        # The packet is the COM_QUERY command byte and the query.
        if size + 1 > MIN_MAX_ALLOWED_PACKET:
            limit = self._server_max_allowed_packet(connection)
            if size + 1 > limit:
                raise _packet_too_large(texts, size, limit)
        self._call.sent = (size, texts)
        return query

    def _server_max_allowed_packet(self, connection: Any) -> int:
        """Return the server's max_allowed_packet, read once per storage."""
        if self._max_allowed_packet is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@max_allowed_packet")
                self._max_allowed_packet = int(cursor.fetchone()[0])
        return self._max_allowed_packet

    def _rejected_as_too_large(self, exc: BaseException) -> InvalidArgumentError | None:
        """Return the error to raise when exc means the last query was above max_allowed_packet.

        MariaDB 10.11 rejects a packet above max_allowed_packet with error
        1153, or resets the connection before the client has sent all of it. The
        second case looks like a lost connection, so after one the limit is
        read again on a new connection and compared with the query's size.
        Either way the server ran nothing of that query.
        """
        sent: tuple[int, list[_FieldText]] | None = getattr(self._call, "sent", None)
        if sent is None:
            return None
        size, texts = sent
        if _error_number(exc) == PACKET_TOO_LARGE:
            return _packet_too_large(texts, size, self._reread_max_allowed_packet())
        if (
            size + 1 <= MIN_MAX_ALLOWED_PACKET
            or not _is_connection_lost(exc)
            or _is_timeout(exc)
        ):
            return None
        limit = self._reread_max_allowed_packet()
        if limit is None or size + 1 <= limit:
            return None
        return _packet_too_large(texts, size, limit)

    def _reread_max_allowed_packet(self) -> int | None:
        """Read the server's max_allowed_packet again on a new connection, or return None."""
        self._max_allowed_packet = None
        if self._time_left() < MIN_ATTEMPT_S:
            return None
        try:
            connection = self._connect(**self._arguments)
        except pymysql.err.MySQLError:
            return None
        try:
            return self._server_max_allowed_packet(connection)
        except pymysql.err.MySQLError:
            return None
        finally:
            connection.close()

    def _text_parameter(self, field: str, text: str) -> Any:
        return _FieldText(field, text)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=max(0.0, self._time_left())):
            metrics.DATABASE_ERRORS.labels("pool_timeout").inc()
            raise UnavailableError(
                f"no database connection became free within {self._timeout_s} s; "
                "raise db_pool_size or lower the load"
            )
        with self._count_lock:
            self._in_use += 1
        try:
            connection = self._pool.connection()
            try:
                yield connection
            finally:
                connection.close()
        finally:
            with self._count_lock:
                self._in_use -= 1
            self._slots.release()

    def _connection_failure(self) -> str | None:
        """Return why a new connection fails, or None when one opens.

        DBUtils hides the error of its reconnect attempts, so after the last
        retry a direct connection finds the cause, such as a locked account.
        """
        try:
            self._connect(**self._arguments).close()
        except pymysql.err.MySQLError as exc:
            return f"cannot connect: {_describe(exc)}; check the server and the account"
        return None

    def pool_stats(self) -> tuple[int, int]:
        return self._in_use, self._pool_size

    def _run(self, work: Callable[[Cursor], T], *, transaction: bool) -> T:
        # _insert_new_row runs inside no other call, so one deadline per
        # thread is enough.
        self._call.deadline = time.monotonic() + self._timeout_s
        try:
            return self._attempts(work, transaction=transaction)
        finally:
            self._call.deadline = None
            self._call.sent = None

    def _attempts(self, work: Callable[[Cursor], T], *, transaction: bool) -> T:
        last_error: BaseException | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if self._time_left() < MIN_ATTEMPT_S:
                raise self._timed_out(last_error) from last_error
            statements: _TransactionCursor | None = None
            self._call.sent = None
            try:
                with self._connection() as connection:
                    if attempt > 1 or (transaction and _closed_by_server(connection)):
                        self._replace_if_dead(connection)
                    cursor = connection.cursor()
                    try:
                        if not transaction:
                            # No failover by DBUtils: its extra attempts
                            # would each wait a full timeout, and this loop
                            # retries within the call's budget instead.
                            with cursor.no_failover():
                                return work(cursor)
                        statements = _TransactionCursor(cursor, self._format_query)
                        result = work(statements)
                        if statements.begun and not statements.committed:
                            statements.committing = True
                            self._cap_timeouts(_pymysql_connection(connection))
                            connection.commit()
                        return result
                    except BaseException as exc:
                        # After a failed statement or COMMIT the transaction
                        # may still be open. After a lost connection the
                        # server has rolled it back, unless COMMIT was sent.
                        if statements is not None and statements.begun:
                            if not (statements.committing and _is_connection_lost(exc)):
                                _rollback(connection)
                        raise
                    finally:
                        with contextlib.suppress(Exception):
                            cursor.close()
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                last_error = exc
                metrics.DATABASE_ERRORS.labels(_error_kind(exc)).inc()
                too_large = self._rejected_as_too_large(exc)
                if too_large is not None:
                    raise too_large from exc
                committing = statements is not None and statements.committing
                if committing and _is_connection_lost(exc):
                    cause = (
                        f"the database did not respond to COMMIT within db_timeout_s = "
                        f"{self._timeout_s:g} s"
                        if _is_timeout(exc)
                        else "database connection lost during COMMIT"
                    )
                    raise UnavailableError(
                        f"{cause}; the write may or may not have been applied"
                    ) from exc
                if not _is_retryable(exc):
                    # Access denied, a locked account, a missing grant or
                    # database: the server works but refuses this daemon.
                    raise UnavailableError(
                        f"database call failed: {_describe(exc)}; "
                        "check the database account and its grants"
                    ) from exc
                if attempt == MAX_ATTEMPTS:
                    raise UnavailableError(
                        f"database call failed after {MAX_ATTEMPTS} attempts: "
                        f"{self._connection_failure() or _describe(exc)}"
                    ) from exc
                # A retry may wait for a row lock as long as the first
                # attempt did, so it starts only with that much time left.
                if (
                    self._time_left()
                    < lock_wait_timeout_s(self._timeout_s) + RETRY_MARGIN_S
                ):
                    raise self._timed_out(exc) from exc
                metrics.DATABASE_RETRIES.inc()
                logger.warning(
                    "database call failed, retrying attempt=%d error=%s",
                    attempt,
                    _describe(exc),
                )
                time.sleep(random.uniform(0.005, 0.02) * attempt)
        raise AssertionError("unreachable")

    def _timed_out(self, exc: BaseException | None) -> UnavailableError:
        detail = f"; last error: {_describe(exc)}" if exc is not None else ""
        return UnavailableError(
            f"the database did not respond within db_timeout_s = {self._timeout_s:g} s"
            f"{detail}; check that the server is up and not overloaded"
        )

    def _replace_if_dead(self, connection: Any) -> None:
        """Reconnect a pooled connection that the server has closed.

        The pool may hold several such connections (after wait_timeout, KILL
        or a restart), so a retry checks the one it got. A failed ROLLBACK
        makes DBUtils open a new connection in place of the dead one, through
        _connect, so within the call's budget.
        """
        raw = _pymysql_connection(connection)
        if raw is not None:
            self._cap_timeouts(raw)
        try:
            connection.ping()
        except pymysql.err.MySQLError:
            _rollback(connection)

    def _read(self, work: Callable[[Cursor], T]) -> T:
        return self._run(work, transaction=False)

    def _write(self, work: Callable[[Cursor], T]) -> T:
        return self._run(work, transaction=True)

    def _execute(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        if isinstance(cursor, _TransactionCursor):
            cursor.execute(sql.replace("?", "%s"), params)
        else:
            cursor.execute(self._format_query(cursor, sql.replace("?", "%s"), params))

    def _execute_and_commit(
        self, cursor: Cursor, sql: str, params: Sequence[Any] = ()
    ) -> None:
        cast(_TransactionCursor, cursor).execute(
            sql.replace("?", "%s"), params, commit=True
        )

    def _execute_all_and_commit(
        self, cursor: Cursor, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[StatementResult]:
        return cast(_TransactionCursor, cursor).execute_all(
            [(sql.replace("?", "%s"), params) for sql, params in statements],
            commit=True,
        )

    def _insert_new_row(self, sql: str, params: Sequence[Any]) -> None:
        # One statement in autocommit mode. When a connection is lost while
        # the INSERT runs, the server may have committed it, so the INSERT
        # runs again on another connection. If it then finds its own
        # primary key, the earlier attempt committed it. No other writer
        # can insert that key, because the caller chose it at random.
        attempts = 0

        def work(cursor: Cursor) -> None:
            nonlocal attempts
            attempts += 1
            try:
                # DBUtils would otherwise rerun the INSERT itself after a
                # lost connection, and raise the duplicate key error.
                with cursor.no_failover():
                    self._execute(cursor, sql, params)
            except pymysql.err.IntegrityError as exc:
                if attempts > 1 and _is_duplicate_primary_key(exc):
                    return
                raise

        self._run(work, transaction=False)

    def _insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        marks = ", ".join("?" for _ in columns)
        return f"INSERT IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})"

    def _delete_first_rows(
        self,
        table: str,
        key: str,
        order: str,
        condition: str,
        params: Sequence[Any],
        limit: int,
    ) -> tuple[str, list[Any]]:
        # A derived table takes the batch's keys from the index of the ORDER
        # BY, and the DELETE finds each row by primary key and checks
        # condition again under the row lock. MariaDB 10.11 takes no index
        # hint in a single-table DELETE, and for DELETE ... ORDER BY ...
        # LIMIT its optimizer sometimes chose a full scan and a sort when
        # most rows matched, which locks every row of the table. LIMIT is
        # allowed in a derived table, but not in an IN subquery (error 1235).
        # A short batch also locks the index entry after the range, and the
        # gap before it, until COMMIT.
        # NOTE: each batch reads the index from the start of the range, so it
        # also reads and locks the entries of deleted rows that InnoDB has
        # not purged yet. While a long transaction blocks the purge, batches
        # slow down as the job goes on: about 8 ms more per batch of 100
        # after 100,000 deleted rows, on MariaDB 10.11 on a 2-core machine.
        return (
            f"DELETE target FROM (SELECT {key} FROM {table} WHERE {condition} "
            f"ORDER BY {order} LIMIT ?) AS batch STRAIGHT_JOIN {table} AS target "
            f"ON target.{key} = batch.{key} WHERE {condition}",
            [*params, limit, *params],
        )

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        # A named lock on a connection of its own, outside the pool, so
        # that daemons starting together apply each migration once.
        try:
            connection = pymysql.connect(**self._arguments)
        except pymysql.err.MySQLError as exc:
            raise UnavailableError(f"cannot connect to MySQL: {exc.args[-1]}") from exc
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT GET_LOCK('sessiond_migrate', %s)", (60,))
                if cursor.fetchone()[0] != 1:
                    raise UnavailableError(
                        "timed out after 60 s waiting for another daemon's migration"
                    )
            yield
        finally:
            connection.close()

    def close(self) -> None:
        self._pool.close()


class _TransactionCursor:
    """The cursor of one write transaction, which sends BEGIN and COMMIT with statements.

    BEGIN goes in the COM_QUERY of the first statement, and COMMIT in that of
    a statement run with commit=True, which must be the last one. DBUtils
    must never run these statements again on a new connection after a lost
    connection, because there they would run outside the transaction.
    """

    def __init__(
        self, cursor: Any, format_query: Callable[[Any, str, Sequence[Any]], str]
    ) -> None:
        self._cursor = cursor
        self._format_query = format_query
        # BEGIN was sent, so a transaction may be open.
        self.begun = False
        # COMMIT was sent, so after a lost connection its outcome is unknown.
        self.committing = False
        self.committed = False
        # The statement's own result, kept because reading COMMIT's result
        # replaces the cursor's.
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: Sequence[Any] = ()
        self._next_row = 0

    def execute(
        self, sql: str, args: Sequence[Any] | None, *, commit: bool = False
    ) -> None:
        self.execute_all([(sql, args or ())], commit=commit)

    def execute_all(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False
    ) -> list[StatementResult]:
        """Send statements (``%s`` placeholders) in one COM_QUERY; return each one's result."""
        if self.committing:
            raise RuntimeError("a statement came after the COMMIT of its transaction")
        parts = [sql for sql, _args in statements]
        args = [value for _sql, values in statements for value in values]
        with_begin = not self.begun
        if with_begin:
            parts.insert(0, "BEGIN")
        if commit:
            parts.append("COMMIT")
        # Formatting checks the size, and raises before anything is sent.
        query = self._format_query(self._cursor, "; ".join(parts), args)
        if commit:
            self.committing = True
        self.begun = True
        try:
            with self._cursor.no_failover():
                self._cursor.execute(query)
        except pymysql.err.InterfaceError:
            # PyMySQL raises InterfaceError for a connection it had already
            # closed, before it sends anything, so COMMIT was not sent.
            self.committing = False
            raise
        # The server runs the statements in order and stops at the first
        # error, which PyMySQL raises when it reads that statement's result.
        if with_begin:
            self._cursor.nextset()
        results = []
        for index in range(len(statements)):
            if index:
                self._cursor.nextset()
            results.append(
                StatementResult(self._cursor.rowcount, tuple(self._cursor.fetchall()))
            )
        self._rows = results[-1].rows
        self._next_row = 0
        self.rowcount = results[-1].rowcount
        self.lastrowid = self._cursor.lastrowid
        if commit:
            self._cursor.nextset()
            self.committed = True
        return results

    def fetchone(self) -> Any:
        if self._next_row >= len(self._rows):
            return None
        self._next_row += 1
        return self._rows[self._next_row - 1]

    def fetchall(self) -> Sequence[Any]:
        rows = self._rows[self._next_row :]
        self._next_row = len(self._rows)
        return rows


def _is_duplicate_primary_key(exc: pymysql.err.IntegrityError) -> bool:
    # MariaDB and MySQL name the key in the message: "... for key 'PRIMARY'"
    # (MySQL 8 writes 'table.PRIMARY').
    return _error_number(exc) == DUPLICATE_KEY and "PRIMARY'" in str(exc.args[-1])


@dataclass(frozen=True)
class _FieldText:
    """Text for a binary column, and the request field it came from."""

    field: str
    text: str


def _utf8_size(text: str) -> int:
    # PyMySQL encodes queries as UTF-8 with surrogateescape.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _packet_too_large(
    texts: Sequence[_FieldText], size: int, limit: int | None
) -> InvalidArgumentError:
    """Build the error for a query above the server's max_allowed_packet.

    The error names the largest text field of the query, which is what made
    it large. limit is None when the server rejected the query without
    saying its limit.
    """
    field = max(texts, key=lambda text: len(text.text)).field if texts else "request"
    setting = f"max_{field}_bytes" if texts else "the size of the request"
    server_limit = (
        f"above the server's max_allowed_packet of {limit} bytes"
        if limit is not None
        else "above the server's max_allowed_packet"
    )
    return InvalidArgumentError(
        field,
        f"the MySQL query that stores it would be {size + 1} bytes, {server_limit}, "
        f"so nothing was written; raise max_allowed_packet on the MySQL server "
        f"or lower {setting}",
    )


def _is_timeout(exc: BaseException) -> bool:
    """Return whether exc is a socket timeout, which PyMySQL reports as a lost connection."""
    # PyMySQL writes the socket error into the message, for example "Lost
    # connection to MySQL server during query (timed out)".
    message = str(exc.args[-1]) if exc.args else ""
    return _is_connection_lost(exc) and "timed out" in message


def _pymysql_connection(connection: Any) -> Any:
    """Return the PyMySQL connection inside a pooled DBUtils connection, or None."""
    # PooledDB's wrapper wraps a SteadyDB connection, which wraps PyMySQL's.
    return getattr(getattr(connection, "_con", None), "_con", None)


def _describe(exc: BaseException) -> str:
    message = exc.args[-1] if exc.args else ""
    return f"MySQL error {_error_number(exc)}: {message or type(exc).__name__}"


def _closed_by_server(connection: Any) -> bool:
    """Return whether the server has closed a pooled connection, without a round trip.

    A write transaction may send COMMIT in its first COM_QUERY, and a
    connection lost during that query leaves the outcome unknown, so it
    cannot be retried. A connection the server closed while it sat in the
    pool (wait_timeout, KILL, a restart) has the server's FIN or RST
    waiting, which makes its socket readable. A healthy idle connection
    has nothing to read. So this checks with a select() of zero timeout.
    """
    # PooledDB's wrapper wraps a SteadyDB connection, which wraps PyMySQL's.
    steady = getattr(connection, "_con", None)
    sock = getattr(getattr(steady, "_con", None), "_sock", None)
    if sock is None:
        return steady is not None
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _error_kind(exc: BaseException) -> str:
    if _is_connection_lost(exc):
        return "connection_lost"
    if _error_number(exc) == DEADLOCK:
        return "deadlock"
    if _error_number(exc) == LOCK_WAIT_TIMEOUT:
        return "lock_wait_timeout"
    return "other"


def _rollback(connection: Any) -> None:
    try:
        connection.rollback()
    except pymysql.err.MySQLError:
        logger.debug("rollback failed; the connection was replaced", exc_info=True)
