"""Three daemons on one database behind a client-side round robin."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable

import pytest
from sessiond_testing import DaemonProcess, mysql_connect

import sessiond


def _signing_key_count(database_url: str) -> int:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url[len("sqlite:///") :]) as connection:
            return int(
                connection.execute(
                    "SELECT COUNT(*) FROM sessiond_signing_keys"
                ).fetchone()[0]
            )
    connection = mysql_connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM sessiond_signing_keys")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_sessions_move_between_replicas(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    replicas = [start_daemon(database_url, refresh_grace_period_s=0) for _ in range(3)]
    clients = [replica.client() for replica in replicas]
    try:
        next_client = itertools.cycle(clients).__next__
        for index in range(6):
            user_id = f"user-replica-{index}"
            session = next_client().create_new_session(
                user_id, {"n": index}, {"k": index}
            )
            assert (
                session.access_token
                and session.anti_csrf_token
                and session.refresh_token
            )

            verified = next_client().get_session(
                session.access_token.value,
                session.anti_csrf_token.value,
                check_database=True,
            )
            assert verified.handle == session.handle

            child = next_client().refresh_session(session.refresh_token.value)
            assert child.access_token
            assert child.anti_csrf_token
            assert child.refresh_token
            promoted = next_client().get_session(
                child.access_token.value, child.anti_csrf_token.value
            )
            assert promoted.access_token is not None
            assert next_client().get_session_data(session.handle) == {"k": index}

            # The first refresh token is now a replay on any replica.
            with pytest.raises(sessiond.TokenTheftDetectedError):
                next_client().refresh_session(session.refresh_token.value)
            assert next_client().get_all_session_handles_for_user(user_id) == []

        kept = next_client().create_new_session("user-replica-kept")
        assert next_client().revoke_session(kept.handle) is True
        assert next_client().revoke_session(kept.handle) is False
    finally:
        for client in clients:
            client.close()
    assert _signing_key_count(database_url) == 1


def test_one_key_per_rotation(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    replicas = [start_daemon(database_url, key_rotation_interval_s=2) for _ in range(3)]
    clients = [replica.client() for replica in replicas]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for client in clients:
                session = client.create_new_session("user-rotation")
                assert session.access_token
                assert session.anti_csrf_token
                for other in clients:
                    other.get_session(
                        session.access_token.value, session.anti_csrf_token.value
                    )
            time.sleep(0.2)
    finally:
        for client in clients:
            client.close()
    # About 5 s of signing with a 2 s interval: the first key and two or
    # three rotations, each made by exactly one of the replicas.
    count = _signing_key_count(database_url)
    assert 3 <= count <= 4
