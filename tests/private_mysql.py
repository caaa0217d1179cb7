"""A private MariaDB server for tests that stop, restart or reconfigure the database.

Such tests must never touch the shared test server, so each one starts
``mariadbd`` itself. The server gets a data folder of its own, a free port
on 127.0.0.1, a Unix socket in its folder and any extra server options the
test needs. The root user has an empty password and may log in over TCP.

``mariadbd`` is started with ``--no-defaults``, so no option file of the
machine applies. The compiled-in defaults then hold: on MariaDB 10.11 the
server character set is latin1 and the SQL mode is strict
(STRICT_TRANS_TABLES). A test that wants a utf8mb4 server must pass
``--character-set-server=utf8mb4`` itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = os.environ.get("SESSIOND_TEST_MARIADBD", "/usr/sbin/mariadbd")
INSTALL_DB = "mariadb-install-db"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class PrivateMysqlError(RuntimeError):
    """The private server could not be installed, started or stopped."""


def mariadbd_available() -> bool:
    """Return whether the server binary and the data folder installer are installed."""
    return os.access(MARIADBD, os.X_OK) and shutil.which(INSTALL_DB) is not None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    NOTE: another process may take the port before mariadbd binds it. The
    start then fails with "Can't start server: Bind on TCP/IP port" in the
    error log and is not retried.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def install_data_folder(data_dir: Path) -> None:
    """Create an empty MariaDB data folder whose root user has no password."""
    args = [
        INSTALL_DB,
        "--no-defaults",
        f"--datadir={data_dir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]
    if RUNNING_AS_ROOT:
        args.append("--user=root")
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise PrivateMysqlError(
            f"{INSTALL_DB} failed with exit code {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


class PrivateMysqlServer:
    """One ``mariadbd`` process on a data folder under ``folder``.

    A server that is stopped and started again keeps its data folder and
    its port, as a restarted production server would.

    Args:
        folder: an empty folder for the data folder, socket and logs.
        options: extra server options, such as ``--wait-timeout=5``.
        template: a data folder made by ``install_data_folder``, copied
            instead of running the installer again, which takes seconds.
    """

    def __init__(
        self,
        folder: Path,
        options: Sequence[str] = (),
        *,
        template: Path | None = None,
    ) -> None:
        self.folder = folder
        self.options = list(options)
        self.template = template
        self.data_dir = folder / "data"
        self.socket_path = folder / "mysqld.sock"
        self.error_log = folder / "error.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the URL of the ``test`` database, as root with an empty password."""
        return self.url_for("test")

    def url_for(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> PrivateMysqlServer:
        """Start the server and wait until it accepts connections.

        The first start creates the data folder and the ``test`` database
        and picks a free port. Later starts reuse both.
        """
        if self.running:
            raise PrivateMysqlError(f"server on port {self.port} is already running")
        first_start = not self.data_dir.exists()
        if first_start:
            if self.template is not None:
                shutil.copytree(self.template, self.data_dir)
            else:
                install_data_folder(self.data_dir)
        if self.port == 0:
            self.port = free_port()
        self._spawn()
        self._wait_until_ready()
        if first_start:
            with self.connect() as admin, admin.cursor() as cursor:
                cursor.execute("CREATE DATABASE IF NOT EXISTS test")
        return self

    def _spawn(self) -> None:
        args = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            "--skip-networking=0",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={self.folder / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            *self.options,
        ]
        if RUNNING_AS_ROOT:
            # mariadbd exits at start when run as root without --user=root.
            args.append("--user=root")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group, so a Ctrl-C meant for pytest does not
            # stop the server in the middle of a test.
            start_new_session=True,
        )

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise PrivateMysqlError(
                    f"mariadbd exited with code {code} on port {self.port}; "
                    f"error log:\n{self.error_log_tail()}"
                )
            try:
                self.connect(connect_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        self.kill()
        raise PrivateMysqlError(
            f"mariadbd did not accept connections on port {self.port} within "
            f"{START_TIMEOUT_S} s; error log:\n{self.error_log_tail()}"
        )

    def connect(self, database: str | None = None, **extra: Any) -> pymysql.Connection:  # type: ignore[type-arg]
        """Open an autocommit connection as root over TCP, which the caller closes."""
        options: dict[str, Any] = {"connect_timeout": 5, **extra}
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            **options,
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send SIGTERM to the server's PID and wait for a clean shutdown."""
        if self.process is None:
            return
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PrivateMysqlError(
                f"mariadbd on port {self.port} did not stop within {timeout_s} s "
                "of SIGTERM and was killed"
            ) from None
        self.process = None

    def restart(self) -> PrivateMysqlServer:
        """Stop the server, then start it again on the same data folder and port."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """Send SIGKILL to the server's PID, as a crash would, and wait for the exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    @property
    def pid(self) -> int:
        """Return the PID of the running ``mariadbd``."""
        if not self.running:
            raise PrivateMysqlError(f"server on port {self.port} is not running")
        assert self.process is not None
        return self.process.pid

    def freeze(self) -> None:
        """Send SIGSTOP to the server's PID: it keeps accepting TCP but never responds.

        Call thaw() before stop(), which otherwise waits for a server that
        cannot run.
        """
        os.kill(self.pid, signal.SIGSTOP)
        # The signal takes effect when the kernel next schedules the server,
        # so wait until every thread shows the stopped state (T).
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise PrivateMysqlError(f"server pid {self.pid} did not stop")
            time.sleep(0.01)

    def _all_threads_stopped(self) -> bool:
        for stat in Path(f"/proc/{self.pid}/task").glob("*/stat"):
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "T":
                return False
        return True

    def thaw(self) -> None:
        """Send SIGCONT to the server's PID after freeze()."""
        os.kill(self.pid, signal.SIGCONT)

    def error_log_tail(self, lines: int = 30) -> str:
        if not self.error_log.exists():
            return "(no error log)"
        text = self.error_log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
