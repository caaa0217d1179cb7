"""Benchmark sessiond on SQLite and MariaDB against floors measured in the same run.

Run it with ``make bench`` (full) or ``make bench-quick`` (smoke run). It
starts a private MariaDB server and two daemons on loopback ports. It times
the SDK operations at each concurrency, the floors (an empty gRPC call and
the bare SQL statements), the JWT algorithms and the daemon's memory. On
more MariaDB databases and daemons it also times one daemon against
replicas and against one with worker processes, calls during the cleanup
job, and the operations at two table sizes. Then it writes OUT_DIR/benchmarks.md and OUT_DIR/benchmarks.png.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
# sessiond_testing (DaemonProcess) and private_mysql live in tests/.
sys.path.insert(0, str(REPOSITORY / "tests"))

import algorithms  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
from private_mysql import PrivateMysqlServer, install_data_folder  # noqa: E402
from sessiond_testing import (  # noqa: E402
    DaemonProcess,
    WorkersDaemonProcess,
    free_port_range,
)

from sessiond_server.config import Config  # noqa: E402

# In a full run on the shared 2-core development machine (load average 7 to
# 10), 100,000 creates took 112 s and the whole run 453 s, within the budget
# of about 12 minutes for `make bench`.
FULL_RSS_CHECKPOINTS = "20000,50000,100000"
QUICK_RSS_CHECKPOINTS = "100,300"
QUICK_SECONDS = 0.2
FULL_GROWTH_SESSIONS = "10000,1000000"
QUICK_GROWTH_SESSIONS = "1000,10000"
FULL_CLEANUP_EXPIRED = 100_000
QUICK_CLEANUP_EXPIRED = 2000
REPLICAS = 3
# One worker per core of the 2-core development machine.
WORKERS = 2
# Upper bounds that only catch typos.
MAX_GROWTH_SESSIONS = 10_000_000
MAX_REPLICAS = 16


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark sessiond against gRPC and SQL floors measured in the same run."
    )

    parser.add_argument(
        "--out-dir",
        default=str(REPOSITORY / "docs"),
        help="folder for benchmarks.md and benchmarks.png (default: docs/)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of each timed measurement, in seconds (default: 2, or 0.2 with --quick)",
    )
    parser.add_argument(
        "--concurrency",
        default="1,16",
        help="comma-separated thread counts to measure (default: 1,16)",
    )
    parser.add_argument(
        "--rss-creates",
        help="comma-separated cumulative create counts after which the SQLite daemon's "
        f"RSS is read (default: {FULL_RSS_CHECKPOINTS}, or {QUICK_RSS_CHECKPOINTS} with --quick)",
    )
    parser.add_argument(
        "--growth-sessions",
        help="comma-separated stored-session counts, in increasing order, at which "
        "the growth operations are timed; ratios compare the last with the first "
        f"(default: {FULL_GROWTH_SESSIONS}, or {QUICK_GROWTH_SESSIONS} with --quick)",
    )
    parser.add_argument(
        "--cleanup-expired",
        type=int,
        help="expired sessions in the table when the daemon's cleanup job starts "
        f"(default: {FULL_CLEANUP_EXPIRED}, or {QUICK_CLEANUP_EXPIRED} with --quick)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=REPLICAS,
        help=f"daemons on one MariaDB database for the replica measurement (default: {REPLICAS})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help=f"worker processes of the daemon in the worker measurement (default: {WORKERS})",
    )
    parser.add_argument(
        "--algorithm-seconds",
        type=float,
        help="time for each JWT sign or verify rate, in seconds (default: 1, or 0.05 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: short measurements and small counts; the numbers mean little",
    )
    args = parser.parse_args(argv)

    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else 2.0
    if args.algorithm_seconds is None:
        args.algorithm_seconds = 0.05 if args.quick else 1.0
    if args.rss_creates is None:
        args.rss_creates = QUICK_RSS_CHECKPOINTS if args.quick else FULL_RSS_CHECKPOINTS
    if args.growth_sessions is None:
        args.growth_sessions = (
            QUICK_GROWTH_SESSIONS if args.quick else FULL_GROWTH_SESSIONS
        )
    if args.cleanup_expired is None:
        args.cleanup_expired = (
            QUICK_CLEANUP_EXPIRED if args.quick else FULL_CLEANUP_EXPIRED
        )

    try:
        args.concurrency = _positive_ints(args.concurrency)
        args.rss_creates = _positive_ints(args.rss_creates)
        args.growth_sessions = _positive_ints(args.growth_sessions)
    except ValueError as exc:
        parser.error(str(exc))
    growth = args.growth_sessions
    if len(growth) < 2 or growth != sorted(set(growth)):
        parser.error(
            "--growth-sessions must list two or more counts in increasing order"
        )
    if growth[-1] > MAX_GROWTH_SESSIONS:
        parser.error(
            f"--growth-sessions counts must be at most {MAX_GROWTH_SESSIONS:,}"
        )
    if not 1 <= args.cleanup_expired <= MAX_GROWTH_SESSIONS:
        parser.error(f"--cleanup-expired must be from 1 to {MAX_GROWTH_SESSIONS:,}")
    if not 2 <= args.replicas <= MAX_REPLICAS:
        parser.error(f"--replicas must be from 2 to {MAX_REPLICAS}")
    if not 2 <= args.workers <= MAX_REPLICAS:
        parser.error(f"--workers must be from 2 to {MAX_REPLICAS}")
    if args.seconds <= 0 or args.algorithm_seconds <= 0:
        parser.error("--seconds and --algorithm-seconds must be greater than 0")
    return args


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(value < 1 for value in values):
        raise ValueError(f"{text!r} must list integers of 1 or more")
    return values


@contextlib.contextmanager
def private_mariadb(folder: Path) -> Iterator[PrivateMysqlServer]:
    """Start a private MariaDB server with a fresh data folder; stop it at exit."""
    install_data_folder(folder / "data")
    server = PrivateMysqlServer(folder, ["--character-set-server=utf8mb4"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def daemon(
    database_url: str,
    log_path: Path,
    process_class: type[DaemonProcess] = DaemonProcess,
    **settings: Any,
) -> Iterator[DaemonProcess]:
    """Start `sessiond serve` with INFO logging and settings over the defaults; stop it at exit."""
    # DaemonProcess defaults to DEBUG logging, which writes a line per
    # session created; INFO is the daemon's own default.
    process = process_class(
        database_url, log_path, **{"log_level": "INFO", **settings}
    ).start()
    try:
        yield process
    except BaseException:
        tail = "\n".join(process.log().splitlines()[-20:])
        print(f"daemon log tail ({log_path}):\n{tail}", file=sys.stderr)
        raise
    finally:
        code = process.stop()
        if code != 0:
            print(
                f"warning: daemon on {process.address} exited with code {code}; "
                f"log: {log_path}",
                file=sys.stderr,
            )


def mariadb_version(server: PrivateMysqlServer) -> str:
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        return str(cursor.fetchone()[0])


def mariadb_settings(server: PrivateMysqlServer) -> str:
    """Return the server's durability, binary log and buffer pool settings as name=value text."""
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size, "
            "@@sync_binlog, @@log_bin"
        )
        flush, pool, sync_binlog, log_bin = cursor.fetchone()
    return (
        f"innodb_flush_log_at_trx_commit={flush}, "
        f"innodb_buffer_pool_size={int(pool) // (1024 * 1024)} MiB, "
        f"sync_binlog={sync_binlog}, log_bin={'ON' if log_bin else 'OFF'}"
    )


