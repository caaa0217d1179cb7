"""Run ``workers`` serving processes on one TCP port and supervise them.

With workers > 1, ``sessiond serve`` becomes a supervisor. It applies
migrations once, then starts each worker as ``python -m sessiond_server``
with its own arguments plus ``--worker-index I``. Every worker binds the
listen port with SO_REUSEPORT, so the kernel spreads new TCP connections
over them. Only the supervisor talks to systemd. When any worker exits on
its own, the supervisor stops the others and exits 1, so the service
manager can restart the whole daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from . import systemd
from .config import Config
from .daemon import open_and_migrate
from .transport import StartError

logger = logging.getLogger(__name__)

# The line a serving process prints on stdout once it accepts calls.
LISTENING_PREFIX = "sessiond listening on "
# Starting Python, importing grpc and opening the database pool takes about
# a second per worker, so this leaves room for a loaded machine.
START_TIMEOUT_S = 60.0
# Workers get shutdown_grace_s plus this long to exit after SIGTERM, before
# the supervisor sends SIGKILL.
STOP_MARGIN_S = 5.0
POLL_INTERVAL_S = 0.2


@dataclass
class Worker:
    """One worker process and the address it reported on stdout."""

    index: int
    process: subprocess.Popen[str]
    address: str = ""
    listening: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def worker_command(argv: Sequence[str], index: int) -> list[str]:
    """Return the command line of worker index: the supervisor's arguments plus worker flags.

    argparse keeps the last value of a repeated flag, so the appended
    ``--migrate-on-start false`` wins over any earlier one.
    """
    return [
        sys.executable,
        "-m",
        "sessiond_server",
        *argv,
        "--migrate-on-start",
        "false",
        "--worker-index",
        str(index),
    ]


def exit_status(returncode: int) -> str:
    """Describe a Popen return code: ``exit code 1`` or ``signal SIGKILL``."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def supervise(config: Config, argv: Sequence[str], stopping: threading.Event) -> int:
    """Start config.workers worker processes and stop them all when one exits or stopping is set.

    Returns 0 after stopping is set (SIGTERM or SIGINT) and 1 after a worker
    exited on its own.

    Raises:
        StartError: the database check failed, or a worker exited or did
            not listen within START_TIMEOUT_S during start.
    """
    # Migrations run once here, so the workers never race to apply them. A
    # database that is unreachable or behind also fails here, before any
    # worker starts.
    open_and_migrate(replace(config, db_pool_size=1)).close()
    workers: list[Worker] = []
    try:
        environment = systemd.environment_without_notify(os.environ)
        for index in range(config.workers):
            workers.append(_start_worker(index, argv, environment))
        address = _wait_until_listening(workers, stopping)
        if address is None:
            logger.info("stopping workers during start")
            return 0
        print(f"{LISTENING_PREFIX}{address} ({len(workers)} workers)", flush=True)
        logger.info(
            "workers listening address=%s workers=%d pids=%s",
            address,
            len(workers),
            ",".join(str(worker.pid) for worker in workers),
        )
        systemd.notify(
            f"READY=1\nSTATUS=listening on {address} with {len(workers)} worker processes"
        )
        exited = _wait_for_exit(workers, stopping)
        if exited is None:
            return 0
        logger.error(
            "worker exited on its own, stopping the other workers index=%d pid=%d status=%s",
            exited.index,
            exited.pid,
            exit_status(exited.process.returncode),
        )
        return 1
    finally:
        systemd.notify("STOPPING=1")
        _stop_workers(workers, config.shutdown_grace_s + STOP_MARGIN_S)


def _start_worker(
    index: int, argv: Sequence[str], environment: dict[str, str]
) -> Worker:
    try:
        process = subprocess.Popen(
            worker_command(argv, index),
            # The worker stops when this pipe reaches end of file, that is
            # when the supervisor has exited, whether it stopped or died.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            text=True,
            # A group of its own keeps a terminal's Ctrl-C from reaching the
            # workers, so they stop only on the supervisor's SIGTERM and
            # never look as if they exited on their own.
            process_group=0,
        )
    except OSError as exc:
        raise StartError(f"worker {index}: failed to start a process: {exc}") from None
    worker = Worker(index, process)
    worker.reader = threading.Thread(
        target=_read_stdout, args=(worker,), name=f"worker-{index}-stdout", daemon=True
    )
    worker.reader.start()
    logger.info("worker started index=%d pid=%d", index, worker.pid)
    return worker


def _read_stdout(worker: Worker) -> None:
    """Record the worker's listening line and pass any other output on to stdout."""
    assert worker.process.stdout is not None
    for line in worker.process.stdout:
        if not worker.listening.is_set() and line.startswith(LISTENING_PREFIX):
            worker.address = line[len(LISTENING_PREFIX) :].strip()
            worker.listening.set()
        else:
            sys.stdout.write(line)
            sys.stdout.flush()


def _wait_until_listening(
    workers: list[Worker], stopping: threading.Event
) -> str | None:
    """Return worker 0's address once every worker listens, or None when stopping is set first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stopping.is_set():
        for worker in workers:
            returncode = worker.process.poll()
            if returncode is not None:
                raise StartError(
                    f"worker {worker.index} (pid {worker.pid}) exited with "
                    f"{exit_status(returncode)} during start; its error is in the log above"
                )
        if all(worker.listening.is_set() for worker in workers):
            return workers[0].address
        if time.monotonic() > deadline:
            late = next(worker for worker in workers if not worker.listening.is_set())
            raise StartError(
                f"worker {late.index} (pid {late.pid}) did not listen within "
                f"{START_TIMEOUT_S:.0f} s; its log is above"
            )
        stopping.wait(POLL_INTERVAL_S)
    return None


def _wait_for_exit(workers: list[Worker], stopping: threading.Event) -> Worker | None:
    """Ping the systemd watchdog until a worker exits or stopping is set.

    Returns the worker that exited, or None when stopping was set.
    """
    watchdog_s = systemd.watchdog_interval_s()
    next_ping = time.monotonic()
    # Short waits, because a signal may arrive on a reader thread, and
    # Python runs its handler only once the main thread wakes.
    while not stopping.wait(POLL_INTERVAL_S):
        for worker in workers:
            if worker.process.poll() is not None:
                return worker
        if watchdog_s is not None and time.monotonic() >= next_ping:
            systemd.notify("WATCHDOG=1")
            next_ping = time.monotonic() + watchdog_s
    return None


def _stop_workers(workers: list[Worker], timeout_s: float) -> None:
    """Send SIGTERM to every running worker, then SIGKILL to those still running after timeout_s."""
    running = [worker for worker in workers if worker.process.poll() is None]
    if running:
        logger.info("stopping workers count=%d timeout_s=%s", len(running), timeout_s)
    for worker in running:
        # Popen.send_signal signals the PID only while the child is unreaped.
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for worker in running:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error(
                "worker did not stop in time, sending SIGKILL index=%d pid=%d timeout_s=%s",
                worker.index,
                worker.pid,
                timeout_s,
            )
            worker.process.kill()
            worker.process.wait()
        logger.log(
            logging.INFO if worker.process.returncode == 0 else logging.WARNING,
            "worker stopped index=%d pid=%d status=%s",
            worker.index,
            worker.pid,
            exit_status(worker.process.returncode),
        )
    for worker in workers:
        if worker.reader is not None:
            worker.reader.join(5)
        for pipe in (worker.process.stdin, worker.process.stdout):
            if pipe is not None:
                pipe.close()
