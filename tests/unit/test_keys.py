"""Tests of KeyManager: key creation, rotation, retirement and reload limits.

Each test runs on its own SQLite database in tmp_path, except the replica
test, which runs on both backends. A ManualClock lets a test move past a
key's rotation time or verify window at will.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessiond_server.keys import UNKNOWN_KID_RELOAD_INTERVAL_MS, KeyManager
from sessiond_server.storage import SigningKeyRecord, Storage, open_storage
from sessiond_server.storage.sqlite import SqliteStorage

START_MS = 1_700_000_000_000
ROTATION_S = 3600
WINDOW_S = 600


class ManualClock:
    """A clock in Unix milliseconds that moves only when a test sets it."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class CountingStorage(SqliteStorage):
    """SQLite storage that counts load_signing_keys calls."""

    def __init__(self, path: str) -> None:
        super().__init__(path, pool_size=2, timeout_s=5)
        self.loads = 0
        self._count_lock = threading.Lock()

    def load_signing_keys(self, signed_after_ms: int) -> list[SigningKeyRecord]:
        with self._count_lock:
            self.loads += 1
        return super().load_signing_keys(signed_after_ms)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "keys.db"
    storage = open_storage(f"sqlite:///{path}", pool_size=2, timeout_s=5)
    storage.migrate(START_MS)
    storage.close()
    return path


@pytest.fixture
def storage(database: Path) -> Iterator[CountingStorage]:
    opened = CountingStorage(str(database))
    yield opened
    opened.close()


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(START_MS)


def make_manager(storage: Storage, manual_clock: ManualClock) -> KeyManager:
    return KeyManager(
        storage,
        algorithm="EdDSA",
        rotation_interval_s=ROTATION_S,
        verify_window_s=WINDOW_S,
        clock=manual_clock,
    )


def count_key_rows(database: Path) -> int:
    connection = sqlite3.connect(database)
    try:
        return int(
            connection.execute("SELECT COUNT(*) FROM sessiond_signing_keys").fetchone()[
                0
            ]
        )
    finally:
        connection.close()


def reload_concurrently(
    managers: list[KeyManager], threads_per_manager: int
) -> list[BaseException]:
    """Call reload from several threads per manager at once and return the exceptions raised."""
    barrier = threading.Barrier(threads_per_manager * len(managers))
    errors: list[BaseException] = []

    def reload_after_barrier(manager: KeyManager) -> None:
        barrier.wait()
        try:
            manager.reload()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=reload_after_barrier, args=(manager,))
        for manager in managers
        for _ in range(threads_per_manager)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


def test_first_reload_creates_one_key(
    database: Path, storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)

    manager.reload()
    manager.reload()
    key = manager.signing_key()

    assert count_key_rows(database) == 1
    assert key.algorithm == "EdDSA"
    assert key.created_at_ms == START_MS
    assert key.signs_until_ms == START_MS + ROTATION_S * 1000


def test_signing_key_loads_lazily(
    database: Path, storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)

    key = manager.signing_key()

    assert count_key_rows(database) == 1
    assert manager.verification_key(key.kid) == key


