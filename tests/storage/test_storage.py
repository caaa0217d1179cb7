"""Tests of the Storage interface on both backends (SQLite and MariaDB/MySQL).

The conftest ``storage`` fixture gives each test a migrated, empty database.
Times are fixed millisecond values, because storage takes now_ms from the
caller and never reads the clock itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
import uuid
from collections.abc import Callable

from sessiond_server import migrations
from sessiond_server.storage import (
    Rotation,
    RotationResult,
    SessionRecord,
    SigningKeyRecord,
    Storage,
)

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
GRACE_MS = 10_000


def new_handle() -> str:
    return str(uuid.uuid4())


def hash2(label: str) -> bytes:
    return hashlib.sha256(label.encode("utf-8")).digest()


def make_session(
    *,
    handle: str | None = None,
    user_id: str = "alice",
    token_hash2: bytes | None = None,
    created_at_ms: int = NOW_MS,
    expires_at_ms: int = NOW_MS + HOUR_MS,
    session_data: str = '{"cart":[]}',
) -> SessionRecord:
    return SessionRecord(
        session_handle=handle or new_handle(),
        user_id=user_id,
        refresh_token_hash2=token_hash2 or hash2("stored"),
        access_token_payload='{"role":"reader","name":"Zoë"}',
        session_data=session_data,
        data_version=1,
        created_at_ms=created_at_ms,
        expires_at_ms=expires_at_ms,
    )


def add_session(storage: Storage, **fields: object) -> SessionRecord:
    record = make_session(**fields)  # type: ignore[arg-type]
    storage.create_session(record)
    return record


# -- create and get -----------------------------------------------------------


def test_create_then_get_session(storage: Storage) -> None:
    record = add_session(storage, user_id="user-ü-😀", session_data='{"€":1}')

    assert storage.get_session(record.session_handle, NOW_MS) == record


def test_get_missing_session_none(storage: Storage) -> None:
    assert storage.get_session(new_handle(), NOW_MS) is None


def test_get_expired_session_none(storage: Storage) -> None:
    record = add_session(storage, expires_at_ms=NOW_MS + 1000)

    assert storage.get_session(record.session_handle, NOW_MS + 999) == record
    assert storage.get_session(record.session_handle, NOW_MS + 1000) is None


# -- rotate_refresh_token -----------------------------------------------------


def rotate(
    storage: Storage,
    handle: str,
    token: str,
    parent: str | None,
    now_ms: int = NOW_MS,
) -> RotationResult:
    """Rotate with the hash2 of the labelled token and parent, sliding expiry to now + 5 h."""
    return storage.rotate_refresh_token(
        handle,
        hash2(token),
        None if parent is None else hash2(parent),
        now_ms,
        now_ms + 5 * HOUR_MS,
        GRACE_MS,
    )


def promote(
    storage: Storage, handle: str, token: str, parent: str, now_ms: int = NOW_MS
) -> RotationResult:
    return storage.promote_refresh_token(
        handle, hash2(parent), hash2(token), now_ms, GRACE_MS
    )


def test_new_session_has_no_previous(storage: Storage) -> None:
    record = add_session(storage)
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert stored is not None
    assert stored.previous_refresh_token_hash2 is None
    assert stored.refresh_token_changed_at_ms == 0


def test_rotate_current_token(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("stored"))

    result = rotate(storage, record.session_handle, "stored", None)
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert result.outcome is Rotation.CURRENT
    # Rotation reads the row without its session data, which may be large.
    assert result.session == dataclasses.replace(record, session_data="")
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("stored")
    assert stored.previous_refresh_token_hash2 is None
    assert stored.expires_at_ms == NOW_MS + 5 * HOUR_MS


def test_rotate_child_promoted(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("parent"))

    result = rotate(storage, record.session_handle, "child", "parent")
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert result.outcome is Rotation.PROMOTED
    # Rotation reads the row without its session data, which may be large.
    assert result.session == dataclasses.replace(record, session_data="")
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("child")
    assert stored.previous_refresh_token_hash2 == hash2("parent")
    assert stored.refresh_token_changed_at_ms == NOW_MS
    assert stored.expires_at_ms == NOW_MS + 5 * HOUR_MS


def test_rotate_unrelated_token_theft(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("stored"))

    result = rotate(storage, record.session_handle, "old", "older")

    assert result.outcome is Rotation.THEFT
    # Rotation reads the row without its session data, which may be large.
    assert result.session == dataclasses.replace(record, session_data="")
    assert storage.get_session(record.session_handle, NOW_MS) is None


def test_rotate_no_parent_theft(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("stored"))

    result = rotate(storage, record.session_handle, "old", None)

    assert result.outcome is Rotation.THEFT
    assert storage.get_session(record.session_handle, NOW_MS) is None


def test_rotate_missing_session_not_found(storage: Storage) -> None:
    result = rotate(storage, new_handle(), "stored", None)

    assert result.outcome is Rotation.NOT_FOUND
    assert result.session is None


def test_rotate_expired_session_not_found(storage: Storage) -> None:
    record = add_session(storage, expires_at_ms=NOW_MS)

    result = rotate(storage, record.session_handle, "stored", None)

    assert result.outcome is Rotation.NOT_FOUND
    assert storage.get_session(record.session_handle, NOW_MS - 1) == record


def promoted_session(storage: Storage) -> str:
    """Create a session whose stored token "child" replaced "parent" at NOW_MS."""
    record = add_session(storage, token_hash2=hash2("parent"))
    assert rotate(storage, record.session_handle, "child", "parent").outcome is (
        Rotation.PROMOTED
    )
    return record.session_handle


def test_rotate_replaced_token_in_grace(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = rotate(storage, handle, "parent", None, NOW_MS + GRACE_MS)
    stored = storage.get_session(handle, NOW_MS + GRACE_MS)

    assert result.outcome is Rotation.GRACE
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("child")


def test_rotate_sibling_in_grace_stored(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = rotate(storage, handle, "sibling", "parent", NOW_MS + 1000)
    stored = storage.get_session(handle, NOW_MS + 1000)

    assert result.outcome is Rotation.GRACE
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("sibling")
    assert stored.expires_at_ms == NOW_MS + 1000 + 5 * HOUR_MS


def test_rotate_replaced_after_grace_theft(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = rotate(storage, handle, "parent", None, NOW_MS + GRACE_MS + 1)

    assert result.outcome is Rotation.THEFT
    assert storage.get_session(handle, NOW_MS) is None


def test_rotate_replaced_no_grace_same_ms_theft(storage: Storage) -> None:
    handle = promoted_session(storage)
    changed_at = storage.get_session(handle, NOW_MS)
    assert changed_at is not None

    result = storage.rotate_refresh_token(
        handle,
        hash2("parent"),
        None,
        changed_at.refresh_token_changed_at_ms,
        NOW_MS + HOUR_MS,
        0,
    )

    assert result.outcome is Rotation.THEFT


def test_rotate_sibling_after_grace_theft(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = rotate(storage, handle, "sibling", "parent", NOW_MS + GRACE_MS + 1)

    assert result.outcome is Rotation.THEFT
    assert storage.get_session(handle, NOW_MS) is None


def test_rotate_grandparent_in_grace_theft(storage: Storage) -> None:
    # Only the one token that the stored token replaced gets the grace period.
    record = add_session(storage, token_hash2=hash2("grandparent"))
    rotate(storage, record.session_handle, "parent", "grandparent")
    rotate(storage, record.session_handle, "child", "parent")

    result = rotate(storage, record.session_handle, "grandparent", None)

    assert result.outcome is Rotation.THEFT
    assert storage.get_session(record.session_handle, NOW_MS) is None


def run_concurrently(count: int, call: Callable[[], RotationResult]) -> list[Rotation]:
    """Run call from count threads released together and return the outcomes."""
    barrier = threading.Barrier(count)
    outcomes: list[Rotation] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            outcome = call().outcome
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return outcomes


def test_rotate_racing_same_token(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("stored"))

    outcomes = run_concurrently(
        8, lambda: rotate(storage, record.session_handle, "stored", None)
    )

    assert outcomes == [Rotation.CURRENT] * 8
    assert storage.get_session(record.session_handle, NOW_MS) is not None


def test_rotate_racing_same_child(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("parent"))

    outcomes = run_concurrently(
        8, lambda: rotate(storage, record.session_handle, "child", "parent")
    )
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert outcomes.count(Rotation.PROMOTED) == 1
    assert outcomes.count(Rotation.CURRENT) == 7
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("child")
    assert stored.previous_refresh_token_hash2 == hash2("parent")


# -- promote_refresh_token ----------------------------------------------------


def test_promote_child_replaces_parent(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("parent"))

    result = promote(storage, record.session_handle, "child", "parent")
    stored = storage.get_session(record.session_handle, NOW_MS)

    assert result.outcome is Rotation.PROMOTED
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("child")
    assert stored.previous_refresh_token_hash2 == hash2("parent")
    assert stored.expires_at_ms == record.expires_at_ms


def test_promote_already_stored_current(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("child"))

    result = promote(storage, record.session_handle, "child", "parent")

    assert result.outcome is Rotation.CURRENT
    assert storage.get_session(record.session_handle, NOW_MS) == record


def test_promote_unrelated_keeps_session(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("stored"))

    result = promote(storage, record.session_handle, "child", "parent")

    assert result.outcome is Rotation.THEFT
    assert storage.get_session(record.session_handle, NOW_MS) == record


def test_promote_sibling_in_grace_stored(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = promote(storage, handle, "sibling", "parent", NOW_MS + GRACE_MS)
    stored = storage.get_session(handle, NOW_MS)

    assert result.outcome is Rotation.GRACE
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("sibling")


def test_promote_sibling_after_grace_kept(storage: Storage) -> None:
    handle = promoted_session(storage)

    result = promote(storage, handle, "sibling", "parent", NOW_MS + GRACE_MS + 1)
    stored = storage.get_session(handle, NOW_MS)

    assert result.outcome is Rotation.THEFT
    assert stored is not None
    assert stored.refresh_token_hash2 == hash2("child")


def test_promote_missing_not_found(storage: Storage) -> None:
    result = promote(storage, new_handle(), "child", "parent")

    assert result.outcome is Rotation.NOT_FOUND
    assert result.session is None


def test_promote_expired_not_found(storage: Storage) -> None:
    record = add_session(storage, token_hash2=hash2("parent"), expires_at_ms=NOW_MS)

    result = promote(storage, record.session_handle, "child", "parent")

    assert result.outcome is Rotation.NOT_FOUND
    assert storage.get_session(record.session_handle, NOW_MS - 1) == record


# -- session data -------------------------------------------------------------


def test_update_data_bumps_version(storage: Storage) -> None:
    record = add_session(storage)

    first = storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)
    second = storage.update_session_data(record.session_handle, '["é"]', NOW_MS)

    assert first == 2
    assert second == 3
    assert storage.get_session_data(record.session_handle, NOW_MS) == ('["é"]', 3)


def test_update_data_missing_none(storage: Storage) -> None:
    handle = new_handle()

    assert storage.update_session_data(handle, '{"n":1}', NOW_MS) is None
    assert storage.get_session(handle, 0) is None
    assert storage.list_session_handles("alice", 0) == []


def test_update_data_expired_none(storage: Storage) -> None:
    record = add_session(storage, expires_at_ms=NOW_MS)

    result = storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    assert result is None
    assert storage.get_session(record.session_handle, NOW_MS - 1) == record


def test_update_data_after_revoke_none(storage: Storage) -> None:
    record = add_session(storage)
    storage.revoke_sessions([record.session_handle], NOW_MS)

    result = storage.update_session_data(record.session_handle, '{"n":1}', NOW_MS)

    assert result is None
    assert storage.get_session(record.session_handle, NOW_MS) is None


def test_get_data_expired_none(storage: Storage) -> None:
    record = add_session(storage, expires_at_ms=NOW_MS)

    assert storage.get_session_data(record.session_handle, NOW_MS) is None


def test_concurrent_data_updates_serialise(storage: Storage) -> None:
    record = add_session(storage)
    barrier = threading.Barrier(16)
    versions: list[int | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def update(index: int) -> None:
        barrier.wait()
        try:
            version = storage.update_session_data(
                record.session_handle, f'{{"writer":{index}}}', NOW_MS
            )
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            versions.append(version)

    threads = [threading.Thread(target=update, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    stored = storage.get_session_data(record.session_handle, NOW_MS)
    assert errors == []
    assert sorted(versions) == list(range(2, 18))  # type: ignore[type-var]
    assert stored is not None
    assert stored[1] == 17


# -- revoke and list ----------------------------------------------------------


def test_revoke_returns_existing_handles(storage: Storage) -> None:
    first = add_session(storage)
    second = add_session(storage)
    missing = new_handle()
    requested = [missing, second.session_handle, first.session_handle, missing]

    revoked = storage.revoke_sessions(requested, NOW_MS)

    assert revoked == [second.session_handle, first.session_handle]
    assert storage.get_session(first.session_handle, NOW_MS) is None
    assert storage.get_session(second.session_handle, NOW_MS) is None


def test_revoke_empty_list(storage: Storage) -> None:
    assert storage.revoke_sessions([], NOW_MS) == []


def test_revoke_leaves_other_sessions(storage: Storage) -> None:
    target = add_session(storage)
    bystander = add_session(storage)

    storage.revoke_sessions([target.session_handle], NOW_MS)

    assert storage.get_session(bystander.session_handle, NOW_MS) == bystander


def test_revoke_all_returns_live(storage: Storage) -> None:
    expired = add_session(storage, user_id="carol", expires_at_ms=NOW_MS)
    live_old = add_session(storage, user_id="carol", created_at_ms=NOW_MS - 2000)
    live_new = add_session(storage, user_id="carol", created_at_ms=NOW_MS - 1000)
    other = add_session(storage, user_id="dave")

    revoked = storage.revoke_all_sessions_for_user("carol", NOW_MS)

    assert revoked == [live_old.session_handle, live_new.session_handle]
    assert storage.get_session(expired.session_handle, 0) is None
    assert storage.list_session_handles("carol", 0) == []
    assert storage.get_session(other.session_handle, NOW_MS) == other


def test_revoke_all_unknown_user(storage: Storage) -> None:
    assert storage.revoke_all_sessions_for_user("nobody", NOW_MS) == []


def test_list_live_sessions_in_order(storage: Storage) -> None:
    # Handles sort in the opposite order to creation, so only created_at_ms
    # can produce the expected order.
    handles = sorted((new_handle() for _ in range(3)), reverse=True)
    for offset, handle in enumerate(handles):
        add_session(
            storage, handle=handle, user_id="erin", created_at_ms=NOW_MS + offset
        )
    add_session(storage, user_id="erin", expires_at_ms=NOW_MS)
    add_session(storage, user_id="frank")

    assert storage.list_session_handles("erin", NOW_MS) == handles


def test_user_ids_compare_exactly(storage: Storage) -> None:
    user_ids = ["bob", "bob ", "BOB", "böb", "bob\u0301"]
    handles = {
        user_id: add_session(storage, user_id=user_id).session_handle
        for user_id in user_ids
    }

    listed = {
        user_id: storage.list_session_handles(user_id, NOW_MS) for user_id in user_ids
    }

    for user_id in user_ids:
        assert listed[user_id] == [handles[user_id]], repr(user_id)


def test_revoke_all_user_id_exact(storage: Storage) -> None:
    bob = add_session(storage, user_id="bob")
    bob_space = add_session(storage, user_id="bob ")
    bob_upper = add_session(storage, user_id="BOB")

    revoked = storage.revoke_all_sessions_for_user("bob", NOW_MS)

    assert revoked == [bob.session_handle]
    assert storage.get_session(bob_space.session_handle, NOW_MS) == bob_space
    assert storage.get_session(bob_upper.session_handle, NOW_MS) == bob_upper


# -- expiry cleanup -----------------------------------------------------------


def test_delete_expired_in_batches(storage: Storage) -> None:
    for offset in range(5):
        add_session(storage, expires_at_ms=NOW_MS - offset)
    live = [add_session(storage, expires_at_ms=NOW_MS + 1) for _ in range(2)]

    counts = [storage.delete_expired_sessions(NOW_MS, batch_size=2) for _ in range(4)]

    assert counts == [2, 2, 1, 0]
    for record in live:
        assert storage.get_session(record.session_handle, NOW_MS) == record


# -- secrets, keys and schema ---------------------------------------------------


def test_secret_first_value_wins(storage: Storage) -> None:
    first = secrets.token_bytes(32)
    second = secrets.token_bytes(32)

    stored_first = storage.get_or_create_secret("refresh_token_hmac", first, NOW_MS)
    stored_second = storage.get_or_create_secret("refresh_token_hmac", second, NOW_MS)

    assert stored_first == first
    assert stored_second == first


def test_secrets_are_per_name(storage: Storage) -> None:
    first = storage.get_or_create_secret("one", b"\x00" * 32, NOW_MS)
    second = storage.get_or_create_secret("two", b"\xff" * 32, NOW_MS)

    assert first == b"\x00" * 32
    assert second == b"\xff" * 32


def make_key_record(now_ms: int) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=secrets.token_urlsafe(12),
        algorithm="EdDSA",
        private_key_pem=b"-----BEGIN PRIVATE KEY-----\nnot a key\n",
        created_at_ms=now_ms,
        signs_until_ms=now_ms + HOUR_MS,
    )


def test_signing_key_added_only_when_due(storage: Storage) -> None:
    first = storage.add_signing_key_if_due(make_key_record, NOW_MS, force=False)
    early = storage.add_signing_key_if_due(
        make_key_record, NOW_MS + HOUR_MS - 1, force=False
    )
    due = storage.add_signing_key_if_due(make_key_record, NOW_MS + HOUR_MS, force=False)

    assert first is not None
    assert early is None
    assert due is not None
    assert [key.kid for key in storage.load_signing_keys(0)] == [first.kid, due.kid]


def test_signing_key_forced_rotation(storage: Storage) -> None:
    first = storage.add_signing_key_if_due(make_key_record, NOW_MS, force=False)
    assert first is not None

    forced = storage.add_signing_key_if_due(make_key_record, NOW_MS + 10, force=True)
    keys = {key.kid: key for key in storage.load_signing_keys(0)}

    assert forced is not None
    assert set(keys) == {first.kid, forced.kid}
    assert keys[first.kid].signs_until_ms == NOW_MS + 10
    assert keys[forced.kid].signs_until_ms == NOW_MS + 10 + HOUR_MS


def test_signing_key_round_trip(storage: Storage) -> None:
    created = storage.add_signing_key_if_due(make_key_record, NOW_MS, force=False)

    assert storage.load_signing_keys(0) == [created]


def test_load_signing_keys_filters_retired(storage: Storage) -> None:
    storage.add_signing_key_if_due(make_key_record, NOW_MS, force=False)

    assert storage.load_signing_keys(NOW_MS + HOUR_MS - 1) != []
    assert storage.load_signing_keys(NOW_MS + HOUR_MS) == []


def test_migrate_twice_applies_nothing(storage: Storage) -> None:
    assert storage.migrate(NOW_MS) == []
    assert storage.schema_version() == migrations.LATEST_VERSION
