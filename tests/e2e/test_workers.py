"""``sessiond serve`` with workers = 2: one supervisor and two serving processes on one port."""

from __future__ import annotations

import array
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sessiond_testing import (
    WorkersDaemonProcess,
    free_port_range,
    process_running,
)

import sessiond
from sessiond_server import workers
from sessiond_server.config import load_config, setting_names
from sessiond_server.transport import StartError

# Each client opens a TCP connection of its own. The kernel picks a worker
# for each new connection by a hash of its addresses and ports, and the
# client's port is random. After this many clients, the chance that one of
# two workers got none of them is 2 ** -39.
MAX_CLIENTS = 40
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Replaces the supervisor's 10 s WORKER_TIMEOUT_S, to keep the tests short
# but above the 3 s after which a heartbeat counts as late.
TEST_WORKER_TIMEOUT_S = 4.0
TIMEOUT_VARIABLE = workers.WORKER_TIMEOUT_VARIABLE
VERIFY_OK = 'sessiond_grpc_calls_total{code="OK",method="VerifySession"}'


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'workers.db'}"


@pytest.fixture
def start_workers(
    tmp_path: Path,
) -> Iterator[Callable[..., WorkersDaemonProcess]]:
    """Start supervisors on a free fixed port; stop them and their workers at teardown.

    workers is 2 unless a config file (config=PATH) sets it.
    """
    started: list[tuple[WorkersDaemonProcess, list[int]]] = []

    def start(database_url: str, **settings: Any) -> WorkersDaemonProcess:
        settings.setdefault("listen", f"127.0.0.1:{free_port_range(1)}")
        if "config" not in settings:
            settings.setdefault("workers", 2)
        log = tmp_path / f"sessiond-{len(started)}.log"
        daemon = WorkersDaemonProcess(database_url, log, **settings)
        daemon.start()
        started.append((daemon, daemon.worker_pids()))
        return daemon

    yield start
    for daemon, worker_pids in started:
        daemon.stop()
        # A test that failed half-way may leave a worker without its
        # supervisor; end only processes that this fixture started.
        for pid in worker_pids:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def _sample(text: str, sample: str) -> float:
    """Return the value of sample, or 0 when the counter has no such series yet."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return 0.0 if match is None else float(match.group(1))


def _wait_until_stopped(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Return the PIDs among pids still running after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [pid for pid in pids if process_running(pid)]
        if not running:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if process_running(pid)]


def _serve(args: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond_server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_sessions_cross_workers(
    start_workers: Callable[..., WorkersDaemonProcess], database_url: str
) -> None:
    metrics_port = free_port_range(2)
    daemon = start_workers(database_url, metrics_listen=f"127.0.0.1:{metrics_port}")
    assert daemon.workers_in_line == 2
    assert len(daemon.worker_pids()) == 2

    with daemon.client() as creator:
        session = creator.create_new_session("user-workers", {"role": "a"}, {"k": 1})
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    access_token = session.access_token.value
    anti_csrf_token = session.anti_csrf_token.value

    clients: list[sessiond.SessionClient] = []
    verifies = 0
    counts = [0.0, 0.0]
    try:
        while 0.0 in counts and len(clients) < MAX_CLIENTS:
            client = daemon.client(options=OWN_CONNECTION)
            clients.append(client)
            verified = client.get_session(access_token, anti_csrf_token)
            assert verified.handle == session.handle
            assert verified.access_token_payload == {"role": "a"}
            assert client.get_session_data(session.handle) == {"k": 1}
            verifies += 1
            counts = [
                _sample(_scrape(metrics_port + index), VERIFY_OK) for index in range(2)
            ]
        # Worker i serves metrics on metrics_port + i, so each count is
        # that worker's own, and together they account for every call.
        assert counts[0] > 0, f"worker 0 served none of {verifies} verifies"
        assert counts[1] > 0, f"worker 1 served none of {verifies} verifies"
        assert sum(counts) == verifies

        # Both workers have clients, so the revoke is seen from the other
        # worker whichever one serves it.
        assert clients[-1].revoke_session(session.handle) is True
        for client in clients[:-1]:
            with pytest.raises(sessiond.UnauthorisedError):
                client.get_session(access_token, anti_csrf_token, check_database=True)
            with pytest.raises(sessiond.UnauthorisedError):
                client.get_session_data(session.handle)
    finally:
        for client in clients:
            client.close()


def test_sigterm_stops_every_worker(
    start_workers: Callable[..., WorkersDaemonProcess], tmp_path: Path
) -> None:
    # workers comes from a file here, which the workers must read too.
    config = tmp_path / "sessiond.toml"
    config.write_text("workers = 2\n")
    daemon = start_workers(_sqlite_url(tmp_path), config=str(config))
    assert daemon.workers_in_line == 2
    worker_pids = daemon.worker_pids()
    assert len(worker_pids) == 2

    assert daemon.stop() == 0

    # The supervisor waits for its workers before it exits.
    for pid in worker_pids:
        assert not process_running(pid), f"worker {pid} still runs"
    log = daemon.log()
    for index in range(2):
        assert f"worker stopped index={index} " in log
    assert "status=exit code 0" in log


def test_killed_worker_stops_daemon(
    start_workers: Callable[..., WorkersDaemonProcess], tmp_path: Path
) -> None:
    daemon = start_workers(_sqlite_url(tmp_path))
    assert daemon.process is not None
    killed, other = daemon.worker_pids()

    os.kill(killed, signal.SIGKILL)

    assert daemon.process.wait(20) == 1
    assert not process_running(other)
    log = daemon.log()
    assert re.search(
        rf"worker exited on its own, stopping the other workers index=\d pid={killed} "
        r"status=signal SIGKILL",
        log,
    ), log


def test_killed_supervisor_stops_workers(
    start_workers: Callable[..., WorkersDaemonProcess], tmp_path: Path
) -> None:
    daemon = start_workers(_sqlite_url(tmp_path))
    assert daemon.process is not None
    worker_pids = daemon.worker_pids()

    daemon.kill()

    assert _wait_until_stopped(worker_pids) == []
    assert daemon.log().count("supervisor exited, stopping worker") == 2


def _notifications(sock: socket.socket, until: str) -> list[tuple[str, int]]:
    """Receive notifications with their sender PIDs until one contains until."""
    received: list[tuple[str, int]] = []
    # struct ucred: three 32-bit integers, pid, uid and gid.
    credentials_size = socket.CMSG_SPACE(12)
    while not any(until in message for message, _ in received):
        data, ancillary, _, _ = sock.recvmsg(4096, credentials_size)
        sender = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = array.array("i", payload[:12])[0]
        received.append((data.decode(), sender))
    return received


def test_only_supervisor_notifies_systemd(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        sock.settimeout(10)
        daemon = WorkersDaemonProcess(
            _sqlite_url(tmp_path),
            tmp_path / "daemon.log",
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
            workers=2,
            listen=f"127.0.0.1:{free_port_range(1)}",
        )
        daemon.start()
        assert daemon.process is not None
        supervisor = daemon.process.pid
        try:
            received = _notifications(sock, "READY=1")
            # WATCHDOG_USEC of 0.4 s means a ping every 0.2 s.
            received += _notifications(sock, "WATCHDOG=1")
        finally:
            assert daemon.stop() == 0
        received += _notifications(sock, "STOPPING=1")

    ready = [message for message, _ in received if "READY=1" in message]
    assert ready == [
        f"READY=1\nSTATUS=listening on {daemon.address} with 2 worker processes"
    ]
    senders = {sender for _, sender in received}
    assert senders == {supervisor}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--workers", "2", "--listen", "unix:/tmp/w.sock"], id="unix"),
        pytest.param(["--workers", "2", "--listen", "127.0.0.1:0"], id="port-zero"),
        pytest.param(["--workers", "0"], id="zero"),
        pytest.param(["--workers", "65"], id="above-max"),
    ],
)
def test_bad_workers_setting_exits(args: list[str], tmp_path: Path) -> None:
    result = _serve([*args, "--database-url", _sqlite_url(tmp_path)])

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sessiond: invalid configuration: workers:")


def test_taken_port_fails_start(tmp_path: Path) -> None:
    # A socket without SO_REUSEPORT keeps every worker off the port.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(
            [
                "--workers",
                "2",
                "--listen",
                f"127.0.0.1:{port}",
                "--database-url",
                _sqlite_url(tmp_path),
            ]
        )

    assert result.returncode == 1
    assert "cannot start: listen: cannot bind" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sessiond: cannot start: worker \d \(pid \d+\) exited with exit code 1 "
        r"during start; its error is in the log above",
        last_line,
    ), last_line
    assert "sessiond listening on" not in result.stdout


def test_frozen_worker_stops_daemon(
    start_workers: Callable[..., WorkersDaemonProcess], tmp_path: Path
) -> None:
    daemon = start_workers(
        _sqlite_url(tmp_path), env={TIMEOUT_VARIABLE: str(TEST_WORKER_TIMEOUT_S)}
    )
    assert daemon.process is not None
    worker_pids = daemon.worker_pids()
    frozen = worker_pids[0]

    os.kill(frozen, signal.SIGSTOP)
    frozen_at = time.monotonic()

    # The supervisor notices within TEST_WORKER_TIMEOUT_S plus one 0.2 s
    # poll, and SIGKILL ends the frozen worker at once. The rest is margin
    # for a loaded machine and for the other worker's graceful stop.
    assert daemon.process.wait(TEST_WORKER_TIMEOUT_S + 20) == 1
    elapsed_s = time.monotonic() - frozen_at
    assert elapsed_s >= TEST_WORKER_TIMEOUT_S - 1.5, elapsed_s
    assert _wait_until_stopped(worker_pids, 5) == []
    log = daemon.log()
    assert re.search(
        rf"worker sent no heartbeat, stopping every worker index=\d pid={frozen} "
        rf"seconds_since_heartbeat=\d+\.\d timeout_s={TEST_WORKER_TIMEOUT_S}",
        log,
    ), log
    assert re.search(
        rf"worker stopped index=\d pid={frozen} status=signal SIGKILL", log
    ), log
    # The frozen worker is the only one named as failed.
    assert log.count("worker sent no heartbeat") == 1
    assert "worker exited on its own" not in log


def _watchdog_pause(sock: socket.socket, pause_s: float, timeout_s: float) -> bool:
    """Return whether pause_s passes with no WATCHDOG=1 on sock, within timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_ping = time.monotonic()
    while time.monotonic() < deadline:
        sock.settimeout(0.1)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            message = ""
        now = time.monotonic()
        if "WATCHDOG=1" in message:
            last_ping = now
        elif now - last_ping >= pause_s:
            return True
    return False


