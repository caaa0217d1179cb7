"""The revocation log and the feed that polls it, on both backends.

Gaps in the log's sequence numbers are made the way MySQL makes them: a
transaction that took a seq commits after a later one, or rolls back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sessiond_testing import mysql_connect

from sessiond_server.revocations import (
    FRESH_POLL_S,
    GAP_TIMEOUT_MS,
    FeedBatch,
    RevocationFeed,
)
from sessiond_server.storage import RevocationReason, Rotation, Storage, open_storage

from .test_storage import (
    GRACE_MS,
    HOUR_MS,
    NOW_MS,
    add_session,
    hash2,
    make_session,
    new_handle,
)

RETENTION_MS = 2 * HOUR_MS


class Clock:
    """A settable clock for the feed, in ms."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def logged(storage: Storage) -> list[tuple[str, str, RevocationReason]]:
    return [
        (row.session_handle, row.user_id, row.reason)
        for row in storage.read_revocations(0, 0, 1000)
    ]


def insert_log_row(storage: Storage, seq: int, revoked_at_ms: int = NOW_MS) -> str:
    """Write a log row with a chosen seq, as a late commit would leave it."""
    handle = new_handle()

    def work(cursor: Any) -> None:
        storage._execute(
            cursor,
            "INSERT INTO sessiond_revocations "
            "(seq, session_handle, user_id, reason, revoked_at_ms) VALUES (?, ?, ?, ?, ?)",
            (seq, handle, b"gap-user", "revoked", revoked_at_ms),
        )

    storage._write(work)
    return handle


@pytest.fixture
def feed_clock() -> Clock:
    return Clock(NOW_MS)


@pytest.fixture
def feed(storage: Storage, feed_clock: Clock) -> Iterator[RevocationFeed]:
    # A long interval, so the test drives every poll itself.
    created = RevocationFeed(
        storage, retention_ms=RETENTION_MS, clock=feed_clock, poll_interval_s=3600
    )
    yield created
    created.close()


def test_revoke_logs_each_session(storage: Storage) -> None:
    first = add_session(storage, user_id="ann")
    second = add_session(storage, user_id="Zoë")

    storage.revoke_sessions(
        [first.session_handle, second.session_handle, new_handle()], NOW_MS
    )

    assert sorted(logged(storage)) == sorted(
        [
            (first.session_handle, "ann", RevocationReason.REVOKED),
            (second.session_handle, "Zoë", RevocationReason.REVOKED),
        ]
    )


def test_revoke_of_missing_session_logs_nothing(storage: Storage) -> None:
    storage.revoke_sessions([new_handle()], NOW_MS)

    assert logged(storage) == []


def test_revoke_all_logs_live_sessions(storage: Storage) -> None:
    live = add_session(storage, user_id="carl")
    add_session(storage, user_id="carl", expires_at_ms=NOW_MS - 1)

    storage.revoke_all_sessions_for_user("carl", NOW_MS)

    assert logged(storage) == [(live.session_handle, "carl", RevocationReason.REVOKED)]


def test_theft_logs_session(storage: Storage) -> None:
    record = add_session(storage, user_id="dora", token_hash2=hash2("stored"))

    result = storage.rotate_refresh_token(
        record.session_handle,
        hash2("forged"),
        None,
        NOW_MS,
        NOW_MS + HOUR_MS,
        GRACE_MS,
    )

    assert result.outcome is Rotation.THEFT
    assert logged(storage) == [(record.session_handle, "dora", RevocationReason.THEFT)]


def test_eviction_logs_oldest_session(storage: Storage) -> None:
    oldest = add_session(storage, user_id="eve", created_at_ms=NOW_MS - 2)
    add_session(storage, user_id="eve", created_at_ms=NOW_MS - 1)

    storage.create_session(make_session(user_id="eve"), max_sessions_per_user=2)

    assert logged(storage) == [(oldest.session_handle, "eve", RevocationReason.EVICTED)]


def test_log_reads_after_seq_and_time(storage: Storage) -> None:
    old = insert_log_row(storage, 1, revoked_at_ms=NOW_MS - RETENTION_MS - 1)
    recent = insert_log_row(storage, 2)
    newest = insert_log_row(storage, 3)

    after_time = storage.read_revocations(0, NOW_MS - RETENTION_MS, 10)
    after_seq = storage.read_revocations(2, 0, 10)

    assert [row.session_handle for row in after_time] == [recent, newest]
    assert [row.session_handle for row in after_seq] == [newest]
    assert old not in {row.session_handle for row in after_time}


def test_delete_revocations_keeps_recent(storage: Storage) -> None:
    insert_log_row(storage, 1, revoked_at_ms=NOW_MS - RETENTION_MS - 1)
    recent = insert_log_row(storage, 2)

    deleted = storage.delete_revocations(NOW_MS - RETENTION_MS, 1000)

    assert deleted == 1
    assert [row[0] for row in logged(storage)] == [recent]
    assert storage.max_revocation_seq() == 2


