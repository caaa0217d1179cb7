"""Database faults seen by a running daemon, on private MariaDB servers.

Covered: pooled connections closed by the server (idle timeout, KILL) and
a server restart while the daemon runs. Also Unicode beyond the BMP on a
latin1 and on a utf8mb4 server, and session data over 64 KiB in non-strict
and in strict SQL mode. Every test starts its own servers (see
conftest.py) and never touches the shared test server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from private_mysql import PrivateMysqlServer
from sessiond_testing import DaemonProcess

import sessiond

pytestmark = pytest.mark.mysql

MysqlStarter = Callable[..., PrivateMysqlServer]
StartDaemon = Callable[..., DaemonProcess]

UTF8MB4 = ("--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci")
LATIN1 = ("--character-set-server=latin1", "--collation-server=latin1_swedish_ci")
# The client maps DEADLINE_EXCEEDED to UnavailableError too, so the deadline
# is well above the 10 s an outage call may take: a hanging call then fails
# the elapsed-time assert instead of passing as UNAVAILABLE.
CLIENT_TIMEOUT_S = 30.0


# -- helpers ------------------------------------------------------------------


def new_database(server: PrivateMysqlServer) -> tuple[str, str]:
    """Create a database with the server's default character set, and return its name and URL."""
    name = "sessiond_" + secrets.token_hex(6)
    with server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    return name, server.url_for(name)


def query_one(server: PrivateMysqlServer, sql: str, params: Any = None) -> Any:
    """Run one query on a new admin connection and return the first column of the first row."""
    with server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        return None if row is None else row[0]


def pool_connection_ids(server: PrivateMysqlServer, database: str) -> set[int]:
    """Return the ids of the daemon's connections, found by their current database."""
    with server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE USER = 'root' AND DB = %s AND ID <> CONNECTION_ID()",
            (database,),
        )
        return {int(row[0]) for row in cursor.fetchall()}


def decode_claims(token: str) -> dict[str, Any]:
    """Decode a JWT's claims without verifying the signature."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def digest(value: Any) -> str:
    """Return the SHA-256 of a JSON value in sorted, compact form.

    Comparing digests keeps a failure message short where the values are 70 KB.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokens(session: sessiond.Session) -> tuple[str, str, str]:
    """Return the access, anti-CSRF and refresh tokens of a created or refreshed session."""
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    assert session.refresh_token is not None
    return (
        session.access_token.value,
        session.anti_csrf_token.value,
        session.refresh_token.value,
    )


def run_every_call(
    client: sessiond.SessionClient, session: sessiond.Session
) -> sessiond.Session:
    """Make each database-backed call once, writes first, and return the refreshed session.

    Any call that fails raises at once, so the failure names the call.
    """
    access, csrf, refresh = tokens(session)
    new_version = client.update_session_data(session.handle, {"x": 1})
    assert new_version >= 2

    refreshed = client.refresh_session(refresh)
    assert refreshed.handle == session.handle

    created = client.create_new_session(session.user_id, {}, {})
    assert created.handle != session.handle

    verified = client.get_session(access, csrf, check_database=True)
    assert verified.handle == session.handle
    assert client.get_session_data(session.handle) == {"x": 1}
    handles = client.get_all_session_handles_for_user(session.user_id)
    assert session.handle in handles
    return refreshed


def fill_pool(
    client: sessiond.SessionClient,
    server: PrivateMysqlServer,
    database: str,
    pool_size: int,
) -> list[sessiond.Session]:
    """Create sessions concurrently until the daemon has pool_size connections open.

    Concurrent creates open a connection each only when they overlap inside
    the daemon. On a busy machine they often do not, so each burst sends
    three creates per connection and repeats up to 20 times. Returns
    pool_size sessions of the last burst.
    """
    sessions: list[sessiond.Session] = []
    for burst in range(20):
        user_ids = [f"user-{database}-{burst}-{n}" for n in range(3 * pool_size)]
        with ThreadPoolExecutor(len(user_ids)) as executor:
            sessions = list(
                executor.map(
                    lambda user_id: client.create_new_session(user_id, {}, {"n": 0}),
                    user_ids,
                )
            )
        if len(pool_connection_ids(server, database)) == pool_size:
            break
    assert len(pool_connection_ids(server, database)) == pool_size, (
        f"the pool never held {pool_size} connections at once"
    )
    return sessions[:pool_size]


