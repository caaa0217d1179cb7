"""Three daemons on one database behind a client-side round robin."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable

import jwt
import pytest
from sessiond_testing import DaemonProcess, mysql_connect, rotate_keys

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


def _kids(client: sessiond.SessionClient) -> set[str]:
    return {str(key["kid"]) for key in client.get_jwks()["keys"]}


def test_idle_replica_lists_rotated_key(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    signer = start_daemon(database_url)
    idle = start_daemon(database_url)
    with signer.client() as signing_client, idle.client() as idle_client:
        before = _kids(idle_client)
        rotate_keys(database_url)
        # A signing daemon switches to the new key within about a second.
        deadline = time.monotonic() + 3
        while True:
            session = signing_client.create_new_session("user-jwks")
            assert session.access_token is not None
            new_kid = jwt.get_unverified_header(session.access_token.value)["kid"]
            if new_kid not in before:
                break
            assert time.monotonic() < deadline, "the signer never switched keys"
            time.sleep(0.1)

        # The idle replica signs and verifies nothing, yet lists the key
        # within about a second of the rotation.
        deadline = time.monotonic() + 3
        while new_kid not in _kids(idle_client):
            assert time.monotonic() < deadline, "the idle replica never listed the key"
            time.sleep(0.1)


def test_idle_replica_never_lists_no_key(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    # A key signs for 1 s and then verifies for the token lifetime plus 2 s,
    # the time other daemons may go on signing with it. Without a new key
    # the set would be empty about 4 s after start.
    daemon = start_daemon(
        database_url,
        key_rotation_interval_s=1,
        access_token_validity_s=1,
        clock_skew_leeway_s=0,
    )
    with daemon.client() as client:
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            assert _kids(client), "the JWK Set was empty"
            time.sleep(0.25)
