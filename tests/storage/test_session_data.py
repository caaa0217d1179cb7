"""Storage tests of versioned data writes, payload updates, listings and session deadlines.

Each test runs on SQLite and on MariaDB/MySQL through the conftest
``storage`` fixture. Times are fixed millisecond values, because storage
takes now_ms from the caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid
from collections.abc import Callable

import pytest

from sessiond_server.errors import ConflictError, InvalidArgumentError
from sessiond_server.storage import (
    NO_IDLE_DEADLINE_MS,
    Rotation,
    SessionRecord,
    Storage,
    capped_expiry,
)

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
GRACE_MS = 10_000


def hash2(label: str) -> bytes:
    return hashlib.sha256(label.encode("utf-8")).digest()


def add_session(
    storage: Storage,
    *,
    user_id: str = "alice",
    created_at_ms: int = NOW_MS,
    expires_at_ms: int = NOW_MS + HOUR_MS,
    idle_expires_at_ms: int = NO_IDLE_DEADLINE_MS,
    session_data: str = '{"count":0}',
    device: tuple[str, str, str] = ("", "", ""),
    max_sessions_per_user: int = 0,
) -> SessionRecord:
    record = SessionRecord(
        session_handle=str(uuid.uuid4()),
        user_id=user_id,
        refresh_token_hash2=hash2("stored"),
        access_token_payload='{"role":"reader"}',
        session_data=session_data,
        data_version=1,
        created_at_ms=created_at_ms,
        expires_at_ms=expires_at_ms,
        refresh_token_changed_at_ms=created_at_ms,
        last_refreshed_at_ms=created_at_ms,
        idle_expires_at_ms=idle_expires_at_ms,
        device_user_agent=device[0],
        device_ip_address=device[1],
        device_label=device[2],
    )
    storage.create_session(record, max_sessions_per_user=max_sessions_per_user)
    return record


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run target(index) in count threads released together; return their exceptions."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        try:
            target(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


# -- versioned writes ---------------------------------------------------------


def test_update_expected_version_matches(storage: Storage) -> None:
    record = add_session(storage)

    version = storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS, 1)

    assert version == 2
    assert storage.get_session_data(record.session_handle, NOW_MS) == ('{"n":1}', 2)


def test_update_stale_version_conflict(storage: Storage) -> None:
    record = add_session(storage)
    storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    with pytest.raises(ConflictError) as raised:
        storage.update_session_data(record.session_handle, '{"n":2}', NOW_MS, 1)

    assert raised.value.current_data_version == 2
    assert raised.value.expected_data_version == 1
    assert raised.value.metadata() == {"current_data_version": "2"}
    assert storage.get_session_data(record.session_handle, NOW_MS) == ('{"n":1}', 2)


def test_update_future_version_conflict(storage: Storage) -> None:
    record = add_session(storage)

    with pytest.raises(ConflictError) as raised:
        storage.update_session_data(record.session_handle, '{"n":2}', NOW_MS, 5)

    assert raised.value.current_data_version == 1
    assert storage.get_session_data(record.session_handle, NOW_MS) == (
        '{"count":0}',
        1,
    )


def test_update_version_missing_session_none(storage: Storage) -> None:
    handle = str(uuid.uuid4())

    assert storage.update_session_data(handle, '{"n":1}', NOW_MS, 1) is None


def test_rewrite_applies_function(storage: Storage) -> None:
    record = add_session(storage, session_data='{"count":4}')

    written = storage.rewrite_session_data(
        record.session_handle, lambda text: text.replace("4", "5"), NOW_MS
    )

    assert written == ('{"count":5}', 2)
    assert storage.get_session_data(record.session_handle, NOW_MS) == written


def test_rewrite_error_leaves_data(storage: Storage) -> None:
    record = add_session(storage)

    def reject(_text: str) -> str:
        raise InvalidArgumentError("session_data", "is too large")

    with pytest.raises(InvalidArgumentError):
        storage.rewrite_session_data(record.session_handle, reject, NOW_MS)

    assert storage.get_session_data(record.session_handle, NOW_MS) == (
        '{"count":0}',
        1,
    )


def test_rewrite_conflict_skips_function(storage: Storage) -> None:
    record = add_session(storage)
    calls: list[str] = []

    def rewrite(text: str) -> str:
        calls.append(text)
        return text

    with pytest.raises(ConflictError):
        storage.rewrite_session_data(record.session_handle, rewrite, NOW_MS, 2)

    assert calls == []


def test_rewrite_expired_none(storage: Storage) -> None:
    record = add_session(storage, expires_at_ms=NOW_MS)

    assert storage.rewrite_session_data(record.session_handle, str, NOW_MS) is None


def test_concurrent_rewrites_lose_nothing(storage: Storage) -> None:
    record = add_session(storage)
    writers, increments = 16, 10

    def increment(text: str) -> str:
        data = json.loads(text)
        data["count"] += 1
        return json.dumps(data)

    def write(_index: int) -> None:
        for _ in range(increments):
            storage.rewrite_session_data(record.session_handle, increment, NOW_MS)

    errors = run_threads(writers, write)
    stored = storage.get_session_data(record.session_handle, NOW_MS)

    assert errors == []
    assert stored is not None
    assert json.loads(stored[0]) == {"count": writers * increments}
    assert stored[1] == 1 + writers * increments


def test_concurrent_versioned_writes_one_wins(storage: Storage) -> None:
    record = add_session(storage)
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(index: int) -> None:
        try:
            storage.update_session_data(
                record.session_handle, f'{{"writer":{index}}}', NOW_MS, 1
            )
            outcome = "written"
        except ConflictError as error:
            outcome = f"conflict at {error.current_data_version}"
        with lock:
            outcomes.append(outcome)

    errors = run_threads(8, write)
    stored = storage.get_session_data(record.session_handle, NOW_MS)

    assert errors == []
    assert sorted(outcomes) == ["conflict at 2"] * 7 + ["written"]
    assert stored is not None
    assert stored[1] == 2


# -- access token payload -----------------------------------------------------


def test_update_payload_stored(storage: Storage) -> None:
    record = add_session(storage)

    updated = storage.update_access_token_payload(
        record.session_handle, '{"role":"admin"}', NOW_MS
    )
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert updated is not None
    assert stored is not None
    assert updated.access_token_payload == '{"role":"admin"}'
    # The update reads the row without its session data, which may be large.
    assert updated == dataclasses.replace(stored, session_data="")


def test_update_payload_expired_none(storage: Storage) -> None:
    record = add_session(storage, idle_expires_at_ms=NOW_MS)

    result = storage.update_access_token_payload(
        record.session_handle, '{"role":"admin"}', NOW_MS
    )

    assert result is None
    assert storage.get_session(record.session_handle, NOW_MS - 1) == record


# -- listing and device details -----------------------------------------------


def test_list_sessions_with_device(storage: Storage) -> None:
    first = add_session(
        storage,
        user_id="erin",
        created_at_ms=NOW_MS - 2000,
        device=("Mozilla/5.0 (X11) ünïcode", "2001:db8::1", "Erin's laptop 💻"),
    )
    second = add_session(storage, user_id="erin", created_at_ms=NOW_MS - 1000)
    add_session(storage, user_id="frank")

    listed = storage.list_sessions("erin", NOW_MS)

    assert [item.session_handle for item in listed] == [
        first.session_handle,
        second.session_handle,
    ]
    assert listed[0].user_id == "erin"
    assert listed[0].access_token_payload == '{"role":"reader"}'
    assert listed[0].created_at_ms == NOW_MS - 2000
    assert listed[0].last_refreshed_at_ms == NOW_MS - 2000
    assert listed[0].ends_at_ms == NOW_MS + HOUR_MS
    assert listed[0].device_user_agent == "Mozilla/5.0 (X11) ünïcode"
    assert listed[0].device_ip_address == "2001:db8::1"
    assert listed[0].device_label == "Erin's laptop 💻"
    assert (
        listed[1].device_user_agent,
        listed[1].device_ip_address,
        listed[1].device_label,
    ) == ("", "", "")


def test_list_sessions_excludes_ended(storage: Storage) -> None:
    live = add_session(storage, user_id="gina", idle_expires_at_ms=NOW_MS + 1)
    add_session(storage, user_id="gina", expires_at_ms=NOW_MS)
    add_session(storage, user_id="gina", idle_expires_at_ms=NOW_MS)

    listed = storage.list_sessions("gina", NOW_MS)

    assert [item.session_handle for item in listed] == [live.session_handle]
    assert listed[0].ends_at_ms == NOW_MS + 1


# -- idle deadline ------------------------------------------------------------


def test_idle_session_hidden_from_reads(storage: Storage) -> None:
    record = add_session(storage, user_id="hal", idle_expires_at_ms=NOW_MS + 1000)
    handle = record.session_handle

    assert storage.get_session(handle, NOW_MS + 999) == record
    assert storage.get_session(handle, NOW_MS + 1000) is None
    assert storage.get_session_data(handle, NOW_MS + 1000) is None
    assert storage.update_session_data(handle, "{}", NOW_MS + 1000) is None
    assert storage.list_session_handles("hal", NOW_MS + 1000) == []
    assert storage.list_sessions("hal", NOW_MS + 1000) == []
    rotated = storage.rotate_refresh_token(
        handle, hash2("stored"), None, NOW_MS + 1000, NOW_MS + HOUR_MS, GRACE_MS
    )
    assert rotated.outcome is Rotation.NOT_FOUND
    promoted = storage.promote_refresh_token(
        handle, hash2("stored"), hash2("child"), NOW_MS + 1000, GRACE_MS
    )
    assert promoted.outcome is Rotation.NOT_FOUND
    assert storage.revoke_all_sessions_for_user("hal", NOW_MS + 1000) == []


def test_rotate_sets_deadlines(storage: Storage) -> None:
    record = add_session(storage, idle_expires_at_ms=NOW_MS + 1000)
    later = NOW_MS + 500

    result = storage.rotate_refresh_token(
        record.session_handle,
        hash2("stored"),
        None,
        later,
        later + HOUR_MS,
        GRACE_MS,
        idle_expires_at_ms=later + 1000,
    )
    stored = storage.get_session(record.session_handle, later)

    assert result.outcome is Rotation.CURRENT
    assert stored is not None
    assert stored.expires_at_ms == later + HOUR_MS
    assert stored.idle_expires_at_ms == later + 1000
    assert stored.last_refreshed_at_ms == later
    assert stored.created_at_ms == NOW_MS
    assert storage.get_session(record.session_handle, NOW_MS + 1400) is not None


def test_rotate_caps_at_max_lifetime(storage: Storage) -> None:
    record = add_session(storage)
    later = NOW_MS + 2000

    storage.rotate_refresh_token(
        record.session_handle,
        hash2("stored"),
        None,
        later,
        later + HOUR_MS,
        GRACE_MS,
        max_lifetime_ms=3000,
    )
    stored = storage.get_session(record.session_handle, later)

    assert stored is not None
    assert stored.expires_at_ms == NOW_MS + 3000
    assert storage.get_session(record.session_handle, NOW_MS + 3000) is None


@pytest.mark.parametrize(
    "max_lifetime", [0, 1000, 2500, HOUR_MS + 2000, HOUR_MS + 9000]
)
@pytest.mark.parametrize("presented", ["stored", "child", "replaced"])
def test_rotate_stores_capped_expiry(
    storage: Storage, presented: str, max_lifetime: int
) -> None:
    """Each outcome stores the expiry that capped_expiry computes in Python."""
    record = add_session(storage)
    later = NOW_MS + 2000
    if presented == "replaced":
        # The stored token becomes "child", so "stored" is the replaced one,
        # accepted in the grace period by a transaction of its own.
        storage.promote_refresh_token(
            record.session_handle, hash2("stored"), hash2("child"), NOW_MS, GRACE_MS
        )
    token, parent = {
        "stored": (hash2("stored"), None),
        "child": (hash2("child"), hash2("stored")),
        "replaced": (hash2("stored"), None),
    }[presented]

    result = storage.rotate_refresh_token(
        record.session_handle,
        token,
        parent,
        later,
        later + HOUR_MS,
        GRACE_MS,
        max_lifetime_ms=max_lifetime,
    )
    stored = storage.get_session(record.session_handle, NOW_MS)

    expected = {
        "stored": Rotation.CURRENT,
        "child": Rotation.PROMOTED,
        "replaced": Rotation.GRACE,
    }
    assert result.outcome is expected[presented]
    assert stored is not None
    assert stored.expires_at_ms == capped_expiry(NOW_MS, later + HOUR_MS, max_lifetime)
    assert stored.last_refreshed_at_ms == later


def test_theft_leaves_no_refresh_trace(storage: Storage) -> None:
    record = add_session(storage)

    result = storage.rotate_refresh_token(
        record.session_handle, hash2("replayed"), None, NOW_MS, NOW_MS + 1, GRACE_MS
    )

    assert result.outcome is Rotation.THEFT
    assert storage.list_sessions("alice", NOW_MS) == []


@pytest.mark.parametrize(
    ("created", "expires", "max_lifetime", "expected"),
    [
        (1000, 9000, 0, 9000),
        (1000, 9000, 5000, 6000),
        (1000, 9000, 8000, 9000),
        (1000, 9000, 9000, 9000),
    ],
)
def test_capped_expiry(
    created: int, expires: int, max_lifetime: int, expected: int
) -> None:
    assert capped_expiry(created, expires, max_lifetime) == expected


def test_delete_idle_sessions(storage: Storage) -> None:
    for offset in range(3):
        add_session(storage, expires_at_ms=NOW_MS - offset)
    for offset in range(3):
        add_session(storage, idle_expires_at_ms=NOW_MS - offset)
    live = add_session(storage, idle_expires_at_ms=NOW_MS + 1)

    counts = [storage.delete_expired_sessions(NOW_MS, batch_size=4) for _ in range(3)]

    assert counts == [4, 2, 0]
    assert storage.get_session(live.session_handle, NOW_MS) == live


# -- sessions per user --------------------------------------------------------


def test_cap_evicts_oldest(storage: Storage) -> None:
    oldest = add_session(storage, user_id="ivy", created_at_ms=NOW_MS - 3000)
    middle = add_session(storage, user_id="ivy", created_at_ms=NOW_MS - 2000)
    other_user = add_session(storage, user_id="jack", created_at_ms=NOW_MS - 4000)
    newest = SessionRecord(
        session_handle=str(uuid.uuid4()),
        user_id="ivy",
        refresh_token_hash2=hash2("new"),
        access_token_payload="{}",
        session_data="{}",
        data_version=1,
        created_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + HOUR_MS,
    )

    evicted = storage.create_session(newest, max_sessions_per_user=2)

    assert evicted == [oldest.session_handle]
    assert storage.list_session_handles("ivy", NOW_MS) == [
        middle.session_handle,
        newest.session_handle,
    ]
    assert storage.get_session(oldest.session_handle, NOW_MS) is None
    assert storage.get_session(other_user.session_handle, NOW_MS) == other_user


def test_cap_ignores_ended_sessions(storage: Storage) -> None:
    add_session(storage, user_id="kim", expires_at_ms=NOW_MS - 1)
    add_session(storage, user_id="kim", idle_expires_at_ms=NOW_MS - 1)
    live = add_session(storage, user_id="kim", created_at_ms=NOW_MS - 1000)

    newest = add_session(storage, user_id="kim", max_sessions_per_user=2)

    assert storage.list_session_handles("kim", NOW_MS) == [
        live.session_handle,
        newest.session_handle,
    ]


def test_cap_of_one_keeps_newest(storage: Storage) -> None:
    for offset in range(3):
        add_session(storage, user_id="lee", created_at_ms=NOW_MS - 3000 + offset)

    newest = add_session(storage, user_id="lee", max_sessions_per_user=1)

    assert storage.list_session_handles("lee", NOW_MS) == [newest.session_handle]


# On MySQL the concurrent creates deadlock on the user's index range, and
# the storage retries them.
def test_cap_concurrent_creates_hold(storage: Storage) -> None:
    cap = 3
    handles: list[str] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        record = add_session(
            storage,
            user_id="mia",
            created_at_ms=NOW_MS + index,
            max_sessions_per_user=cap,
        )
        with lock:
            handles.append(record.session_handle)

    errors = run_threads(8, create)
    listed = storage.list_session_handles("mia", NOW_MS + 100)

    assert errors == []
    assert len(handles) == 8
    assert len(listed) == cap
    assert set(listed) <= set(handles)
