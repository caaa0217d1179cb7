"""Run ``workers`` serving processes on one TCP port and supervise them.

With workers > 1, ``sessiond serve`` becomes a supervisor. It applies
migrations once, then starts each worker as ``python -m sessiond_server``
with its own arguments plus ``--worker-index I``. Every worker binds the
listen port with SO_REUSEPORT, so the kernel spreads new TCP connections
over them. Only the supervisor talks to systemd. When any worker exits on
its own, or sends no heartbeat line on stdout for WORKER_TIMEOUT_S, the
supervisor stops the others and exits 1, so the service manager can
restart the whole daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from . import systemd
from .config import Config
from .daemon import HEARTBEAT_INTERVAL_S, HEARTBEAT_LINE, open_and_migrate
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
# A worker whose last heartbeat (one every HEARTBEAT_INTERVAL_S) is older
# than this has failed: the supervisor stops every worker and exits 1. Ten
# missed heartbeats leave room for a loaded machine.
WORKER_TIMEOUT_S = 10.0
# While any worker's heartbeat is older than this, the supervisor sends no
# WATCHDOG=1 to systemd and logs a warning.
HEARTBEAT_LATE_S = 3 * HEARTBEAT_INTERVAL_S
# Test hook: a positive number of seconds that replaces WORKER_TIMEOUT_S, so
# tests need not wait 10 s. config.py ignores it, because no setting is
# named test_worker_timeout_s.
WORKER_TIMEOUT_VARIABLE = "SESSIOND_TEST_WORKER_TIMEOUT_S"


@dataclass
class Worker:
    """One worker process and the address it reported on stdout."""

    index: int
    process: subprocess.Popen[str]
    address: str = ""
    listening: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    # time.monotonic() of the last heartbeat or of the listening line.
    last_heartbeat: float = 0.0
    heartbeat_late: bool = False

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


def worker_timeout_s(environ: Mapping[str, str]) -> float:
    """Return WORKER_TIMEOUT_S, or the test hook's value when WORKER_TIMEOUT_VARIABLE is set.

    Raises:
        StartError: the variable is set but is not a positive number.
    """
    raw = environ.get(WORKER_TIMEOUT_VARIABLE)
    if raw is None:
        return WORKER_TIMEOUT_S
    try:
        timeout_s = float(raw)
    except ValueError:
        timeout_s = 0.0
    if not timeout_s > 0:
        raise StartError(
            f"{WORKER_TIMEOUT_VARIABLE}={raw!r} is invalid: expected a positive "
            "number of seconds; unset it outside tests"
        )
    return timeout_s


def supervise(config: Config, argv: Sequence[str], stopping: threading.Event) -> int:
    """Start config.workers worker processes and stop them all when one fails or stopping is set.

    A worker fails when it exits on its own or sends no heartbeat for
    WORKER_TIMEOUT_S. Returns 0 after stopping is set (SIGTERM or SIGINT)
    and 1 after a worker failed.

    Raises:
        StartError: the database check failed, or a worker exited or did
            not listen within START_TIMEOUT_S during start.
    """
    timeout_s = worker_timeout_s(os.environ)
    # Migrations run once here, so the workers never race to apply them. A
    # database that is unreachable or behind also fails here, before any
    # worker starts.
    open_and_migrate(replace(config, db_pool_size=1)).close()
    workers: list[Worker] = []
    hung: list[Worker] = []
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
        failed = _watch_workers(workers, stopping, timeout_s)
        if failed is None:
            return 0
        if failed.process.poll() is not None:
            logger.error(
                "worker exited on its own, stopping the other workers index=%d pid=%d status=%s",
                failed.index,
                failed.pid,
                exit_status(failed.process.returncode),
            )
        else:
            logger.error(
                "worker sent no heartbeat, stopping every worker index=%d pid=%d "
                "seconds_since_heartbeat=%.1f timeout_s=%s",
                failed.index,
                failed.pid,
                time.monotonic() - failed.last_heartbeat,
                timeout_s,
            )
            hung.append(failed)
        return 1
    finally:
        systemd.notify("STOPPING=1")
        _stop_workers(workers, config.shutdown_grace_s + STOP_MARGIN_S, hung)


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
    """Record the worker's listening line and heartbeats, and pass any other output on to stdout."""
    assert worker.process.stdout is not None
    for line in worker.process.stdout:
        if line.rstrip("\n") == HEARTBEAT_LINE:
            worker.last_heartbeat = time.monotonic()
        elif not worker.listening.is_set() and line.startswith(LISTENING_PREFIX):
            worker.address = line[len(LISTENING_PREFIX) :].strip()
            worker.last_heartbeat = time.monotonic()
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


def _watch_workers(
    workers: list[Worker], stopping: threading.Event, timeout_s: float
) -> Worker | None:
    """Ping the systemd watchdog until a worker fails or stopping is set.

    Returns the worker that exited or sent no heartbeat for timeout_s, or
    None when stopping was set. WATCHDOG=1 goes out only while every
    worker's heartbeat is younger than HEARTBEAT_LATE_S (or timeout_s when
    that is shorter).
    """
    watchdog_s = systemd.watchdog_interval_s()
    late_s = min(HEARTBEAT_LATE_S, timeout_s)
    next_ping = time.monotonic()
    # Short waits, because a signal may arrive on a reader thread, and
    # Python runs its handler only once the main thread wakes.
    while not stopping.wait(POLL_INTERVAL_S):
        for worker in workers:
            if worker.process.poll() is not None:
                return worker
        all_fresh = True
        for worker in workers:
            age_s = time.monotonic() - worker.last_heartbeat
            if age_s > timeout_s:
                return worker
            if age_s > late_s:
                all_fresh = False
            _log_heartbeat_state(worker, late=age_s > late_s, age_s=age_s)
        if watchdog_s is not None and all_fresh and time.monotonic() >= next_ping:
            systemd.notify("WATCHDOG=1")
            next_ping = time.monotonic() + watchdog_s
    return None


def _log_heartbeat_state(worker: Worker, *, late: bool, age_s: float) -> None:
    """Log once when a worker's heartbeat becomes late and once when it arrives again."""
    if late and not worker.heartbeat_late:
        logger.warning(
            "worker heartbeat late, holding back systemd watchdog pings "
            "index=%d pid=%d seconds_since_heartbeat=%.1f",
            worker.index,
            worker.pid,
            age_s,
        )
    elif not late and worker.heartbeat_late:
        logger.info(
            "worker heartbeat received again index=%d pid=%d", worker.index, worker.pid
        )
    worker.heartbeat_late = late


def _stop_workers(
    workers: list[Worker], timeout_s: float, hung: Sequence[Worker] = ()
) -> None:
    """Send SIGTERM to every running worker, then SIGKILL to those still running after timeout_s.

    Workers in hung get SIGKILL at once, because a hung worker would not
    stop on SIGTERM, and a stopped one (SIGSTOP) does not even handle it.
    """
    running = [worker for worker in workers if worker.process.poll() is None]
    if running:
        logger.info("stopping workers count=%d timeout_s=%s", len(running), timeout_s)
    for worker in running:
        # Popen.send_signal signals the PID only while the child is unreaped.
        if worker in hung:
            worker.process.kill()
        else:
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
