"""The page sections on CPU time per call and on the throughput targets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cpu import CLIENT, CLOCK_TICKS_PER_S, DAEMON, DATABASE, FLOOR_SERVER
from harness import Measurement
from operations import OPERATIONS, SQL_FLOORS, OperationSpec
from report import BACKENDS, GRPC_FLOOR, HEALTH_FLOOR, Results, _table

# The server column contains the floor server's CPU time for the empty call,
# and the daemon's for the health check and the operations.
SERVER_PROCESSES = (FLOOR_SERVER, DAEMON)


@dataclass(frozen=True)
class Target:
    """A throughput goal for one MariaDB operation at the highest concurrency.

    Either a fixed rate in ops/s, or a share of the empty-call floor's rate
    measured in the same run.
    """

    operation: str
    ops_per_s: float | None = None
    floor_share: float | None = None

    def goal(self, results: Results, concurrency: int) -> float | None:
        if self.ops_per_s is not None:
            return self.ops_per_s
        floor = results.floor_ops(GRPC_FLOOR, concurrency)
        if floor is None or self.floor_share is None:
            return None
        return floor * self.floor_share

    def text(self) -> str:
        if self.ops_per_s is not None:
            return f"{self.ops_per_s:,.0f} ops/s"
        return f"{self.floor_share:.0%} of the empty-call floor's ops/s"


# The fixed rates are what an in-process session library in Node.js did on
# this machine kind against MariaDB 10.11, with no network hop at all.
TARGETS = (
    Target("create", ops_per_s=3800),
    Target("refresh", ops_per_s=1370),
    Target("verify", floor_share=0.8),
    Target("get data", floor_share=0.8),
    Target("update data", floor_share=0.8),
)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _server_us(found: Measurement) -> float | None:
    for process in SERVER_PROCESSES:
        value = found.cpu_us_per_call(process)
        if value is not None:
            return value
    return None


def total_us(found: Measurement) -> float | None:
    """Return the CPU microseconds per call of every process read, summed."""
    if not found.cpu_s or not found.count:
        return None
    return sum(found.cpu_s.values()) / found.count * 1_000_000


def _cpu_row(
    label: str, found: Measurement | None, floor_server_us: float | None
) -> list[str]:
    if found is None:
        return [label, "-", "-", "-", "-", "-", "-"]
    server = _server_us(found)
    # Calls that stay in the client process cost the server nothing.
    ratio = (
        f"{server / floor_server_us:.1f}x"
        if server is not None and server >= 1 and floor_server_us
        else "-"
    )
    return [
        label,
        f"{found.ops_per_s:,.0f}",
        _us(server),
        _us(found.cpu_us_per_call(DATABASE)),
        _us(found.cpu_us_per_call(CLIENT)),
        _us(total_us(found)),
        ratio,
    ]


def cpu_lines(results: Results) -> list[str]:
    concurrency = max(results.concurrencies)
    empty = results.floors.get((GRPC_FLOOR, concurrency))
    floor_server_us = None if empty is None else empty.cpu_us_per_call(FLOOR_SERVER)
    if floor_server_us is None:
        return ["Not measured."]
    rows = [
        _cpu_row(
            f"floor: {name}", results.floors.get((name, concurrency)), floor_server_us
        )
        for name in (GRPC_FLOOR, HEALTH_FLOOR, *SQL_FLOORS)
    ]
    for backend in BACKENDS:
        rows += [
            _cpu_row(
                f"{backend}: {spec.name}",
                results.operations.get((backend, spec.name, concurrency)),
                floor_server_us,
            )
            for spec in OPERATIONS
        ]
    cores = os.cpu_count() or 1
    return [
        "Each figure is the CPU time a process spent during the measurement at "
        f"concurrency {concurrency}, divided by the calls made, in microseconds. "
        "User plus system time comes from /proc/PID/stat for the server process "
        "(the floor server for the empty call, the daemon otherwise) and the "
        "private MariaDB server, and from os.times() for the bench process, whose "
        "threads are the client. Unlike ops/s, CPU time per "
        "call changes little with other load on the machine, though contention for "
        "locks and the GIL adds some. /proc counts in clock ticks of "
        f"{1000 / CLOCK_TICKS_PER_S:g} ms, so a short measurement (a quick run's "
        "0.2 s) shows coarse, rounded figures. SQLite runs inside the daemon, so its database "
        "time is in the server column. The last column compares the server's time "
        "with the floor server's time for one empty call.",
        "",
        *_table(
            [
                "measurement",
                "ops/s",
                "server us",
                "database us",
                "client us",
                "total us",
                "server / empty call",
            ],
            rows,
        ),
        "",
        f"This machine has {cores} cores, so the processes together can spend at most "
        f"{cores * 1_000_000:,} us of CPU per second. A rate of R calls per second "
        f"therefore leaves at most {cores * 1_000_000:,} / R us per call for server, "
        "database and client together.",
    ]


def floors_total_us(
    results: Results, spec: OperationSpec, concurrency: int
) -> float | None:
    """Return the total CPU time per call of the floor calls an operation is made of."""
    parts = [(GRPC_FLOOR, spec.grpc_calls)]
    if spec.sql_floor is not None:
        parts.append((spec.sql_floor, spec.sql_floor_calls))
    total = 0.0
    for name, calls in parts:
        found = results.floors.get((name, concurrency))
        value = None if found is None else total_us(found)
        if value is None:
            return None
        total += value * calls
    return total


def _verdict(
    measured_ops: float,
    goal: float,
    floors_us: float | None,
    budget_us: float,
    one_process_cap: float | None,
) -> str:
    if measured_ops >= goal:
        return "met"
    if floors_us is not None and floors_us > budget_us:
        return "not met; the floors alone exceed the budget"
    if one_process_cap is not None and one_process_cap < goal:
        return "not met; above the one-process cap"
    return "not met; within the budget and the cap, so calls wait rather than work"


def target_lines(results: Results) -> list[str]:
    concurrency = max(results.concurrencies)
    cores = os.cpu_count() or 1
    specs = {spec.name: spec for spec in OPERATIONS}
    rows = []
    for target in TARGETS:
        found = results.operations.get(("MariaDB", target.operation, concurrency))
        goal = target.goal(results, concurrency)
        if found is None or goal is None:
            rows.append([target.operation, target.text()] + ["-"] * 7)
            continue
        budget = cores * 1_000_000 / goal
        floors = floors_total_us(results, specs[target.operation], concurrency)
        server = found.cpu_us_per_call(DAEMON)
        cap = None if not server else 1_000_000 / server
        rows.append(
            [
                target.operation,
                target.text(),
                f"{goal:,.0f}",
                f"{found.ops_per_s:,.0f}",
                f"{budget:,.0f}",
                _us(total_us(found)),
                _us(floors),
                "-" if cap is None else f"{cap:,.0f}",
                _verdict(found.ops_per_s, goal, floors, budget, cap),
            ]
        )
    return [
        f"MariaDB operations at concurrency {concurrency} against their targets. "
        "The budget is the most CPU time per call, server, database and client "
        f"together, that the target rate leaves on {cores} cores. The measured "
        "total is what the call took in this run. The floors' total is what "
        "its floor calls took: the empty gRPC call plus the matching SQL floor, "
        "each as many times as the operation needs (see CPU time per call above). "
        "Where the floors' total is above the budget, no change to the daemon's "
        "own code meets the target on this machine: the gRPC server and the "
        "PyMySQL client already cost more than the budget. A target can also be "
        "missed with a total below the budget. One daemon process runs Python on "
        "one core at a time (the GIL), so it serves at most 1,000,000 / (its "
        "server us per call) calls per second: the one-process cap column. Above "
        "that cap only `workers` or replicas can help, given free cores. A target "
        "missed within both the budget and the cap loses its time to waiting "
        "(for the GIL, locks or the other processes), not to work.",
        "",
        *_table(
            [
                "operation",
                "target",
                "target ops/s",
                "measured ops/s",
                "budget us",
                "measured total us",
                "floors' total us",
                "one-process cap ops/s",
                "verdict",
            ],
            rows,
        ),
    ]
