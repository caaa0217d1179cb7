"""The cleanup job: batched deletes of expired sessions and old revocation log rows.

Each test runs on SQLite and on MariaDB/MySQL through the conftest
``storage`` fixture, except the lock tests, which need MySQL row locks. The
storage tests use fixed millisecond times. The tests of Daemon._cleanup use
the wall clock, as the daemon does.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from sessiond_testing import mysql_connect

from sessiond_server import clock, metrics
from sessiond_server.daemon import CLEANUP_BATCH_SIZE, Daemon, delete_in_batches
from sessiond_server.keys import KeyManager
from sessiond_server.storage import Storage, open_storage

from .test_revocations import RETENTION_MS, insert_log_row
from .test_session_data import HOUR_MS, NOW_MS, add_session

# How long a test waits for the cleanup to block on a lock held by the test.
LOCK_WAIT_TIMEOUT_S = 5.0


def stored_handles(storage: Storage) -> set[str]:
    """Return the handle of every stored session, past its deadlines or not."""

    def work(cursor: Any) -> set[str]:
        storage._execute(cursor, "SELECT session_handle FROM sessiond_sessions")
        return {row[0] for row in cursor.fetchall()}

    return storage._read(work)


def logged_seqs(storage: Storage) -> list[int]:
    return [row.seq for row in storage.read_revocations(0, 0, 1000)]


def add_expired(storage: Storage, count: int, expires_at_ms: int = NOW_MS) -> list[str]:
    """Add count sessions past their expiry, the oldest first; return their handles."""
    return [
        add_session(storage, expires_at_ms=expires_at_ms - count + index).session_handle
        for index in range(count)
    ]


# -- delete_expired_sessions ------------------------------------------------


def test_cleanup_deletes_both_deadlines(storage: Storage) -> None:
    past_expiry = add_session(storage, expires_at_ms=NOW_MS)
    past_idle = add_session(storage, idle_expires_at_ms=NOW_MS)
    past_both = add_session(
        storage, expires_at_ms=NOW_MS - HOUR_MS, idle_expires_at_ms=NOW_MS - HOUR_MS
    )
    live = add_session(storage, expires_at_ms=NOW_MS + 1, idle_expires_at_ms=NOW_MS + 1)
    without_idle = add_session(storage)

    deleted = storage.delete_expired_sessions(NOW_MS, batch_size=10)

    assert deleted == 3
    remaining = stored_handles(storage)
    assert past_expiry.session_handle not in remaining
    assert past_idle.session_handle not in remaining
    assert past_both.session_handle not in remaining
    assert remaining == {live.session_handle, without_idle.session_handle}


def test_cleanup_batch_takes_oldest_expiry(storage: Storage) -> None:
    expired = add_expired(storage, 5)
    live = add_session(storage).session_handle

    first = storage.delete_expired_sessions(NOW_MS, batch_size=2)
    after_first = stored_handles(storage)
    later = [storage.delete_expired_sessions(NOW_MS, batch_size=2) for _ in range(3)]

    assert first == 2
    assert after_first == {*expired[2:], live}
    assert later == [2, 1, 0]
    assert stored_handles(storage) == {live}


def test_cleanup_batch_ties_by_handle(storage: Storage) -> None:
    same_expiry = sorted(
        add_session(storage, expires_at_ms=NOW_MS - 1).session_handle for _ in range(4)
    )

    deleted = storage.delete_expired_sessions(NOW_MS, batch_size=2)

    assert deleted == 2
    assert stored_handles(storage) == set(same_expiry[2:])


def test_cleanup_batch_fills_from_idle(storage: Storage) -> None:
    past_expiry = add_expired(storage, 2)
    past_idle = [
        add_session(storage, idle_expires_at_ms=NOW_MS - 3 + index).session_handle
        for index in range(3)
    ]

    first = storage.delete_expired_sessions(NOW_MS, batch_size=4)
    after_first = stored_handles(storage)
    later = [storage.delete_expired_sessions(NOW_MS, batch_size=4) for _ in range(2)]

    assert first == 4
    assert not set(past_expiry) & after_first
    # The idle deadlines go in order too: the latest one is left.
    assert after_first == {past_idle[2]}
    assert later == [1, 0]


def test_cleanup_counts_session_once(storage: Storage) -> None:
    for index in range(3):
        add_session(
            storage,
            expires_at_ms=NOW_MS - 3 + index,
            idle_expires_at_ms=NOW_MS - 3 + index,
        )

    counts = [storage.delete_expired_sessions(NOW_MS, batch_size=2) for _ in range(3)]

    assert counts == [2, 1, 0]
    assert stored_handles(storage) == set()


@contextmanager
def open_transaction(
    database_url: str,
) -> Iterator[Callable[[str, tuple[Any, ...]], None]]:
    """Yield execute(sql, params) in a transaction on the test's own connection; commit at exit.

    sql uses ``?`` placeholders. On SQLite the transaction takes the write
    lock at once, as the storage's transactions do.
    """
    if database_url.startswith("sqlite:///"):
        connection = sqlite3.connect(
            database_url[len("sqlite:///") :], isolation_level=None
        )

        def execute_sqlite(sql: str, params: tuple[Any, ...]) -> None:
            connection.execute(sql, params)

        try:
            connection.execute("BEGIN IMMEDIATE")
            yield execute_sqlite
            connection.execute("COMMIT")
        finally:
            connection.close()
        return
    mysql = mysql_connect(database_url)
    try:
        with mysql.cursor() as cursor:

            def execute_mysql(sql: str, params: tuple[Any, ...]) -> None:
                cursor.execute(sql.replace("?", "%s"), params)

            cursor.execute("BEGIN")
            yield execute_mysql
            cursor.execute("COMMIT")
    finally:
        mysql.close()


def start_thread(call: Callable[[], int]) -> tuple[threading.Thread, list[object]]:
    """Run call in a new thread; the returned list gets its result or its exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until_blocked(database_url: str, worker: threading.Thread) -> None:
    """Wait until worker waits for the test's transaction.

    On MySQL that is a lock wait in the server. SQLite shows no waiter, so
    the worker must still be running after a pause.
    """
    if database_url.startswith("sqlite:///"):
        time.sleep(0.3)
        assert worker.is_alive(), "the cleanup did not wait for the open transaction"
        return
    database = database_url.rsplit("/", 1)[1]
    observer = mysql_connect()
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
    try:
        with observer.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.innodb_trx AS trx "
                    "JOIN information_schema.processlist AS process "
                    "ON process.id = trx.trx_mysql_thread_id "
                    "WHERE trx.trx_state = 'LOCK WAIT' AND process.db = %s",
                    (database,),
                )
                if cursor.fetchone()[0]:
                    return
                # InnoDB refreshes its information_schema tables only after
                # 0.1 s without a read of them.
                time.sleep(0.2)
    finally:
        observer.close()
    raise AssertionError(
        f"the cleanup did not wait for a row lock within {LOCK_WAIT_TIMEOUT_S} s"
    )