def test_frozen_worker_stops_watchdog_pings(
    start_workers: Callable[..., WorkersDaemonProcess], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        # The frozen worker must not end the daemon during this test.
        daemon = start_workers(
            _sqlite_url(tmp_path),
            env={
                "NOTIFY_SOCKET": path,
                "WATCHDOG_USEC": "400000",
                TIMEOUT_VARIABLE: "120",
            },
        )
        assert daemon.process is not None
        frozen = daemon.worker_pids()[1]
        # WATCHDOG_USEC of 0.4 s means a ping every 0.2 s.
        _notifications(sock, "WATCHDOG=1")

        os.kill(frozen, signal.SIGSTOP)
        try:
            # Pings stop once the heartbeat is 3 s late, so a 2 s pause
            # (ten ping intervals) must come within 3 s plus margin.
            paused = _watchdog_pause(sock, pause_s=2.0, timeout_s=20.0)
            assert daemon.process.poll() is None
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert paused, "the supervisor kept sending WATCHDOG=1 for a frozen worker"

        # Heartbeats and pings come back once the worker runs again.
        sock.settimeout(15)
        _notifications(sock, "WATCHDOG=1")
        assert daemon.stop() == 0

    log = daemon.log()
    assert re.search(
        rf"worker heartbeat late, holding back systemd watchdog pings index=\d "
        rf"pid={frozen} seconds_since_heartbeat=",
        log,
    ), log
    assert re.search(rf"worker heartbeat received again index=\d pid={frozen}", log)
    assert "worker sent no heartbeat" not in log


def test_timeout_variable_not_a_setting() -> None:
    # Every process reads SESSIOND_* variables as settings, so the test hook
    # must stay out of that namespace.
    assert TIMEOUT_VARIABLE.startswith("SESSIOND_")
    assert TIMEOUT_VARIABLE[len("SESSIOND_") :].lower() not in setting_names()
    config = load_config(environ={TIMEOUT_VARIABLE: "3"})
    assert config == load_config(environ={})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, workers.WORKER_TIMEOUT_S, id="unset"),
        pytest.param({TIMEOUT_VARIABLE: "2.5"}, 2.5, id="set"),
    ],
)
def test_worker_timeout_hook(environ: dict[str, str], expected: float) -> None:
    assert workers.worker_timeout_s(environ) == expected


@pytest.mark.parametrize("raw", ["", "soon", "0", "-1", "nan"])
def test_worker_timeout_hook_invalid(raw: str) -> None:
    with pytest.raises(StartError, match=f"{TIMEOUT_VARIABLE}=.* is invalid"):
        workers.worker_timeout_s({TIMEOUT_VARIABLE: raw})
