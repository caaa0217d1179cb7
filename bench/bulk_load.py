"""Bulk-load session rows shaped like the daemon's straight into its MariaDB schema.

The rows have every column the daemon writes: a uuid4 handle, a user id out
of many, hashed refresh tokens, small JSON payloads and data, device details,
and times that make a chosen number of them expired. They go in as multi-row
INSERT statements with hex literals, one autocommit transaction per batch,
in primary key order, because random handles in random order split pages
all over the clustered index. In one trial on the 2-core development
machine with the compiled-in 128 MiB buffer pool, 1,000,000 rows took 272 s
in random order and 52 s in key order. The daemon's own creates still
insert at random places.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from floors import Column, read_columns

from sessiond_server.storage.base import NO_IDLE_DEADLINE_MS

BATCH_ROWS = 5000
# Users get this many sessions on average, drawn at random, so some users
# have one session and a few have ten or more.
SESSIONS_PER_USER = 4
USER_PREFIX = "growth-user-"
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
# Expired rows expired between one hour and this long ago.
MAX_EXPIRED_AGE_MS = 30 * DAY_MS
# A refreshed session was created up to this long before its last refresh.
MAX_SESSION_AGE_MS = 30 * DAY_MS

PAYLOADS = (b'{"role":"reader"}', b'{"role":"editor","team":"t-17"}', b"{}")
SESSION_DATA = (b"{}", b'{"cart":[]}', b'{"cart":["book","pen"],"theme":"dark"}')
USER_AGENTS = (
    b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15",
    b"okhttp/4.12.0",
    b"",
)
DEVICE_LABELS = (b"", b"laptop", b"phone")
# A load counts as written once this few pages of the buffer pool are dirty.
FLUSHED_DIRTY_PAGES = 100
FLUSH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LoadResult:
    rows: int
    expired: int
    elapsed_s: float
    # A user id with at least one live session among the loaded rows.
    live_user_id: str


def count_sessions(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM sessiond_sessions")
        return int(cursor.fetchone()[0])


def load_sessions(
    connection: Any,
    count: int,
    *,
    expired: int,
    users: int,
    validity_ms: int,
    seed: int,
) -> LoadResult:
    """Insert count session rows, expired of them past their expiry, over users user ids.

    connection is an autocommit PyMySQL connection to the daemon's database,
    whose migrations have run. validity_ms is the refresh token validity
    that sets the expiry of live rows. A second thread builds the next
    statement while this one waits for the server. Before it returns, the
    loaded pages are written to disk (flush_dirty_pages).
    """
    if not 0 <= expired <= count:
        raise ValueError(f"expired {expired} is out of range 0 to {count}")
    if users < 1:
        raise ValueError(f"users must be 1 or more, not {users}")
    with connection.cursor() as cursor:
        columns = read_columns(cursor)
    rows = _RowMaker(columns, users, validity_ms, int(time.time() * 1000), seed)
    expired_rows = set(rows.rng.sample(range(count), expired))
    statements: queue.Queue[str | None] = queue.Queue(maxsize=4)
    failure: list[BaseException] = []
    stop = threading.Event()

    def build() -> None:
        try:
            for statement in rows.statements(count, expired_rows):
                while not stop.is_set():
                    try:
                        statements.put(statement, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:
            failure.append(exc)
        statements.put(None)

    started = time.monotonic()
    builder = threading.Thread(target=build, name="bulk-load-builder", daemon=True)
    builder.start()
    try:
        with connection.cursor() as cursor:
            while (statement := statements.get()) is not None:
                cursor.execute(statement)
    finally:
        stop.set()
        builder.join()
    if failure:
        raise failure[0]
    if rows.live_user_id is None:
        raise ValueError("no live row was loaded, so there is no live user id")
    flush_dirty_pages(connection)
    return LoadResult(count, expired, time.monotonic() - started, rows.live_user_id)


def flush_dirty_pages(connection: Any) -> None:
    """Make InnoDB write its dirty pages now, so that measurements do not share the disk with the load.

    After 1,000,000 rows about 40 % of the 128 MiB buffer pool stayed dirty
    on an idle server, because InnoDB writes pages in the background only
    past innodb_max_dirty_pages_pct (90 by default). Setting it to 0 for a
    moment wrote them in under a second. The setting is global, so this
    suits only a server that the bench started.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
        saved = cursor.fetchone()[0]
        cursor.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        try:
            deadline = time.monotonic() + FLUSH_TIMEOUT_S
            while (dirty := _dirty_pages(cursor)) > FLUSHED_DIRTY_PAGES:
                if time.monotonic() > deadline:
                    print(
                        f"warning: {dirty} buffer pool pages were still dirty "
                        f"{FLUSH_TIMEOUT_S:.0f} s after the load",
                        flush=True,
                    )
                    break
                time.sleep(0.2)
        finally:
            cursor.execute("SET GLOBAL innodb_max_dirty_pages_pct = %s", (saved,))


