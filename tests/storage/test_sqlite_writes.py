"""SQLite writes: one writer at a time in the process, readers alongside it."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sessiond_server.errors import UnavailableError
from sessiond_server.storage import SessionRecord, Storage, open_storage

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
WAIT_S = 10.0


def make_session() -> SessionRecord:
    return SessionRecord(
        session_handle=str(uuid.uuid4()),
        user_id="alice",
        refresh_token_hash2=b"s" * 32,
        access_token_payload="{}",
        session_data='{"n":0}',
        data_version=1,
        created_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + HOUR_MS,
    )


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "sessiond.db"


def open_sqlite(database: Path, timeout_s: float) -> Storage:
    storage = open_storage(f"sqlite:///{database}", pool_size=4, timeout_s=timeout_s)
    storage.migrate(NOW_MS)
    return storage


@pytest.fixture
def storage(database: Path) -> Iterator[Storage]:
    opened = open_sqlite(database, timeout_s=0.5)
    yield opened
    opened.close()


def test_second_writer_waits_reader_does_not(storage: Storage) -> None:
    record = make_session()
    storage.create_session(record)
    handle = record.session_handle
    inside = threading.Event()
    release = threading.Event()

    def slow_rewrite(_stored: str) -> str:
        inside.set()
        release.wait(WAIT_S)
        return '{"n":1}'

    with ThreadPoolExecutor(1) as executor:
        slow = executor.submit(
            storage.rewrite_session_data, handle, slow_rewrite, NOW_MS
        )
        assert inside.wait(WAIT_S), "the first write never started"

        read = storage.get_session_data(handle, NOW_MS)
        with pytest.raises(UnavailableError, match="no SQLite write finished"):
            storage.update_session_data(handle, '{"n":2}', NOW_MS)
        release.set()
        written = slow.result(WAIT_S)

    assert read == ('{"n":0}', 1)
    assert written == ('{"n":1}', 2)
    assert storage.update_session_data(handle, '{"n":3}', NOW_MS) == 3


def test_concurrent_writes_all_applied(database: Path) -> None:
    storage = open_sqlite(database, timeout_s=5.0)
    record = make_session()
    storage.create_session(record)
    writers = 16
    writes_each = 20

    def write(_index: int) -> None:
        for _ in range(writes_each):
            storage.rewrite_session_data(
                record.session_handle, lambda stored: stored, NOW_MS
            )
            storage.create_session(make_session())

    try:
        with ThreadPoolExecutor(writers) as executor:
            list(executor.map(write, range(writers)))
        stored = storage.get_session_data(record.session_handle, NOW_MS)
        handles = storage.list_session_handles("alice", NOW_MS)
    finally:
        storage.close()

    assert stored == ('{"n":0}', 1 + writers * writes_each)
    assert len(handles) == 1 + writers * writes_each


def test_other_connection_holding_lock_times_out(
    storage: Storage, database: Path
) -> None:
    # Another process's writer is outside the in-process lock, so SQLite's
    # busy timeout decides how long a write waits for it.
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(UnavailableError, match="database is locked"):
            storage.create_session(make_session())
        other.execute("ROLLBACK")
    finally:
        other.close()

    record = make_session()
    storage.create_session(record)
    assert storage.get_session(record.session_handle, NOW_MS) == record