def test_rotate_keeps_old_key_verifying(
    database: Path, storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    old = manager.signing_key()
    manual_clock.now_ms += 1000

    new = manager.rotate()

    assert new.kid != old.kid
    assert manager.signing_key().kid == new.kid
    assert count_key_rows(database) == 2
    assert manager.verification_key(old.kid) is not None
    assert manager.verification_key(new.kid) is not None
    published = {jwk["kid"] for jwk in manager.jwks()["keys"]}
    assert published == {old.kid, new.kid}


def test_rotated_key_stops_signing_now(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    old = manager.signing_key()
    manual_clock.now_ms += 1000

    manager.rotate()
    retired = manager.verification_key(old.kid)

    assert retired is not None
    assert retired.signs_until_ms == manual_clock.now_ms


def test_retired_key_expires_after_window(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    old = manager.signing_key()
    manual_clock.now_ms += 1000
    manager.rotate()
    retired_at_ms = manual_clock.now_ms

    manual_clock.now_ms = retired_at_ms + manager.verify_window_ms - 1
    still_valid = manager.verification_key(old.kid)
    manual_clock.now_ms = retired_at_ms + manager.verify_window_ms
    expired = manager.verification_key(old.kid)
    published = {jwk["kid"] for jwk in manager.jwks()["keys"]}

    assert still_valid is not None
    assert expired is None
    assert old.kid not in published


def test_retired_key_dropped_on_reload(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    old = manager.signing_key()
    manager.rotate()

    manual_clock.now_ms += manager.verify_window_ms
    manager.reload()
    manual_clock.now_ms += UNKNOWN_KID_RELOAD_INTERVAL_MS

    assert manager.verification_key(old.kid) is None
    assert old.kid not in {key.kid for key in manager.loaded()}


def test_due_key_replaced_on_signing(
    database: Path, storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    first = manager.signing_key()

    manual_clock.now_ms = first.signs_until_ms
    second = manager.signing_key()

    assert second.kid != first.kid
    assert count_key_rows(database) == 2
    assert manager.verification_key(first.kid) is not None


def test_replicas_create_one_key(database_url: str, manual_clock: ManualClock) -> None:
    # Runs on both backends (the conftest database_url fixture), because the
    # lock that makes one replica win is a different statement on each.
    replicas = [open_storage(database_url, pool_size=4, timeout_s=5) for _ in range(2)]
    replicas[0].migrate(START_MS)
    managers = [make_manager(replica, manual_clock) for replica in replicas]
    try:
        managers[0].reload()
        managers[1].reload()
        assert len(replicas[0].load_signing_keys(0)) == 1

        for round_number in range(1, 6):
            manual_clock.now_ms = START_MS + round_number * ROTATION_S * 1000
            errors = reload_concurrently(managers, threads_per_manager=4)

            assert errors == []
            assert len(replicas[0].load_signing_keys(0)) == 1 + round_number
            signing_kids = {manager.signing_key().kid for manager in managers}
            assert len(signing_kids) == 1
    finally:
        for replica in replicas:
            replica.close()


def test_replica_verifies_other_replicas_key(
    database: Path, manual_clock: ManualClock
) -> None:
    replicas = [CountingStorage(str(database)) for _ in range(2)]
    first, second = (make_manager(replica, manual_clock) for replica in replicas)
    try:
        first.reload()
        second.reload()
        manual_clock.now_ms += 5000
        rotated = first.rotate()

        found = second.verification_key(rotated.kid)

        assert found is not None
        assert found.kid == rotated.kid
    finally:
        for replica in replicas:
            replica.close()


def test_unknown_kid_reload_rate_limited(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    storage.loads = 0

    for step_ms in range(0, UNKNOWN_KID_RELOAD_INTERVAL_MS, 100):
        manual_clock.now_ms = START_MS + step_ms
        for attempt in range(20):
            assert manager.verification_key(f"made-up-{attempt}") is None
    loads_in_first_second = storage.loads

    manual_clock.now_ms = START_MS + UNKNOWN_KID_RELOAD_INTERVAL_MS
    for attempt in range(20):
        manager.verification_key(f"made-up-{attempt}")
    loads_at_one_second = storage.loads

    manual_clock.now_ms = START_MS + 2 * UNKNOWN_KID_RELOAD_INTERVAL_MS - 1
    for attempt in range(20):
        manager.verification_key(f"made-up-{attempt}")
    loads_before_two_seconds = storage.loads

    # The first made-up kid reloads at once; the rest wait out the interval.
    assert loads_in_first_second == 1
    assert loads_at_one_second == 2
    assert loads_before_two_seconds == 2


def test_unknown_kid_threads_reload_once(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    manager.reload()
    storage.loads = 0
    manual_clock.now_ms += UNKNOWN_KID_RELOAD_INTERVAL_MS
    barrier = threading.Barrier(16)

    def look_up_unknown_kid() -> None:
        barrier.wait()
        for _ in range(10):
            manager.verification_key("made-up")

    threads = [threading.Thread(target=look_up_unknown_kid) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert storage.loads == 1


def test_known_kid_needs_no_reload(
    storage: CountingStorage, manual_clock: ManualClock
) -> None:
    manager = make_manager(storage, manual_clock)
    kid = manager.signing_key().kid
    storage.loads = 0
    manual_clock.now_ms += 10 * UNKNOWN_KID_RELOAD_INTERVAL_MS

    for _ in range(10):
        assert manager.verification_key(kid) is not None

    assert storage.loads == 0
