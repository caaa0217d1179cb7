"""Test support: a real ``sessiond serve`` process and private MySQL databases."""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymysql

import sessiond

MYSQL_URL = os.environ.get(
    "SESSIOND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
START_TIMEOUT_S = 30.0


def mysql_connect(url: str = MYSQL_URL, **extra: Any) -> pymysql.Connection:  # type: ignore[type-arg]
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
        **extra,
    )


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@contextmanager
def private_mysql_database(url: str = MYSQL_URL) -> Iterator[str]:
    """Create an empty database on the test server, yield its URL, drop it."""
    name = "sessiond_test_" + secrets.token_hex(6)
    admin = mysql_connect(url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
        yield with_database(url, name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def rotate_keys(database_url: str, *settings: str) -> None:
    """Run ``sessiond keys rotate`` on the database; settings are extra flags."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sessiond_server",
            "keys",
            "rotate",
            "--database-url",
            database_url,
            *settings,
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"sessiond keys rotate failed: {result.stderr}"


class DaemonProcess:
    """A ``sessiond serve`` child process on a free loopback port.

    Settings are passed as command-line flags. stderr (the log) goes to a
    file so tests can read it; stdout carries the listen address.
    """

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.database_url = database_url
        self.env = env
        self.log_path = log_path
        self.settings = settings
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self._reader: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        args = [
            sys.executable,
            "-m",
            "sessiond_server",
            "serve",
            "--database-url",
            self.database_url,
        ]
        settings = {"listen": "127.0.0.1:0", "log_level": "DEBUG", **self.settings}
        for name, value in settings.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["--" + name.replace("_", "-"), text]
        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        env = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        log.close()
        self.address = self._read_address()
        return self

    def _read_address(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        self._reader = threading.Thread(
            target=lambda: [lines.put(line) for line in stdout], daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("sessiond listening on "):
                return line.split(" on ", 1)[1].strip()
        self.kill()
        raise RuntimeError(f"sessiond did not start; log:\n{self.log()}")

    def client(self, **options: Any) -> sessiond.SessionClient:
        return sessiond.SessionClient(self.address, **options)

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def stop(self, timeout_s: float = 20.0) -> int:
        """Send SIGTERM and return the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close_stdout()

    def kill(self) -> None:
        """Send SIGKILL, as a crash would, and wait for the exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_stdout()

    def _close_stdout(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def free_port_range(count: int) -> int:
    """Return the first of count consecutive TCP ports on 127.0.0.1 that were free a moment ago.

    NOTE: another process may take a port before the daemon binds it. The
    start then fails with "cannot bind" and is not retried.
    """
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first: int = probe.getsockname()[1]
        if first + count - 1 > 65535:
            continue
        probes = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(probes):
                sock.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
        return first
    raise RuntimeError(f"found no {count} consecutive free ports on 127.0.0.1")


def child_pids(pid: int) -> list[int]:
    """Return the PIDs of the running children of pid, from the parent PIDs in /proc/*/stat."""
    children: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process exited during the scan
            continue
        # The command name in brackets may contain spaces and brackets, so
        # the fields are counted from the last closing bracket.
        state, parent = text.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            children.append(int(text.split(" ", 1)[0]))
    return sorted(children)


def process_running(pid: int) -> bool:
    """Return whether pid exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


class WorkersDaemonProcess(DaemonProcess):
    """A ``sessiond serve`` supervisor with workers > 1, and its worker processes.

    Pass a fixed ``listen`` port, because workers > 1 rejects port 0.
    """

    workers_in_line = 0

    def start(self) -> WorkersDaemonProcess:
        super().start()
        # The supervisor prints "sessiond listening on ADDRESS (N workers)".
        address, count = self.address.split(" (", 1)
        self.address = address
        self.workers_in_line = int(count.split(" ", 1)[0])
        return self

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return child_pids(self.process.pid)


def scrape_metrics(daemon: DaemonProcess) -> str:
    """Return the text of the daemon's Prometheus endpoint (metrics_listen must be set)."""
    match = re.search(r"metrics listening address=(\S+)", daemon.log())
    assert match is not None, daemon.log()
    url = f"http://{match.group(1)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def metric_value(text: str, sample: str) -> float:
    """Return the value of one sample, such as ``name{label="x"}``, in a scrape."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{sample} missing from the scrape"
    return float(match.group(1))
