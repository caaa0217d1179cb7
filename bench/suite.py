"""The measurements of one run, in order, recorded into report.Results."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import operations
from cpu import DAEMON, DATABASE, FLOOR_SERVER
from floors import SqlFloor, empty_call, floor_grpc_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Measurement, WorkerSetup, measure
from memory import RssSample, sample_rss
from operations import ClientFor
from report import GRPC_FLOOR, HEALTH_FLOOR, Results
from sessiond_testing import DaemonProcess

import sessiond
from sessiond_server.config import Config

# Rows the DELETE floor may consume, per concurrency. Inserting them in
# batches takes well under a second.
DELETE_FLOOR_ROWS = 20_000
# The revoke measurement gets at least this many sessions per second of
# measurement time, created beforehand when the create measurement left fewer.
# NOTE: a daemon that revokes faster runs out early, and the calls column shows it.
MIN_REVOKE_HANDLES_PER_SECOND = 1000
RSS_TIMEOUT_S = 600.0
# The revocation stream of the local-verifying client sends its first message within a second.
LOCAL_READY_TIMEOUT_S = 10.0
# SessionClient per thread, or one shared by every thread.
SHARED = "shared"
OWN = "own"


class Suite:
    def __init__(
        self,
        config: Config,
        seconds: float,
        concurrencies: list[int],
        results: Results,
    ) -> None:
        self._config = config
        self._seconds = seconds
        self._concurrencies = concurrencies
        self._results = results

    def _measure(
        self,
        label: str,
        setup: WorkerSetup,
        concurrency: int,
        cpu_pids: Mapping[str, int] | None = None,
    ) -> Measurement:
        result = measure(
            label,
            setup,
            concurrency=concurrency,
            seconds=self._seconds,
            cpu_pids=cpu_pids,
        )
        print(
            f"{label:42} c={concurrency:<3} {result.ops_per_s:9.0f} ops/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"({result.count} calls)",
            flush=True,
        )
        return result

    # -- clients ------------------------------------------------------------

    @contextlib.contextmanager
    def _clients(
        self,
        address: str,
        concurrency: int,
        mode: str | None = None,
        *,
        options: Sequence[tuple[str, Any]] = (),
        connections: int = 1,
    ) -> Iterator[ClientFor]:
        """Yield client_for(thread index): one shared SessionClient, or one per thread.

        options are gRPC channel options, and connections the SDK setting,
        for every client opened.
        """
        mode = mode or self._results.client_mode
        opened: dict[int, sessiond.SessionClient] = {}
        lock = threading.Lock()

        def client_for(index: int) -> sessiond.SessionClient:
            key = index if mode == OWN and concurrency > 1 else 0
            with lock:
                if key not in opened:
                    opened[key] = sessiond.SessionClient(
                        address, options=options, connections=connections
                    )
                return opened[key]

        try:
            yield client_for
        finally:
            for client in opened.values():
                client.close()

    @contextlib.contextmanager
    def _channels(
        self, address: str, concurrency: int
    ) -> Iterator[Callable[[int], grpc.Channel]]:
        """Yield channel_for(thread index), shared or per thread as the SDK clients are."""
        mode = self._results.client_mode
        opened: dict[int, grpc.Channel] = {}
        lock = threading.Lock()

        def channel_for(index: int) -> grpc.Channel:
            key = index if mode == OWN and concurrency > 1 else 0
            with lock:
                if key not in opened:
                    opened[key] = grpc.insecure_channel(address)
                return opened[key]

        try:
            yield channel_for
        finally:
            for channel in opened.values():
                channel.close()

    def choose_client_mode(self, address: str) -> None:
        """Time stateless verify at the highest concurrency with a shared client and with one per thread; keep the faster."""
        concurrency = max(self._concurrencies)
        if concurrency == 1:
            return
        trials = self._results.client_mode_trials
        # Two alternating rounds, keeping each mode's best, so a burst of
        # other load on the machine does not decide the choice alone.
        for _round in range(2):
            for mode in (SHARED, OWN):
                with self._clients(address, concurrency, mode) as client_for:
                    found = self._measure(
                        f"verify, {mode} client(s)",
                        operations.verify(client_for, check_database=False),
                        concurrency,
                    )
                if mode not in trials or found.ops_per_s > trials[mode].ops_per_s:
                    trials[mode] = found
        self._results.client_mode = max(trials, key=lambda mode: trials[mode].ops_per_s)
        print(f"using the {self._results.client_mode} client mode", flush=True)

    # -- floors ---------------------------------------------------------------

    def measure_grpc_floors(self, daemon: DaemonProcess) -> None:
        """Time an empty call to a floor server in a child process, and a health check on the daemon."""
        with floor_grpc_server(self._config) as (floor_address, floor_pid):
            for concurrency in self._concurrencies:
                with self._channels(floor_address, concurrency) as channel_for:
                    self._keep_faster_floor(
                        GRPC_FLOOR,
                        lambda index: empty_call(channel_for(index)),
                        concurrency,
                        {FLOOR_SERVER: floor_pid},
                    )
        for concurrency in self._concurrencies:
            with self._channels(daemon.address, concurrency) as channel_for:
                self._keep_faster_floor(
                    HEALTH_FLOOR,
                    lambda index: _health_check(channel_for(index)),
                    concurrency,
                    {DAEMON: daemon_pid(daemon)},
                )

    def measure_sql_floors(self, url: str, database_pid: int) -> None:
        floor = SqlFloor(url, self._config)
        try:
            for concurrency in self._concurrencies:
                setups: dict[str, WorkerSetup] = {
                    operations.SQL_INSERT: floor.insert,
                    operations.SQL_SELECT: floor.select_by_key,
                    operations.SQL_UPDATE: floor.update_by_key,
                    operations.SQL_LOCKED_UPDATE: floor.locked_update,
                    operations.SQL_DELETE: floor.delete_by_key(
                        floor.insert_rows(self._delete_rows())
                    ),
                }
                for name, setup in setups.items():
                    self._keep_faster_floor(
                        name, setup, concurrency, {DATABASE: database_pid}
                    )
        finally:
            floor.close()

    def _keep_faster_floor(
        self,
        name: str,
        setup: WorkerSetup,
        concurrency: int,
        cpu_pids: Mapping[str, int],
    ) -> None:
        """Measure a floor and keep it unless an earlier round of the same floor was faster.

        The run measures every floor twice, before and after the operations,
        so a burst of other load on the machine during one round does not
        lower the floor that the ratios use.
        """
        found = self._measure(f"floor: {name}", setup, concurrency, cpu_pids)
        earlier = self._results.floors.get((name, concurrency))
        if earlier is None or found.ops_per_s > earlier.ops_per_s:
            self._results.floors[name, concurrency] = found

    def _delete_rows(self) -> int:
        return min(DELETE_FLOOR_ROWS, int(self._seconds * 10_000) + 100)

    # -- SDK operations -----------------------------------------------------

    def measure_operations(
        self, backend: str, daemon: DaemonProcess, database_pid: int | None = None
    ) -> None:
        """Time every operation on daemon; database_pid names a database server to read CPU time of."""
        cpu_pids = {DAEMON: daemon_pid(daemon)}
        if database_pid is not None:
            cpu_pids[DATABASE] = database_pid
        for concurrency in self._concurrencies:
            with self._clients(daemon.address, concurrency) as client_for:
                self._measure_at(
                    backend, daemon.address, concurrency, client_for, cpu_pids
                )

    def _measure_at(
        self,
        backend: str,
        address: str,
        concurrency: int,
        client_for: ClientFor,
        cpu_pids: Mapping[str, int],
    ) -> None:
        handles: list[str] = []
        local_client = sessiond.SessionClient(address, local_verification=True)
        if not local_client.wait_for_local_verification(LOCAL_READY_TIMEOUT_S):
            local_client.close()
            raise RuntimeError(f"local verification not ready on {address}")
        setups: dict[str, Callable[[], WorkerSetup]] = {
            "create": lambda: operations.create(client_for, handles),
            "verify": lambda: operations.verify(client_for, check_database=False),
            "verify (SDK-local)": lambda: operations.verify_local(local_client),
            "verify (check_database)": lambda: operations.verify(
                client_for, check_database=True
            ),
            "refresh": lambda: operations.refresh(client_for, verify_each=False),
            "refresh + verify": lambda: operations.refresh(
                client_for, verify_each=True
            ),
            "get data": lambda: operations.get_data(client_for),
            "update data": lambda: operations.update_data(client_for),
            "revoke": lambda: operations.revoke(
                client_for, self._top_up(handles, address, concurrency)
            ),
            "merge data": lambda: operations.merge_data(client_for),
        }
        try:
            for spec in operations.OPERATIONS:
                if spec.name == "merge data" and not operations.client_has_merge():
                    self._results.skipped[spec.name] = (
                        "sessiond.SessionClient has no merge_session_data method yet"
                    )
                    continue
                self._results.operations[backend, spec.name, concurrency] = (
                    self._measure(
                        f"{backend}: {spec.name}",
                        setups[spec.name](),
                        concurrency,
                        cpu_pids,
                    )
                )
        finally:
            local_client.close()

    def _top_up(self, handles: list[str], address: str, concurrency: int) -> list[str]:
        """Create sessions until handles can feed revoke for the whole measurement."""
        needed = int(self._seconds * MIN_REVOKE_HANDLES_PER_SECOND) - len(handles)
        if needed > 0:
            with self._clients(address, concurrency) as client_for:
                setup = operations.create(client_for, handles)
                measure(
                    "revoke top-up",
                    setup,
                    concurrency=concurrency,
                    seconds=60.0,
                    max_calls=needed,
                )
        return handles

    # -- memory ---------------------------------------------------------------

    def measure_rss(
        self, daemon: DaemonProcess, checkpoints: list[int]
    ) -> list[RssSample]:
        concurrency = max(self._concurrencies)
        with self._clients(daemon.address, concurrency) as client_for:
            samples = sample_rss(
                daemon_pid(daemon),
                client_for,
                checkpoints,
                concurrency=concurrency,
                timeout_s=RSS_TIMEOUT_S,
            )
        for sample in samples:
            print(
                f"RSS after {sample.creates:7} creates: {sample.rss_kib / 1024:7.1f} MiB",
                flush=True,
            )
        return samples


def daemon_pid(daemon: DaemonProcess) -> int:
    if daemon.process is None:
        raise RuntimeError(f"the daemon on {daemon.address} is not running")
    return daemon.process.pid


def _health_check(channel: grpc.Channel) -> Callable[[], Any]:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    return lambda: stub.Check(request, timeout=10.0)
