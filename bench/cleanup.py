"""Latency of other calls while the daemon's cleanup job deletes expired sessions.

The daemon runs its cleanup job every cleanup_interval_s, the first time
one interval after it starts. Each run deletes expired sessions in batches
of CLEANUP_BATCH_SIZE (sessiond_server.daemon), with a pause after each
batch at least as long as the batch took, until a batch comes back short.
The bench starts a daemon with a short interval on a table of bulk-loaded
expired sessions and keeps creates and session data reads running from the
first moment. It watches the oldest expiry in the table: the cleanup has
begun when that changes, and has ended when no expired row is left. Calls
that start before the change are the calls before cleanup, and calls that
start between the change and the end are the calls during cleanup. The load
goes on for one more cleanup interval, the calls after cleanup; at its end
the job runs again and finds nothing to delete. The calls before and after
together are the calls without cleanup.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import operations
from harness import WARMUP_CALLS, Measurement, Operation, WorkerSetup
from operations import ClientFor

CLEANUP_OPERATIONS = ("create", "get data")
BEFORE = "before cleanup"
DURING = "during cleanup"
AFTER = "after cleanup"
WITHOUT = "without cleanup"
POLL_INTERVAL_S = 0.02
# How long past the daemon's cleanup interval the first deletion may take
# to show, and how long the whole cleanup may run, before the bench gives up.
# With its pauses the job deleted 100,000 sessions in 20 to 60 s in this
# measurement on a 2-core machine, so 1800 s leaves room for a few million.
START_GRACE_S = 30.0
FINISH_TIMEOUT_S = 1800.0


@dataclass
class CleanupRun:
    expired: int
    live: int
    concurrency: int
    interval_s: int
    # From the first deletion seen to the first poll that found no expired row.
    duration_s: float = 0.0
    deleted: int = 0
    windows: dict[tuple[str, str], Measurement] = field(default_factory=dict)


@dataclass(frozen=True)
class _Call:
    operation: str
    started_s: float
    latency_s: float


class CleanupLoad:
    """Threads that run creates and get data until stopped, recording every call."""

    def __init__(self, client_for: ClientFor, concurrency: int) -> None:
        half = max(1, concurrency // 2)
        self._plan: list[tuple[str, WorkerSetup]] = [
            ("create", operations.create(client_for, []))
        ] * half + [("get data", operations.get_data(client_for))] * half
        self._calls: list[list[_Call]] = [[] for _ in self._plan]
        self._stop = threading.Event()
        self._ready = threading.Barrier(len(self._plan) + 1)
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._work, args=(index,), name=f"cleanup-{index}")
            for index in range(len(self._plan))
        ]

    @property
    def threads_per_operation(self) -> int:
        return len(self._plan) // 2

    def start(self) -> float:
        """Start the threads; return the perf_counter time when all finished warming up."""
        for thread in self._threads:
            thread.start()
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            self.stop()
        return time.perf_counter()

    def stop(self) -> list[_Call]:
        """Stop the threads and return every timed call.

        Raises:
            RuntimeError: a thread's setup or call raised.
        """
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._errors:
            first = self._errors[0]
            raise RuntimeError(
                f"cleanup load failed: {type(first).__name__}: {first}"
            ) from first
        return [call for own in self._calls for call in own]

    def _work(self, index: int) -> None:
        name, setup = self._plan[index]
        try:
            operation: Operation = setup(index)
            for _ in range(WARMUP_CALLS):
                operation()
        except BaseException as exc:
            self._errors.append(exc)
            self._ready.abort()
            return
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            return
        own = self._calls[index]
        clock = time.perf_counter
        try:
            while not self._stop.is_set():
                began = clock()
                operation()
                own.append(_Call(name, began, clock() - began))
        except BaseException as exc:
            self._errors.append(exc)


def oldest_expiry_ms(connection: Any) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT MIN(expires_at_ms) FROM sessiond_sessions")
        value = cursor.fetchone()[0]
        return None if value is None else int(value)


def count_expired(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM sessiond_sessions WHERE expires_at_ms <= %s",
            (int(time.time() * 1000),),
        )
        return int(cursor.fetchone()[0])


def watch_cleanup(
    connection: Any, initial_oldest_ms: int, deadline_s: float
) -> tuple[float, float]:
    """Poll the oldest expiry until no expired row is left; return (began, ended) perf_counter times.

    began is the last poll that still saw initial_oldest_ms, so the cleanup
    window may start up to one poll and one batch early.

    Raises:
        TimeoutError: nothing was deleted by deadline_s (a perf_counter time),
            or the cleanup ran longer than FINISH_TIMEOUT_S.
    """
    unchanged_at = time.perf_counter()
    began: float | None = None
    while True:
        now = time.perf_counter()
        oldest = oldest_expiry_ms(connection)
        if oldest == initial_oldest_ms:
            unchanged_at = now
            if now > deadline_s:
                raise TimeoutError(
                    "the daemon's cleanup job deleted nothing within "
                    f"{START_GRACE_S:.0f} s after its interval"
                )
        elif began is None:
            began = unchanged_at
        if began is not None:
            if oldest is None or oldest > time.time() * 1000:
                return began, now
            if now - began > FINISH_TIMEOUT_S:
                raise TimeoutError(
                    f"the daemon's cleanup job ran longer than {FINISH_TIMEOUT_S:.0f} s"
                )
        time.sleep(POLL_INTERVAL_S)


def split_windows(
    calls: list[_Call],
    *,
    ready_s: float,
    began_s: float,
    ended_s: float,
    stopped_s: float,
    threads_per_operation: int,
) -> dict[tuple[str, str], Measurement]:
    """Group the calls by operation and by window: before, during or after the cleanup.

    The WITHOUT window merges the calls before and after.
    """
    windows: dict[tuple[str, str], Measurement] = {}
    bounds = {
        BEFORE: (ready_s, began_s),
        DURING: (began_s, ended_s),
        AFTER: (ended_s, stopped_s),
    }
    for name in CLEANUP_OPERATIONS:
        for window, (start, end) in bounds.items():
            latencies = sorted(
                call.latency_s
                for call in calls
                if call.operation == name and start <= call.started_s < end
            )
            windows[name, window] = Measurement(
                f"{name}, {window}",
                threads_per_operation,
                max(0.0, end - start),
                tuple(latencies),
            )
        before, after = windows[name, BEFORE], windows[name, AFTER]
        windows[name, WITHOUT] = Measurement(
            f"{name}, {WITHOUT}",
            threads_per_operation,
            before.elapsed_s + after.elapsed_s,
            tuple(sorted(before.latencies_s + after.latencies_s)),
        )
    return windows