@pytest.mark.parametrize("deadline", ["expires_at_ms", "idle_expires_at_ms"])
def test_cleanup_keeps_session_refreshed_meanwhile(
    storage: Storage, database_url: str, deadline: str
) -> None:
    refreshed = add_session(storage, **{deadline: NOW_MS - 1})
    expired = add_expired(storage, 1, expires_at_ms=NOW_MS - 1)
    # A long timeout, so the cleanup's lock wait outlasts the test's steps.
    cleanup_storage = open_storage(database_url, pool_size=1, timeout_s=20.0)
    try:
        with open_transaction(database_url) as execute:
            execute(
                "UPDATE sessiond_sessions SET expires_at_ms = ?, idle_expires_at_ms = ? "
                "WHERE session_handle = ?",
                (NOW_MS + 2 * HOUR_MS, NOW_MS + 2 * HOUR_MS, refreshed.session_handle),
            )
            worker, outcome = start_thread(
                lambda: cleanup_storage.delete_expired_sessions(NOW_MS, batch_size=10)
            )
            wait_until_blocked(database_url, worker)
        worker.join(timeout=30)
    finally:
        cleanup_storage.close()

    assert not worker.is_alive()
    assert outcome == [1]
    assert stored_handles(storage) == {refreshed.session_handle}
    assert expired[0] not in stored_handles(storage)
    assert storage.get_session(refreshed.session_handle, NOW_MS + HOUR_MS) is not None