def _dirty_pages(cursor: Any) -> int:
    cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
    return int(cursor.fetchone()[1])


class _RowMaker:
    """SQL text of random session rows for the columns found in the table."""

    def __init__(
        self,
        columns: list[Column],
        users: int,
        validity_ms: int,
        now_ms: int,
        seed: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.live_user_id: str | None = None
        self._users = users
        self._validity_ms = validity_ms
        self._now_ms = now_ms
        names = [column.name for column in columns]
        missing = set(_GENERATED) - set(names)
        if missing:
            raise RuntimeError(
                f"sessiond_sessions has no column {', '.join(sorted(missing))}; "
                "update bench/bulk_load.py for the new schema"
            )
        # Columns added by later migrations get the fixed value floors.py
        # gives a fresh row, as a SQL literal.
        self._fixed = {
            column.name: _literal(column.value("", now_ms))
            for column in columns
            if column.name not in _GENERATED
        }
        self._insert = f"INSERT INTO sessiond_sessions ({', '.join(names)}) VALUES "
        # str.format fields that look up each column in the dict of values.
        self._template = "(" + ",".join("{0[" + name + "]}" for name in names) + ")"

    def statements(self, count: int, expired_rows: set[int]) -> Iterator[str]:
        handles = self._sorted_handles(count)
        for start in range(0, count, BATCH_ROWS):
            values = [
                self._row(handles[index], index in expired_rows)
                for index in range(start, min(count, start + BATCH_ROWS))
            ]
            yield self._insert + ",".join(values)

    def _sorted_handles(self, count: int) -> list[str]:
        handles = [
            uuid.UUID(int=self.rng.getrandbits(128), version=4) for _ in range(count)
        ]
        # The text form of a UUID sorts as its number does under the handle
        # column's ascii_bin collation.
        handles.sort(key=lambda handle: handle.int)
        return [str(handle) for handle in handles]

    def _row(self, handle: str, expired: bool) -> str:
        rng = self.rng
        if expired:
            age = rng.randrange(HOUR_MS, MAX_EXPIRED_AGE_MS)
            last_refreshed = self._now_ms - self._validity_ms - age
        else:
            # Live rows stay live for at least an hour after the load.
            last_refreshed = self._now_ms - rng.randrange(self._validity_ms - HOUR_MS)
        refreshed = rng.random() < 0.5
        created = last_refreshed - (
            rng.randrange(MAX_SESSION_AGE_MS) if refreshed else 0
        )
        user_id = f"{USER_PREFIX}{rng.randrange(self._users)}"
        if not expired and self.live_user_id is None:
            self.live_user_id = user_id
        values = {
            "session_handle": f"'{handle}'",
            "user_id": _hex(user_id.encode("ascii")),
            "refresh_token_hash2": _hex(rng.randbytes(32)),
            "previous_refresh_token_hash2": (
                _hex(rng.randbytes(32)) if refreshed else "NULL"
            ),
            "refresh_token_changed_at_ms": str(last_refreshed),
            "access_token_payload": _hex(rng.choice(PAYLOADS)),
            "session_data": _hex(rng.choice(SESSION_DATA)),
            "data_version": str(rng.randrange(2, 20) if refreshed else 1),
            "created_at_ms": str(created),
            "expires_at_ms": str(last_refreshed + self._validity_ms),
            "last_refreshed_at_ms": str(last_refreshed),
            # The daemon's default: no idle timeout.
            "idle_expires_at_ms": str(NO_IDLE_DEADLINE_MS),
            "device_user_agent": _hex(rng.choice(USER_AGENTS)),
            "device_ip_address": _hex(
                f"192.0.2.{rng.randrange(1, 255)}".encode("ascii")
            ),
            "device_label": _hex(rng.choice(DEVICE_LABELS)),
            **self._fixed,
        }
        return self._template.format(values)


_GENERATED = (
    "session_handle",
    "user_id",
    "refresh_token_hash2",
    "previous_refresh_token_hash2",
    "refresh_token_changed_at_ms",
    "access_token_payload",
    "session_data",
    "data_version",
    "created_at_ms",
    "expires_at_ms",
    "last_refreshed_at_ms",
    "idle_expires_at_ms",
    "device_user_agent",
    "device_ip_address",
    "device_label",
)


def _hex(value: bytes) -> str:
    # An empty X'' literal is a valid empty binary string in MariaDB.
    return f"X'{value.hex()}'"


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _hex(value.encode("utf-8"))
    return _hex(bytes(value))
