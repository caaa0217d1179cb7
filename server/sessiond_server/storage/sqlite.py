"""SQLite storage, the embedded default (standard library sqlite3)."""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .. import metrics
from ..errors import UnavailableError
from .base import Cursor, Storage

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteStorage(Storage):
    """A fixed set of connections to one database file, in WAL mode.

    SQLite allows one writer at a time. Writers in this process queue on a
    Python lock before they take a connection, so a waiting writer is woken
    as soon as the previous one commits. SQLite's own busy handler instead
    sleeps in growing steps of up to 100 ms, which gave p99 write latencies
    of several hundred milliseconds at 16 client threads in bench/run.py on
    a 2-core machine. Each write transaction still takes the database lock
    at BEGIN IMMEDIATE, and the busy timeout (timeout_s) still applies, for
    other processes that write to the same file. In WAL mode a read does
    not wait for the writer.
    """

    dialect = "sqlite"

    def __init__(self, path: str, *, pool_size: int, timeout_s: float) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._migrating = threading.Lock()
        self._writing = threading.Lock()
        try:
            for _ in range(pool_size):
                connection = sqlite3.connect(
                    path,
                    timeout=timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                self._all.append(connection)
                self._idle.put(connection)
        except sqlite3.Error as exc:
            self.close()
            raise UnavailableError(
                f"cannot open SQLite database {path}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = self._idle.get(timeout=self._timeout_s)
        except queue.Empty:
            raise UnavailableError(
                f"no database connection became free within {self._timeout_s} s"
            ) from None
        try:
            yield connection
        finally:
            self._idle.put(connection)

    def _read(self, work: Callable[[Cursor], T]) -> T:
        with self._connection() as connection:
            cursor = connection.cursor()
            try:
                return work(cursor)
            except sqlite3.OperationalError as exc:
                metrics.DATABASE_ERRORS.labels("sqlite").inc()
                raise UnavailableError(f"SQLite read failed: {exc}") from exc
            finally:
                cursor.close()

    def _write(self, work: Callable[[Cursor], T]) -> T:
        # The lock comes before the connection, so queued writers hold no
        # connection that readers could use.
        if not self._writing.acquire(timeout=self._timeout_s):
            metrics.DATABASE_ERRORS.labels("sqlite").inc()
            raise UnavailableError(
                f"no SQLite write finished within {self._timeout_s} s; lower the write load"
            )
        try:
            return self._write_locked(work)
        finally:
            self._writing.release()

    def _write_locked(self, work: Callable[[Cursor], T]) -> T:
        with self._connection() as connection:
            cursor = connection.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                result = work(cursor)
                cursor.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                _rollback(connection)
                metrics.DATABASE_ERRORS.labels("sqlite").inc()
                raise UnavailableError(f"SQLite write failed: {exc}") from exc
            except BaseException:
                _rollback(connection)
                raise
            finally:
                cursor.close()

    def _execute(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        cursor.execute(sql, tuple(params))

    def _insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        marks = ", ".join("?" for _ in columns)
        return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})"

    def _delete_first_rows(
        self,
        table: str,
        key: str,
        order: str,
        condition: str,
        params: Sequence[Any],
        limit: int,
    ) -> tuple[str, list[Any]]:
        # DELETE ... LIMIT exists only in SQLite builds with
        # SQLITE_ENABLE_UPDATE_DELETE_LIMIT, so a subquery picks the rows.
        # The write transaction has the database's write lock, so no other
        # writer can change the rows between the subquery and the DELETE.
        return (
            f"DELETE FROM {table} WHERE {key} IN "
            f"(SELECT {key} FROM {table} WHERE {condition} ORDER BY {order} LIMIT ?)",
            [*params, limit],
        )

    def _migration_lock(self) -> Any:
        return self._migrating

    def pool_stats(self) -> tuple[int, int]:
        return len(self._all) - self._idle.qsize(), len(self._all)

    def close(self) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            logger.warning("sqlite rollback failed", exc_info=True)