@pytest.mark.mysql
def test_cleanup_waits_for_no_other_row(mysql_url: str) -> None:
    # With timeout_s 5 a lock wait ends after 1 s, and after three of them
    # the call raises UnavailableError.
    storage = open_storage(mysql_url, pool_size=2, timeout_s=5.0)
    try:
        storage.migrate(NOW_MS)
        expired = add_expired(storage, 5)
        live = add_session(storage).session_handle

        with open_transaction(mysql_url) as execute:
            for handle in (expired[-1], live):
                execute(
                    "SELECT session_handle FROM sessiond_sessions "
                    "WHERE session_handle = ? FOR UPDATE",
                    (handle,),
                )
            first_batch = storage.delete_expired_sessions(NOW_MS, batch_size=2)
        with open_transaction(mysql_url) as execute:
            execute(
                "SELECT session_handle FROM sessiond_sessions "
                "WHERE session_handle = ? FOR UPDATE",
                (live,),
            )
            rest = storage.delete_expired_sessions(NOW_MS, batch_size=10)
        remaining = stored_handles(storage)
    finally:
        storage.close()

    assert first_batch == 2
    assert rest == 3
    assert remaining == {live}


# -- delete_revocations -------------------------------------------------------


def test_delete_revocations_oldest_first(storage: Storage) -> None:
    cutoff_ms = NOW_MS - RETENTION_MS
    # seq order differs from revocation time order.
    insert_log_row(storage, 1, revoked_at_ms=cutoff_ms - 1)
    insert_log_row(storage, 2, revoked_at_ms=cutoff_ms - 5)
    insert_log_row(storage, 3, revoked_at_ms=cutoff_ms - 3)
    insert_log_row(storage, 4, revoked_at_ms=cutoff_ms)
    insert_log_row(storage, 5, revoked_at_ms=NOW_MS)

    first = storage.delete_revocations(cutoff_ms, 2)
    after_first = logged_seqs(storage)
    later = [storage.delete_revocations(cutoff_ms, 2) for _ in range(2)]

    assert first == 2
    assert after_first == [1, 4, 5]
    assert later == [1, 0]
    assert logged_seqs(storage) == [4, 5]


# -- delete_in_batches ----------------------------------------------------------