def wait_for_idle_timeout(server: PrivateMysqlServer, database: str) -> None:
    """Sleep past the server's 5 s wait_timeout and check that it closed idle connections.

    The daemon's health check runs a query every 2 s on one pooled connection,
    which keeps that one alive or opens a new one. So only some of the
    connections open before the sleep are closed when it ends.
    """
    opened = pool_connection_ids(server, database)
    time.sleep(7.5)
    closed = opened - pool_connection_ids(server, database)
    assert closed, "the server closed none of the idle connections"


# -- servers shared by the tests of this module ---------------------------------


@pytest.fixture(scope="module")
def utf8mb4_server(module_private_mysql: MysqlStarter) -> PrivateMysqlServer:
    """A server with utf8mb4 as its default character set and the default strict SQL mode."""
    return module_private_mysql(*UTF8MB4)


@pytest.fixture(scope="module")
def latin1_server(module_private_mysql: MysqlStarter) -> PrivateMysqlServer:
    return module_private_mysql(*LATIN1)


@pytest.fixture(scope="module")
def nonstrict_server(module_private_mysql: MysqlStarter) -> PrivateMysqlServer:
    """A server whose global sql_mode is empty, so it truncates oversized values."""
    return module_private_mysql(*UTF8MB4, "--sql-mode=")


@pytest.fixture
def idle_timeout_server(private_mysql: MysqlStarter) -> PrivateMysqlServer:
    """A server that closes connections idle for 5 s."""
    server = private_mysql(*UTF8MB4, "--wait-timeout=5", "--interactive-timeout=5")
    assert query_one(server, "SELECT @@GLOBAL.wait_timeout") == 5
    assert query_one(server, "SELECT @@GLOBAL.interactive_timeout") == 5
    return server


# -- pooled connections closed by the server ------------------------------------


def test_reads_first_after_idle_timeout(
    idle_timeout_server: PrivateMysqlServer, start_daemon: StartDaemon
) -> None:
    database, url = new_database(idle_timeout_server)
    daemon = start_daemon(url, db_pool_size=4)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        first, second, third, fourth = fill_pool(
            client, idle_timeout_server, database, 4
        )
        wait_for_idle_timeout(idle_timeout_server, database)

        access, csrf, _ = tokens(first)
        verified = client.get_session(access, csrf, check_database=True)
        assert verified.handle == first.handle
        assert client.get_session_data(second.handle) == {"n": 0}
        assert client.update_session_data(third.handle, {"x": 1}) == 2
        _, _, refresh = tokens(fourth)
        assert client.refresh_session(refresh).handle == fourth.handle
        assert client.get_all_session_handles_for_user(first.user_id) == [first.handle]
        assert client.create_new_session("user-idle-new", {}, {}).handle


def test_writes_first_after_idle_timeout(
    idle_timeout_server: PrivateMysqlServer, start_daemon: StartDaemon
) -> None:
    database, url = new_database(idle_timeout_server)
    daemon = start_daemon(url, db_pool_size=4)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        sessions = fill_pool(client, idle_timeout_server, database, 4)
        wait_for_idle_timeout(idle_timeout_server, database)

        # DBUtils 3.2 replaces a dead connection by itself only outside a
        # transaction, so a write meets the dead connections one after another.
        run_every_call(client, sessions[0])


def test_killed_pool_connections_reconnect(
    utf8mb4_server: PrivateMysqlServer, start_daemon: StartDaemon
) -> None:
    database, url = new_database(utf8mb4_server)
    daemon = start_daemon(url, db_pool_size=4)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        sessions = fill_pool(client, utf8mb4_server, database, 4)
        victims = pool_connection_ids(utf8mb4_server, database)
        with utf8mb4_server.connect() as admin, admin.cursor() as cursor:
            for connection_id in victims:
                cursor.execute(f"KILL {connection_id}")
        # A killed thread may stay in the process list for a moment.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if not pool_connection_ids(utf8mb4_server, database) & victims:
                break
            time.sleep(0.05)
        survivors = pool_connection_ids(utf8mb4_server, database) & victims
        assert survivors == set()

        for session in sessions:
            run_every_call(client, session)


