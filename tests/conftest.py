from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sessiond_testing import (
    IN_CI,
    MYSQL_URL,
    DaemonProcess,
    mysql_connect,
    private_mysql_database,
)

import sessiond
from sessiond_server import clock
from sessiond_server.storage import Storage, open_storage

BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]


@pytest.fixture(scope="session")
def mysql_server() -> str:
    """The test server's URL. Under CI=true an unreachable server fails the test."""
    try:
        mysql_connect().close()
    except pymysql.err.MySQLError as exc:
        message = f"MySQL test server {MYSQL_URL} is unreachable ({exc}); set SESSIOND_TEST_MYSQL_URL"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return MYSQL_URL


@pytest.fixture
def mysql_url(mysql_server: str) -> Iterator[str]:
    """A private, empty database on the test server."""
    with private_mysql_database(mysql_server) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessiond.db'}"
    url: str = request.getfixturevalue("mysql_url")
    return url


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    opened = open_storage(database_url, pool_size=4, timeout_s=5.0)
    opened.migrate(clock.now_ms())
    yield opened
    opened.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start real daemons; each is stopped at teardown and must exit 0."""
    started: list[DaemonProcess] = []

    def start(database_url: str, **settings: Any) -> DaemonProcess:
        log = tmp_path / f"sessiond-{len(started)}.log"
        daemon = DaemonProcess(database_url, log, **settings)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> DaemonProcess:
    return start_daemon(database_url)


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[sessiond.SessionClient]:
    with daemon.client() as opened:
        yield opened
