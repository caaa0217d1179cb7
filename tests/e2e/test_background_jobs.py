"""Background jobs of a running daemon while its database is unreachable.

The end-to-end test stops a private MariaDB server (see conftest.py) and
never touches the shared test server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from private_mysql import PrivateMysqlServer
from sessiond_testing import DaemonProcess

from sessiond_server.daemon import Daemon
from sessiond_server.errors import UnavailableError

MysqlStarter = Callable[..., PrivateMysqlServer]
StartDaemon = Callable[..., DaemonProcess]

UNAVAILABLE_LINE = "background job failed, database unavailable job={job} error="


def _run_job_once(job: Callable[[], None], name: str) -> None:
    """Run Daemon._every for one round of job, on a stand-in for the daemon."""
    stop = threading.Event()

    def run_then_stop() -> None:
        stop.set()
        job()

    stand_in = SimpleNamespace(_stop=stop)
    # _stop.wait returns False before the job runs and True after it.
    Daemon._every(stand_in, name, 0.001, run_then_stop)  # type: ignore[arg-type]


def test_unavailable_database_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    def reload_keys() -> None:
        raise UnavailableError("cannot connect to MySQL: Connection refused")

    with caplog.at_level(logging.WARNING, logger="sessiond_server.daemon"):
        _run_job_once(reload_keys, "key-reload")

    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        UNAVAILABLE_LINE.format(job="key-reload")
        + "cannot connect to MySQL: Connection refused"
    )
    assert record.exc_info is None


def test_unexpected_error_logs_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def reload_keys() -> None:
        raise ValueError("corrupt key row")

    with caplog.at_level(logging.WARNING, logger="sessiond_server.daemon"):
        _run_job_once(reload_keys, "key-reload")

    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "background job failed job=key-reload"
    assert record.exc_info is not None


@pytest.mark.mysql
def test_database_outage_logs_no_traceback(
    private_mysql: MysqlStarter, start_daemon: StartDaemon
) -> None:
    server = private_mysql()
    # The cleanup job runs every second. key-reload runs in the same loop,
    # but only once a minute.
    daemon = start_daemon(server.url, cleanup_interval_s=1)

    server.stop()

    expected = UNAVAILABLE_LINE.format(job="cleanup")
    deadline = time.monotonic() + 30
    while expected not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = daemon.log()
    assert expected in log, log
    assert "background job failed job=" not in log
    # The storage layer logs its retries with tracebacks at DEBUG, so only
    # the lines after the job's own warnings are checked.
    lines = log.splitlines()
    for number, line in enumerate(lines[:-1]):
        if "background job failed" in line:
            assert not lines[number + 1].startswith("Traceback"), line