def test_locked_account_reports_unavailable(
    utf8mb4_server: PrivateMysqlServer, start_daemon: StartDaemon
) -> None:
    """A server that rejects the daemon's account is an outage, not an internal error."""
    database, _ = new_database(utf8mb4_server)
    account = f"app_{database[-8:]}"
    with utf8mb4_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE USER '{account}'@'127.0.0.1'")
        cursor.execute(f"GRANT ALL ON `{database}`.* TO '{account}'@'127.0.0.1'")
    url = f"mysql://{account}@127.0.0.1:{utf8mb4_server.port}/{database}"
    daemon = start_daemon(url, db_pool_size=2)

    with daemon.client(timeout=CLIENT_TIMEOUT_S, retries=0) as client:
        session = client.create_new_session("locked out")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        with utf8mb4_server.connect() as admin, admin.cursor() as cursor:
            cursor.execute(f"ALTER USER '{account}'@'127.0.0.1' ACCOUNT LOCK")
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE user = %s",
                (account,),
            )
            for (connection_id,) in cursor.fetchall():
                cursor.execute(f"KILL {connection_id}")

        with pytest.raises(sessiond.UnavailableError) as raised:
            client.get_session(
                session.access_token.value,
                session.anti_csrf_token.value,
                check_database=True,
            )

    assert "account" in raised.value.message


# -- server restart -----------------------------------------------------------------


def wait_for_health(address: str, expected: str, within_s: float) -> bool:
    """Poll the gRPC health service until it reports expected; return whether it did."""
    want = health_pb2.HealthCheckResponse.ServingStatus.Value(expected)
    deadline = time.monotonic() + within_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if response.status == want:
                return True
            time.sleep(0.2)
    return False


def test_server_restart_while_daemon_runs(
    private_mysql: MysqlStarter, start_daemon: StartDaemon
) -> None:
    server = private_mysql(*UTF8MB4)
    database, url = new_database(server)
    daemon = start_daemon(url, db_timeout_s=3, db_pool_size=4)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        # A busy daemon has several connections open when the server goes away.
        session = fill_pool(client, server, database, 4)[0]
        access, csrf, refresh = tokens(session)

        server.stop()

        started = time.monotonic()
        with pytest.raises(sessiond.UnavailableError) as outage:
            client.get_session(access, csrf, check_database=True)
        elapsed_s = time.monotonic() - started
        assert elapsed_s < 10, f"verify took {elapsed_s:.1f} s during the outage"
        assert outage.value.code == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(sessiond.UnavailableError):
            client.refresh_session(refresh)

        # The health check pings the database every 2 s.
        assert wait_for_health(daemon.address, "NOT_SERVING", within_s=10)

        server.start()
        assert wait_for_health(daemon.address, "SERVING", within_s=10)

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                client.get_session(access, csrf, check_database=True)
                break
            except sessiond.UnavailableError:
                time.sleep(0.2)
        recovered = client.get_session(access, csrf, check_database=True)
        assert recovered.handle == session.handle

        # The refresh that failed in the outage stored nothing, so the
        # previous refresh token is still the stored one.
        refreshed = client.refresh_session(refresh)
        assert refreshed.handle == session.handle
        run_every_call(client, refreshed)


# -- Unicode --------------------------------------------------------------------