def test_feed_replays_retained_rows(storage: Storage, feed: RevocationFeed) -> None:
    insert_log_row(storage, 1, revoked_at_ms=NOW_MS - RETENTION_MS - 1)
    retained = [insert_log_row(storage, seq) for seq in (2, 3)]
    feed.poll()

    first = next(feed.watch(0))

    assert [row.session_handle for row in first.revocations] == retained
    assert first.resume_after_seq == 3


def test_feed_resumes_after_seq(storage: Storage, feed: RevocationFeed) -> None:
    handles = [insert_log_row(storage, seq) for seq in (1, 2, 3)]
    feed.poll()

    first = next(feed.watch(2))

    assert [row.session_handle for row in first.revocations] == handles[2:]


def test_feed_waits_for_late_commit(storage: Storage, feed: RevocationFeed) -> None:
    insert_log_row(storage, 1)
    feed.poll()
    watcher = feed.watch(0)
    next(watcher)
    insert_log_row(storage, 3)
    feed.poll()
    early = next(watcher)
    late = insert_log_row(storage, 2)
    feed.poll()

    after_late = next(watcher)

    assert early.resume_after_seq == 1
    assert [row.session_handle for row in after_late.revocations] == [late]
    assert after_late.resume_after_seq == 3


def test_feed_gives_up_on_rolled_back_seq(
    storage: Storage, feed: RevocationFeed, feed_clock: Clock
) -> None:
    insert_log_row(storage, 1)
    insert_log_row(storage, 3)
    feed.poll()
    stuck = next(feed.watch(0)).resume_after_seq
    feed_clock.now_ms += GAP_TIMEOUT_MS
    feed.poll()

    moved = next(feed.watch(0)).resume_after_seq

    assert stuck == 1
    assert moved == 3


def test_feed_heartbeat_without_news(feed: RevocationFeed) -> None:
    feed.poll()
    watcher = feed.watch(0, heartbeat_s=0.05)
    next(watcher)

    quiet: FeedBatch = next(watcher)

    assert quiet.revocations == []


def test_feed_ends_watchers_on_close(feed: RevocationFeed) -> None:
    feed.poll()
    watcher = feed.watch(0, heartbeat_s=0.05)
    next(watcher)
    feed.close()

    assert list(watcher) == []


@pytest.mark.mysql
def test_feed_sees_out_of_order_mysql_commit(mysql_url: str) -> None:
    """A revoke that took seq N and commits after N+1 still reaches watchers."""
    storage = open_storage(mysql_url, pool_size=2, timeout_s=5.0)
    storage.migrate(NOW_MS)
    feed = RevocationFeed(
        storage, retention_ms=RETENTION_MS, clock=Clock(NOW_MS), poll_interval_s=3600
    )
    slow = mysql_connect(mysql_url)
    slow.autocommit(False)
    try:
        feed.poll()
        watcher = feed.watch(0)
        next(watcher)
        with slow.cursor() as cursor:
            cursor.execute(
                "INSERT INTO sessiond_revocations "
                "(session_handle, user_id, reason, revoked_at_ms) VALUES (%s, %s, %s, %s)",
                (new_handle(), b"slow", "revoked", NOW_MS),
            )
        fast = add_session(storage, user_id="fast")
        storage.revoke_sessions([fast.session_handle], NOW_MS)
        feed.poll()
        before_commit = next(watcher)
        slow.commit()
        feed.poll()

        after_commit = next(watcher)

        assert [row.user_id for row in before_commit.revocations] == ["fast"]
        assert before_commit.resume_after_seq == 0
        assert [row.user_id for row in after_commit.revocations] == ["slow"]
        assert after_commit.resume_after_seq == 2
    finally:
        slow.close()
        feed.close()
        storage.close()


def rename_log(storage: Storage, old: str, new: str) -> None:
    def work(cursor: Any) -> None:
        storage._execute(cursor, f"ALTER TABLE {old} RENAME TO {new}")

    storage._write(work)


def test_feed_silent_while_log_unreadable(
    storage: Storage, feed: RevocationFeed
) -> None:
    """A daemon that cannot read the log sends no heartbeat that would vouch for it."""
    feed.poll()
    watcher = feed.watch(0, heartbeat_s=0.05)
    next(watcher)
    rename_log(storage, "sessiond_revocations", "sessiond_revocations_hidden")
    with pytest.raises(Exception):  # noqa: B017 - each backend names its own error
        feed.poll()
    time.sleep(FRESH_POLL_S + 0.1)
    received: queue.Queue[FeedBatch] = queue.Queue()
    threading.Thread(target=lambda: received.put(next(watcher)), daemon=True).start()

    silent = not _arrives(received, 0.5)
    rename_log(storage, "sessiond_revocations_hidden", "sessiond_revocations")
    feed.poll()
    resumed = _arrives(received, 5.0)

    assert silent
    assert resumed


def _arrives(received: queue.Queue[FeedBatch], timeout_s: float) -> bool:
    try:
        received.put(received.get(timeout=timeout_s))
    except queue.Empty:
        return False
    return True
