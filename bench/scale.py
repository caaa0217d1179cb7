"""The scale measurements: table growth, the cleanup job under load, replicas and workers."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import growth
from bulk_load import SESSIONS_PER_USER, count_sessions, load_sessions
from cleanup import (
    START_GRACE_S,
    CleanupLoad,
    CleanupRun,
    count_expired,
    oldest_expiry_ms,
    split_windows,
    watch_cleanup,
)
from cpu import process_cpu_s
from growth import EXPIRED_SHARE, GROWTH_OPERATIONS, Growth, GrowthPoint
from harness import Measurement
from operations import ClientFor
from private_mysql import PrivateMysqlServer
from replicas import (
    ALL_REPLICAS,
    ONE_DAEMON,
    ROUND_ROBIN_OPTIONS,
    WORKER_OPERATIONS,
    ReplicaRun,
    cpu_shares,
    replica_setups,
    round_robin_target,
)
from report import Results
from sessiond_testing import DaemonProcess, WorkersDaemonProcess
from suite import Suite, daemon_pid

from sessiond_server.config import Config
from sessiond_server.storage import open_storage

# Growth and replica measurements keep the faster of this many rounds, as
# the floors do, so one burst of other load on the machine does not decide
# a ratio alone. Quick runs make one round.
FULL_ROUNDS = 2
# The cleanup daemon's interval is this many measurement lengths, so the
# calls before its first cleanup run make a baseline of that length.
CLEANUP_BASELINE_MEASUREMENTS = 3


class ScaleSuite(Suite):
    """Suite plus the measurements that need large tables or several daemons."""

    def __init__(
        self,
        config: Config,
        seconds: float,
        concurrencies: list[int],
        results: Results,
        *,
        rounds: int = FULL_ROUNDS,
    ) -> None:
        super().__init__(config, seconds, concurrencies, results)
        self._rounds = rounds

    def measure_growth(
        self,
        server: PrivateMysqlServer,
        start_daemon: Callable[[str], AbstractContextManager[DaemonProcess]],
        points: list[int],
    ) -> Growth:
        """Load a database of its own to each point, then time the operations on each in turn.

        start_daemon(database) creates that database and starts a daemon on
        it with default settings, whose migrations run before the load. The
        rounds alternate between the points operation by operation, so a
        change in the machine's load during the run affects every point alike.
        """
        concurrency = max(self._concurrencies)
        with contextlib.ExitStack() as stack:
            loaded: list[tuple[GrowthPoint, ClientFor, Any]] = []
            for number, size in enumerate(points):
                database = f"sessiond_growth_{number}"
                daemon = stack.enter_context(start_daemon(database))
                connection = stack.enter_context(
                    contextlib.closing(server.connect(database))
                )
                client_for = stack.enter_context(
                    self._clients(daemon.address, concurrency)
                )
                point = self._load_growth_point(connection, size, number, client_for)
                loaded.append((point, client_for, connection))
            result = Growth(
                concurrency,
                self._rounds,
                growth.buffer_pool_mib(connection),
                [point for point, _, _ in loaded],
            )
            for _round in range(self._rounds):
                for name in GROWTH_OPERATIONS:
                    for point, client_for, _ in loaded:
                        found = self._measure(
                            f"{point.stored_sessions:,} stored: {name}",
                            growth.growth_setups(client_for)[name](),
                            concurrency,
                        )
                        _keep_faster(point.measurements, name, found)
            for point, _, connection in loaded:
                point.final_sessions = count_sessions(connection)
        return result

    def _load_growth_point(
        self, connection: Any, size: int, seed: int, client_for: ClientFor
    ) -> GrowthPoint:
        """Bulk-load size sessions into an empty table and EXPLAIN its listing queries."""
        print(f"loading {size:,} sessions", flush=True)
        started = time.monotonic()
        loaded = load_sessions(
            connection,
            size,
            expired=int(size * EXPIRED_SHARE),
            users=max(1, size // SESSIONS_PER_USER),
            validity_ms=self._config.refresh_token_validity_s * 1000,
            seed=seed,
        )
        point = GrowthPoint(
            stored_sessions=size,
            load_s=time.monotonic() - started,
            table_mib=growth.table_mib(connection),
        )
        print(
            f"loaded in {point.load_s:.0f} s; table {point.table_mib:.0f} MiB",
            flush=True,
        )
        point.plans = growth.explain_listing_queries(
            connection, client_for(0), loaded.live_user_id
        )
        self._print_plans(point)
        return point

    def _print_plans(self, point: GrowthPoint) -> None:
        for plan in point.plans:
            print(
                f"EXPLAIN {plan.rpc}: type={plan.access_type} key={plan.key} "
                f"rows={plan.rows} extra={plan.extra}",
                flush=True,
            )
            if plan.key is None:
                print(
                    f"warning: {plan.rpc} uses no index at "
                    f"{point.stored_sessions:,} sessions",
                    flush=True,
                )

    def measure_cleanup(
        self,
        server: PrivateMysqlServer,
        database: str,
        start_daemon: Callable[[int], AbstractContextManager[DaemonProcess]],
        expired: int,
    ) -> CleanupRun:
        """Time creates and get data before, during and after the daemon's first cleanup run.

        start_daemon(interval_s) starts a daemon on database with that
        cleanup_interval_s. Before it starts, the table gets the given
        number of expired sessions and a tenth as many live ones.
        """
        live = max(1, expired // 10)
        concurrency = max(2, max(self._concurrencies))
        interval_s = max(1, math.ceil(CLEANUP_BASELINE_MEASUREMENTS * self._seconds))
        run = CleanupRun(expired, live, concurrency, interval_s)
        _migrate(server.url_for(database), self._config)
        connection = server.connect(database)
        try:
            print(f"loading {expired:,} expired and {live:,} live sessions", flush=True)
            load_sessions(
                connection,
                expired + live,
                expired=expired,
                users=max(1, (expired + live) // SESSIONS_PER_USER),
                validity_ms=self._config.refresh_token_validity_s * 1000,
                seed=1000,
            )
            initial_oldest = oldest_expiry_ms(connection)
            if initial_oldest is None:
                raise RuntimeError("the cleanup table is empty after the load")
            with start_daemon(interval_s) as cleanup_daemon:
                deadline = time.perf_counter() + interval_s + START_GRACE_S
                with self._clients(cleanup_daemon.address, concurrency) as client_for:
                    load = CleanupLoad(client_for, concurrency)
                    ready = load.start()
                    try:
                        began, ended = watch_cleanup(
                            connection, initial_oldest, deadline
                        )
                        time.sleep(interval_s)
                    except BaseException:
                        with contextlib.suppress(RuntimeError):
                            load.stop()
                        raise
                    stopped = time.perf_counter()
                    calls = load.stop()
            run.duration_s = ended - began
            run.deleted = expired - count_expired(connection)
        finally:
            connection.close()
        if began <= ready:
            print(
                "warning: the cleanup began before every load thread was ready, "
                "so there are no calls before cleanup",
                flush=True,
            )
        run.windows = split_windows(
            calls,
            ready_s=ready,
            began_s=began,
            ended_s=ended,
            stopped_s=stopped,
            threads_per_operation=load.threads_per_operation,
        )
        print(
            f"cleanup deleted {run.deleted:,} sessions in {run.duration_s:.1f} s",
            flush=True,
        )
        for (name, window), found in run.windows.items():
            print(
                f"{name:9} {window:16} {found.count:6} calls  p99 {found.p99_ms:8.2f} ms  "
                f"max {found.max_ms:8.2f} ms",
                flush=True,
            )
        return run

    def measure_replicas(self, daemons: Sequence[DaemonProcess]) -> ReplicaRun:
        """Time each replica operation through the first daemon, then through all of them."""
        addresses = [daemon.address for daemon in daemons]
        run = ReplicaRun(
            len(daemons),
            max(self._concurrencies),
            self._rounds,
            round_robin_target(addresses),
        )
        self._measure_spread(
            run,
            one_address=addresses[0],
            spread_label=f"{len(daemons)} replicas",
            spread_options=ROUND_ROBIN_OPTIONS,
            pids=[daemon_pid(daemon) for daemon in daemons],
        )
        return run

    def measure_workers(
        self, one: DaemonProcess, workers: WorkersDaemonProcess
    ) -> ReplicaRun:
        """Time each worker operation through a one-process daemon, then through one with workers.

        The client of the daemon with workers opens two connections per
        worker, because the kernel gives each connection to a worker by a
        hash and one connection per worker would leave some workers idle.
        """
        pids = workers.worker_pids()
        run = ReplicaRun(
            len(pids),
            max(self._concurrencies),
            self._rounds,
            workers.address,
            operations=WORKER_OPERATIONS,
            connections=2 * len(pids),
        )
        self._measure_spread(
            run,
            one_address=one.address,
            spread_label=f"{len(pids)} workers",
            spread_options=(),
            pids=pids,
        )
        return run

    def _measure_spread(
        self,
        run: ReplicaRun,
        *,
        one_address: str,
        spread_label: str,
        spread_options: Sequence[tuple[str, Any]],
        pids: list[int],
    ) -> None:
        """Time run.operations through one_address and through run.target, alternately.

        Stores the faster round of each in run, with each of pids' share of
        their CPU time during the spread measurement that was kept.
        """
        concurrency = run.concurrency
        with contextlib.ExitStack() as stack:
            clients = {
                ONE_DAEMON: stack.enter_context(
                    self._clients(one_address, concurrency)
                ),
                ALL_REPLICAS: stack.enter_context(
                    self._clients(
                        run.target,
                        concurrency,
                        options=spread_options,
                        connections=run.connections,
                    )
                ),
            }
            for _round in range(self._rounds):
                for name in run.operations:
                    for label, client_for in clients.items():
                        printed_label = (
                            ONE_DAEMON if label == ONE_DAEMON else spread_label
                        )
                        setup = replica_setups(client_for)[name]()
                        before = [process_cpu_s(pid) for pid in pids]
                        found = self._measure(
                            f"{printed_label}: {name}", setup, concurrency
                        )
                        after = [process_cpu_s(pid) for pid in pids]
                        stored = _keep_faster(run.measurements, (label, name), found)
                        if stored and label == ALL_REPLICAS:
                            run.cpu_shares[name] = cpu_shares(before, after)
        for name, shares in run.cpu_shares.items():
            text = ", ".join(f"{share:.0%}" for share in shares)
            print(f"{spread_label} CPU shares during {name}: {text}", flush=True)


def _keep_faster(kept: dict[Any, Measurement], key: Any, found: Measurement) -> bool:
    """Store found under key unless a faster measurement is there; return whether it was stored."""
    earlier = kept.get(key)
    if earlier is not None and earlier.ops_per_s >= found.ops_per_s:
        return False
    kept[key] = found
    return True


def _migrate(url: str, config: Any) -> None:
    storage = open_storage(url, pool_size=1, timeout_s=config.db_timeout_s)
    try:
        storage.migrate(int(time.time() * 1000))
    finally:
        storage.close()