def create_database(server: PrivateMysqlServer, name: str) -> str:
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    return server.url_for(name)


def drop_database(server: PrivateMysqlServer, name: str) -> None:
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE `{name}`")


@contextlib.contextmanager
def database_with_daemon(
    server: PrivateMysqlServer, name: str, work: Path
) -> Iterator[DaemonProcess]:
    """Create database name, serve it with a default daemon, and drop it at exit.

    Dropping a big table at once spares the server's shutdown from flushing it.
    """
    url = create_database(server, name)
    try:
        with daemon(url, work / f"{name}.log") as process:
            yield process
    finally:
        drop_database(server, name)


def measure_scale(
    runner: scale.ScaleSuite,
    mariadb: PrivateMysqlServer,
    work: Path,
    args: argparse.Namespace,
    results: report.Results,
) -> None:
    """Time replicas, workers, the cleanup job and table growth, each on a database of its own."""
    replica_url = create_database(mariadb, "sessiond_replicas")
    with contextlib.ExitStack() as replica_daemons:
        replicas = [
            replica_daemons.enter_context(
                daemon(replica_url, work / f"replica-{number}.log")
            )
            for number in range(args.replicas)
        ]
        print(f"measuring {args.replicas} replicas", flush=True)
        results.replicas = runner.measure_replicas(replicas)

    workers_url = create_database(mariadb, "sessiond_workers")
    with (
        daemon(workers_url, work / "one-process.log") as one_process,
        daemon(
            workers_url,
            work / "workers.log",
            process_class=WorkersDaemonProcess,
            workers=args.workers,
            listen=f"127.0.0.1:{free_port_range(1)}",
        ) as with_workers,
    ):
        print(f"measuring {args.workers} worker processes", flush=True)
        assert isinstance(with_workers, WorkersDaemonProcess)
        results.workers = runner.measure_workers(one_process, with_workers)

    cleanup_url = create_database(mariadb, "sessiond_cleanup")
    print("measuring calls during the cleanup job", flush=True)
    results.cleanup = runner.measure_cleanup(
        mariadb,
        "sessiond_cleanup",
        lambda interval_s: daemon(
            cleanup_url, work / "cleanup.log", cleanup_interval_s=interval_s
        ),
        args.cleanup_expired,
    )
    drop_database(mariadb, "sessiond_cleanup")

    print("measuring operations at each table size", flush=True)
    results.growth = runner.measure_growth(
        mariadb,
        lambda name: database_with_daemon(mariadb, name, work),
        args.growth_sessions,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    config = Config()
    work = Path(tempfile.mkdtemp(prefix="sessiond-bench-"))

    results = report.Results(
        command=shlex.join([_display_path(sys.executable), "bench/run.py", *argv]),
        seconds=args.seconds,
        concurrencies=args.concurrency,
        config=config,
        quick=args.quick,
    )
    try:
        with contextlib.ExitStack() as stack:
            print("starting a private MariaDB server", flush=True)
            mariadb = stack.enter_context(private_mariadb(work / "mysql"))
            results.mariadb_version = mariadb_version(mariadb)
            results.mariadb_settings = mariadb_settings(mariadb)
            sqlite_daemon = stack.enter_context(
                daemon(f"sqlite:///{work / 'sessiond.db'}", work / "sqlite.log")
            )
            mariadb_daemon = stack.enter_context(
                daemon(create_database(mariadb, "sessiond_bench"), work / "mariadb.log")
            )
            runner = scale.ScaleSuite(
                config,
                args.seconds,
                args.concurrency,
                results,
                rounds=1 if args.quick else scale.FULL_ROUNDS,
            )
            floor_url = create_database(mariadb, "sessiond_floor")
            runner.choose_client_mode(sqlite_daemon.address)
            runner.measure_grpc_floors(sqlite_daemon)
            runner.measure_sql_floors(floor_url, mariadb.pid)
            runner.measure_operations("SQLite", sqlite_daemon)
            runner.measure_operations("MariaDB", mariadb_daemon, mariadb.pid)
            print("measuring the floors again", flush=True)
            runner.measure_grpc_floors(sqlite_daemon)
            runner.measure_sql_floors(floor_url, mariadb.pid)
            measure_scale(runner, mariadb, work, args, results)
        with daemon(f"sqlite:///{work / 'rss.db'}", work / "rss.log") as rss_daemon:
            print("measuring the SQLite daemon's RSS", flush=True)
            results.rss = runner.measure_rss(rss_daemon, args.rss_creates)
        print("measuring JWT algorithms", flush=True)
        results.algorithms = algorithms.measure_algorithms(args.algorithm_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results.wall_time_s = time.monotonic() - started
    results.load_at_end = report.read_load_average()
    out_dir = Path(args.out_dir)
    page = report.write(results, out_dir)
    print(report.summary(results))
    print(f"wrote {page} in {results.wall_time_s:.0f} s")
    return 0


def _display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPOSITORY))
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
