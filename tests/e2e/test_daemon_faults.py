"""Crashes, lock contention and start-up failures of a real daemon process."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sessiond_testing import DaemonProcess, mysql_connect

import sessiond


def _serve(args: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond_server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["--access-token-validity-s", "0"], "access_token_validity_s"),
        (["--listen", "nowhere"], "listen"),
        (["--database-url", "postgres://x/y"], "database_url"),
        (["--signing-algorithm", "HS256"], "signing_algorithm"),
    ],
)
def test_bad_config_exits_with_one_line(args: list[str], cause: str) -> None:
    result = _serve(args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert cause in lines[0]


def test_bad_config_file_exits(tmp_path: Path) -> None:
    config = tmp_path / "sessiond.toml"
    config.write_text('access_token_validity_s = "one hour"\n')
    result = _serve(["--config", str(config)])
    assert result.returncode == 2
    assert "access_token_validity_s" in result.stderr


def test_unreachable_database_exits(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    result = _serve(
        [
            "--database-url",
            f"mysql://root@127.0.0.1:{closed_port}/test",
            "--db-timeout-s",
            "2",
        ]
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("sessiond: cannot start:")
    assert "database" in last_line.lower() or "mysql" in last_line.lower()


def test_port_in_use_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(
            [
                "--listen",
                f"127.0.0.1:{port}",
                "--database-url",
                f"sqlite:///{tmp_path / 'db'}",
            ]
        )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("sessiond: cannot start: listen:")


def _count_rows(database_url: str, handles: list[str]) -> int:
    marks = ", ".join(["%s"] * len(handles))
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url[len("sqlite:///") :]) as connection:
            query = f"SELECT COUNT(*) FROM sessiond_sessions WHERE session_handle IN ({marks.replace('%s', '?')})"
            return int(connection.execute(query, handles).fetchone()[0])
    connection = mysql_connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM sessiond_sessions WHERE session_handle IN ({marks})",
                handles,
            )
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_kill_9_keeps_acknowledged_writes(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, refresh_grace_period_s=0)
    created: list[str] = []
    updated: dict[str, int] = {}
    refreshed: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def work(worker: int) -> None:
        with daemon.client(timeout=5) as client:
            for step in range(10_000):
                if stop.is_set():
                    return
                try:
                    session = client.create_new_session(
                        f"crash-{worker}", None, {"step": 0}
                    )
                    with lock:
                        created.append(session.handle)
                    version = client.update_session_data(session.handle, {"step": step})
                    with lock:
                        updated[session.handle] = step
                    assert version == 2
                    assert session.refresh_token is not None
                    child = client.refresh_session(session.refresh_token.value)
                    assert child.refresh_token is not None
                    with lock:
                        refreshed[session.handle] = child.refresh_token.value
                except sessiond.SessionError:
                    return

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    daemon.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(created) > 20, "the load must have made progress before the crash"

    restarted = start_daemon(database_url, refresh_grace_period_s=0)
    with restarted.client() as client:
        assert _count_rows(database_url, created) == len(created)
        for handle, step in updated.items():
            assert client.get_session_data(handle) == {"step": step}
        for handle, refresh_token in refreshed.items():
            # The acknowledged refresh left its parent stored, so the child
            # it returned is still a valid token.
            assert client.refresh_session(refresh_token).handle == handle


@pytest.mark.mysql
def test_lock_wait_retried_then_reported(
    start_daemon: Callable[..., DaemonProcess], mysql_url: str
) -> None:
    daemon = start_daemon(mysql_url, db_timeout_s=4)
    with daemon.client(timeout=30) as client:
        session = client.create_new_session("user-lock", None, {"v": 0})
        holder = mysql_connect(mysql_url)
        try:
            with holder.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    "SELECT * FROM sessiond_sessions WHERE session_handle = %s FOR UPDATE",
                    (session.handle,),
                )
                # innodb_lock_wait_timeout is a quarter of db_timeout_s, so
                # each of the three attempts waits about 1 s before giving up.
                started = time.monotonic()
                with pytest.raises(sessiond.UnavailableError, match="after 3 attempts"):
                    client.update_session_data(session.handle, {"v": 1})
                assert time.monotonic() - started < 10
                assert client.get_session_data(session.handle) == {"v": 0}

                # A lock released while the call is retrying lets it succeed.
                result: dict[str, Any] = {}

                def update() -> None:
                    result["version"] = client.update_session_data(
                        session.handle, {"v": 2}
                    )

                thread = threading.Thread(target=update)
                thread.start()
                time.sleep(1.5)
                cursor.execute("ROLLBACK")
                thread.join(30)
        finally:
            holder.close()
        assert result["version"] == 2
        assert client.get_session_data(session.handle) == {"v": 2}
    assert "database call failed, retrying" in daemon.log()
