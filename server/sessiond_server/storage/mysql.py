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
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from dbutils.pooled_db import PooledDB
from pymysql.constants import CLIENT

from .. import metrics
from ..errors import UnavailableError
from .base import Cursor, StatementResult, Storage

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3
# Server error numbers after which the same transaction may simply run again.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
DUPLICATE_KEY = 1062
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


def connect_arguments(url: str, timeout_s: float) -> dict[str, Any]:
    """Turn mysql://user:password@host:port/database?unix_socket=PATH into PyMySQL arguments."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    timeout = max(1, round(timeout_s))
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
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "write_timeout": timeout,
        # Strict mode on the session whatever the server default is, so a
        # value that does not fit is an error and never silently cut. Lock
        # waits end before the read timeout, so they surface as a retryable
        # lock wait timeout and not as a lost connection.
        "init_command": (
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
            f"SESSION innodb_lock_wait_timeout = {max(1, timeout // 2)}"
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
        self._pool = PooledDB(
            creator=pymysql,
            maxconnections=pool_size,
            maxcached=pool_size,
            blocking=False,
            reset=False,
            ping=0,
            isfatal=_is_connection_lost,
            **self._arguments,
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._timeout_s):
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
            pymysql.connect(**self._arguments).close()
        except pymysql.err.MySQLError as exc:
            return f"cannot connect: {_describe(exc)}; check the server and the account"
        return None

    def pool_stats(self) -> tuple[int, int]:
        return self._in_use, self._pool_size

    def _run(self, work: Callable[[Cursor], T], *, transaction: bool) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            statements: _TransactionCursor | None = None
            try:
                with self._connection() as connection:
                    if attempt > 1 or (transaction and _closed_by_server(connection)):
                        _replace_if_dead(connection)
                    cursor = connection.cursor()
                    try:
                        if not transaction:
                            return work(cursor)
                        statements = _TransactionCursor(cursor)
                        result = work(statements)
                        if statements.begun and not statements.committed:
                            statements.committing = True
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
                metrics.DATABASE_ERRORS.labels(_error_kind(exc)).inc()
                committing = statements is not None and statements.committing
                if committing and _is_connection_lost(exc):
                    raise UnavailableError(
                        "database connection lost during COMMIT; the write may or may not "
                        "have been applied"
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
                metrics.DATABASE_RETRIES.inc()
                logger.warning(
                    "database call failed, retrying attempt=%d error=%s message=%s",
                    attempt,
                    _error_number(exc),
                    exc.args[-1] if exc.args else type(exc).__name__,
                )
                time.sleep(random.uniform(0.005, 0.02) * attempt)
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Cursor], T]) -> T:
        return self._run(work, transaction=False)

    def _write(self, work: Callable[[Cursor], T]) -> T:
        return self._run(work, transaction=True)

    def _execute(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        cursor.execute(sql.replace("?", "%s"), tuple(params) if params else None)

    def _execute_and_commit(
        self, cursor: Cursor, sql: str, params: Sequence[Any] = ()
    ) -> None:
        cursor.execute(
            sql.replace("?", "%s"), tuple(params) if params else None, commit=True
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

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
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

    def execute(self, sql: str, args: Any, *, commit: bool = False) -> None:
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
            self.committing = True
        self.begun = True
        with self._cursor.no_failover():
            self._cursor.execute("; ".join(parts), tuple(args) if args else None)
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


def _replace_if_dead(connection: Any) -> None:
    """Reconnect a pooled connection that the server has closed.

    The pool may hold several such connections (after wait_timeout, KILL or a
    restart), so a retry checks the one it got. A failed ROLLBACK makes
    DBUtils open a new connection in place of the dead one.
    """
    try:
        connection.ping()
    except pymysql.err.MySQLError:
        _rollback(connection)


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
