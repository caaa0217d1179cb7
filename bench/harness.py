"""Run one operation from several threads for a bounded time and record each call's latency."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cpu import CpuMeter

# A worker's setup returns the call to time. The call raises Exhausted when
# it has no input left (for example, no unrevoked session), which ends that
# worker early without failing the measurement.
Operation = Callable[[], object]
WorkerSetup = Callable[[int], Operation]

# Hard cap on the calls of one measurement, whatever its time budget.
MAX_CALLS_PER_MEASUREMENT = 2_000_000
WARMUP_CALLS = 3


class Exhausted(Exception):
    """The worker has no input left, so it stops."""


@dataclass(frozen=True)
class Measurement:
    """The calls of one operation at one concurrency, with their latencies sorted."""

    name: str
    concurrency: int
    elapsed_s: float
    latencies_s: tuple[float, ...]
    # CPU seconds each named process spent between the common start and the
    # last thread's stop; empty when the measurement read none.
    cpu_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def ops_per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """Return the latency at fraction (0.5 for p50), nearest-rank, in milliseconds."""
        if not self.latencies_s:
            return math.nan
        rank = max(1, math.ceil(fraction * self.count))
        return self.latencies_s[rank - 1] * 1000

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(0.50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    @property
    def max_ms(self) -> float:
        return self.latencies_s[-1] * 1000 if self.latencies_s else math.nan

    def cpu_us_per_call(self, process: str) -> float | None:
        """Return the CPU microseconds process spent per call, or None if not read."""
        if process not in self.cpu_s or not self.latencies_s:
            return None
        return self.cpu_s[process] / self.count * 1_000_000


class MeasurementError(RuntimeError):
    """A worker's setup or call raised; the message names the measurement."""


def measure(
    name: str,
    setup: WorkerSetup,
    *,
    concurrency: int,
    seconds: float,
    max_calls: int = MAX_CALLS_PER_MEASUREMENT,
    cpu_pids: Mapping[str, int] | None = None,
) -> Measurement:
    """Time calls from concurrency threads until seconds pass or max_calls are made.

    Each thread runs setup(index) first, then WARMUP_CALLS untimed calls,
    then waits for the others, so the clock starts with every thread ready.
    The elapsed time runs from that common start to the last thread's stop.
    With cpu_pids, the CPU time of each named process and of the bench
    process over that span goes into the result's cpu_s.

    Raises:
        MeasurementError: a setup or a call raised anything but Exhausted.
    """
    per_thread_calls = max(1, max_calls // concurrency)
    started_at = [0.0]
    meter = CpuMeter(cpu_pids) if cpu_pids else None

    def start_clock() -> None:
        if meter is not None:
            meter.start()
        started_at[0] = time.perf_counter()

    # The barrier runs start_clock once, before it releases any thread, so
    # every worker reads the same start time.
    ready = threading.Barrier(concurrency + 1, action=start_clock)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stopped_at = [0.0] * concurrency
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            operation = setup(index)
            for _ in range(WARMUP_CALLS):
                operation()
        except Exhausted:
            operation = _exhausted
        except BaseException as exc:
            errors.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        deadline = started_at[0] + seconds
        own = latencies[index]
        clock = time.perf_counter
        try:
            while len(own) < per_thread_calls:
                began = clock()
                if began >= deadline:
                    break
                operation()
                own.append(clock() - began)
        except Exhausted:
            pass
        except BaseException as exc:
            errors.append(exc)
        stopped_at[index] = clock()

    threads = [
        threading.Thread(target=work, args=(index,), name=f"bench-{name}-{index}")
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    cpu_s = meter.stop() if meter is not None and not errors else {}
    if errors:
        first = errors[0]
        raise MeasurementError(
            f"{name} at concurrency {concurrency} failed: {type(first).__name__}: {first}"
        ) from first
    elapsed = max(stopped_at) - started_at[0]
    merged = sorted(value for own in latencies for value in own)
    return Measurement(name, concurrency, elapsed, tuple(merged), cpu_s)


def _exhausted() -> None:
    raise Exhausted