USER_ID = "u-ñ-東京-🚀"
PAYLOAD = {
    "displayName": "Ünïcødé Tëst 名前 🎉",
    "🔑": "värde",
    "rtl": "שלום",
    "zwj": "👩🏽\u200d💻",
}
DATA = {"note": "Привет 👋🏽", "nested": {"ключ": "값"}}
NEW_DATA = {"note": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓"}
ROCKET_UTF8_HEX = "F09F9A80"


@pytest.mark.parametrize("server_fixture", ["latin1_server", "utf8mb4_server"])
def test_unicode_round_trip(
    server_fixture: str, request: pytest.FixtureRequest, start_daemon: StartDaemon
) -> None:
    server: PrivateMysqlServer = request.getfixturevalue(server_fixture)
    database, url = new_database(server)
    expected_charset = "latin1" if server_fixture == "latin1_server" else "utf8mb4"
    charset = query_one(
        server,
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME = %s",
        (database,),
    )
    assert charset == expected_charset
    daemon = start_daemon(url)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        session = client.create_new_session(USER_ID, PAYLOAD, DATA)
        assert session.user_id == USER_ID
        assert session.access_token_payload == PAYLOAD
        access, csrf, refresh = tokens(session)

        verified = client.get_session(access, csrf, check_database=True)
        assert verified.user_id == USER_ID
        assert verified.access_token_payload == PAYLOAD

        claims = decode_claims(access)
        assert claims["sub"] == USER_ID
        assert {name: claims.get(name) for name in PAYLOAD} == PAYLOAD

        assert client.get_session_data(session.handle) == DATA

        refreshed = client.refresh_session(refresh)
        assert refreshed.user_id == USER_ID
        assert refreshed.access_token_payload == PAYLOAD
        new_access, new_csrf, _ = tokens(refreshed)
        reverified = client.get_session(new_access, new_csrf, check_database=True)
        assert reverified.user_id == USER_ID
        assert reverified.access_token_payload == PAYLOAD

        assert client.get_all_session_handles_for_user(USER_ID) == [session.handle]

        client.update_session_data(session.handle, NEW_DATA)
        assert client.get_session_data(session.handle) == NEW_DATA

    with server.connect(database) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT HEX(user_id) FROM sessiond_sessions WHERE session_handle = %s",
            (session.handle,),
        )
        stored_hex = cursor.fetchone()[0]
    assert ROCKET_UTF8_HEX in stored_hex
    assert stored_hex == USER_ID.encode("utf-8").hex().upper()


# -- values over 64 KiB -----------------------------------------------------------


@pytest.mark.parametrize(
    ("server_fixture", "sql_mode"),
    [("nonstrict_server", ""), ("utf8mb4_server", None)],
    ids=["sql_mode_empty", "sql_mode_default"],
)
def test_large_session_data_round_trip(
    server_fixture: str,
    sql_mode: str | None,
    request: pytest.FixtureRequest,
    start_daemon: StartDaemon,
) -> None:
    server: PrivateMysqlServer = request.getfixturevalue(server_fixture)
    if sql_mode is not None:
        assert query_one(server, "SELECT @@GLOBAL.sql_mode") == sql_mode
    database, url = new_database(server)
    daemon = start_daemon(url)
    data = {"blob": "a" * 70_000}
    new_data = {"blob": "c" * 70_000}

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        session = client.create_new_session("user-2001", {"r": 1}, data)
        assert digest(client.get_session_data(session.handle)) == digest(data)

        stored = query_one(
            server,
            f"SELECT SHA2(session_data, 256) FROM `{database}`.sessiond_sessions "
            "WHERE session_handle = %s",
            (session.handle,),
        )
        sent = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        assert stored == hashlib.sha256(sent.encode("utf-8")).hexdigest()

        _, _, refresh = tokens(session)
        client.refresh_session(refresh)
        assert digest(client.get_session_data(session.handle)) == digest(data)

        client.update_session_data(session.handle, new_data)
        assert digest(client.get_session_data(session.handle)) == digest(new_data)


@pytest.mark.parametrize(
    "server_fixture",
    ["nonstrict_server", "utf8mb4_server"],
    ids=["sql_mode_empty", "sql_mode_default"],
)
def test_oversized_payload_is_rejected(
    server_fixture: str, request: pytest.FixtureRequest, start_daemon: StartDaemon
) -> None:
    server: PrivateMysqlServer = request.getfixturevalue(server_fixture)
    _, url = new_database(server)
    daemon = start_daemon(url)

    with daemon.client(timeout=CLIENT_TIMEOUT_S) as client:
        # The default max_access_token_payload_bytes is 16384.
        with pytest.raises(sessiond.InvalidArgumentError) as rejected:
            client.create_new_session("user-2002", {"blob": "b" * 70_000}, {})
        assert rejected.value.field == "access_token_payload"
        assert "access_token_payload" in rejected.value.message
        assert client.get_all_session_handles_for_user("user-2002") == []