class TimedBatches:
    """A delete_batch for delete_in_batches: expired sessions at NOW_MS, with the time of each call."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.spans: list[tuple[float, float]] = []
        self.counts: list[int] = []
        self.first_done = threading.Event()

    def __call__(self, batch_size: int) -> int:
        started = time.monotonic()
        deleted = self._storage.delete_expired_sessions(NOW_MS, batch_size)
        self.spans.append((started, time.monotonic()))
        self.counts.append(deleted)
        self.first_done.set()
        return deleted


@pytest.mark.parametrize("min_pause_s", [0.0, 0.02])
def test_pause_at_least_batch_time(storage: Storage, min_pause_s: float) -> None:
    add_expired(storage, 12)
    batches = TimedBatches(storage)

    total = delete_in_batches(
        batches, threading.Event(), batch_size=3, min_pause_s=min_pause_s
    )

    assert total == 12
    assert batches.counts == [3, 3, 3, 3, 0]
    # Margin for the rounding of the clock readings.
    margin_s = 1e-4
    for (started, ended), (next_started, _) in zip(
        batches.spans, batches.spans[1:], strict=False
    ):
        pause_s = next_started - ended
        assert pause_s >= ended - started - margin_s
        assert pause_s >= min_pause_s - margin_s


def test_stop_during_pause_ends_job(storage: Storage) -> None:
    add_expired(storage, 10)
    batches = TimedBatches(storage)
    stop = threading.Event()
    worker, outcome = start_thread(
        lambda: delete_in_batches(batches, stop, batch_size=3, min_pause_s=60.0)
    )
    assert batches.first_done.wait(timeout=10)
    time.sleep(0.05)

    stopped = time.monotonic()
    stop.set()
    worker.join(timeout=5)
    stop_s = time.monotonic() - stopped

    assert not worker.is_alive()
    assert stop_s < 1.0
    assert outcome == [3]
    assert batches.counts == [3]
    assert len(stored_handles(storage)) == 7


def test_stop_before_job_deletes_nothing(storage: Storage) -> None:
    add_expired(storage, 3)
    batches = TimedBatches(storage)
    stop = threading.Event()
    stop.set()

    total = delete_in_batches(batches, stop)

    assert total == 0
    assert batches.counts == []
    assert len(stored_handles(storage)) == 3


# -- Daemon._cleanup ----------------------------------------------------------


def cleanup_stand_in(storage: Storage, stop: threading.Event) -> SimpleNamespace:
    """Return what Daemon._cleanup reads of a daemon: storage, _stop, feed and keys."""
    keys = KeyManager(
        storage,
        algorithm="ES256",
        rotation_interval_s=86400,
        verify_window_s=3600,
        clock=clock.now_ms,
    )
    return SimpleNamespace(
        storage=storage,
        _stop=stop,
        feed=SimpleNamespace(retention_ms=RETENTION_MS),
        keys=keys,
    )


def test_daemon_cleanup_deletes_all(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    now_ms = clock.now_ms()
    expired_count = 2 * CLEANUP_BATCH_SIZE + 5
    add_expired(storage, expired_count, expires_at_ms=now_ms - HOUR_MS)
    idle = add_session(storage, idle_expires_at_ms=now_ms - HOUR_MS)
    live = {
        add_session(
            storage, created_at_ms=now_ms, expires_at_ms=now_ms + HOUR_MS
        ).session_handle
        for _ in range(3)
    }
    insert_log_row(storage, 1, revoked_at_ms=now_ms - RETENTION_MS - HOUR_MS)
    insert_log_row(storage, 2, revoked_at_ms=now_ms)
    counted_before = metrics.REGISTRY.get_sample_value(
        "sessiond_expired_sessions_deleted_total"
    )

    with caplog.at_level("INFO", logger="sessiond_server.daemon"):
        Daemon._cleanup(cleanup_stand_in(storage, threading.Event()))  # type: ignore[arg-type]

    counted_after = metrics.REGISTRY.get_sample_value(
        "sessiond_expired_sessions_deleted_total"
    )
    assert stored_handles(storage) == live
    assert idle.session_handle not in stored_handles(storage)
    assert logged_seqs(storage) == [2]
    assert counted_before is not None and counted_after is not None
    assert counted_after - counted_before == expired_count + 1
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        message.startswith(f"expired sessions deleted count={expired_count + 1} ")
        for message in messages
    ), messages
    assert "revocation log rows deleted count=1" in messages


def test_daemon_cleanup_stopped_does_nothing(storage: Storage) -> None:
    now_ms = clock.now_ms()
    expired = add_expired(storage, 3, expires_at_ms=now_ms - HOUR_MS)
    insert_log_row(storage, 1, revoked_at_ms=now_ms - RETENTION_MS - HOUR_MS)
    stop = threading.Event()
    stop.set()

    Daemon._cleanup(cleanup_stand_in(storage, stop))  # type: ignore[arg-type]

    assert stored_handles(storage) == set(expired)
    assert logged_seqs(storage) == [1]
