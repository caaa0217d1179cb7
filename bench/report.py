"""The results of one run, written as docs/benchmarks.md and a plot."""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sqlite3
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from algorithms import AlgorithmCost, default_algorithm_verdict
from cleanup import CleanupRun
from growth import Growth
from harness import WARMUP_CALLS, Measurement
from memory import RssSample
from operations import OPERATIONS, SQL_FLOORS, OperationSpec
from replicas import ReplicaRun

GRPC_FLOOR = "empty gRPC call (server in its own process)"
HEALTH_FLOOR = "gRPC health check (daemon process)"
BACKENDS = ("SQLite", "MariaDB")
PAGE_NAME = "benchmarks.md"
PLOT_NAME = "benchmarks.png"
MYSQL_CHOICE = (
    "MariaDB runs as a private server (tests/private_mysql.py) that the bench "
    "installs and starts from the installed mariadbd, not as a database on the "
    "shared server at 127.0.0.1:3306. Other developers' test suites use the shared "
    "server at any time, and their load would change these numbers from run to "
    "run. The private server starts with --no-defaults, so it runs on the "
    "compiled-in settings (listed under MariaDB settings above), and it installs "
    "and starts in a few seconds."
)


@dataclass
class Results:
    """Everything one run measured, filled in as the run goes."""

    command: str
    seconds: float
    concurrencies: list[int]
    config: object
    quick: bool
    mariadb_version: str = ""
    mariadb_settings: str = ""
    client_mode: str = "shared"
    client_mode_trials: dict[str, Measurement] = field(default_factory=dict)
    floors: dict[tuple[str, int], Measurement] = field(default_factory=dict)
    operations: dict[tuple[str, str, int], Measurement] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rss: list[RssSample] = field(default_factory=list)
    algorithms: list[AlgorithmCost] = field(default_factory=list)
    growth: Growth | None = None
    cleanup: CleanupRun | None = None
    replicas: ReplicaRun | None = None
    workers: ReplicaRun | None = None
    wall_time_s: float = 0.0
    load_at_start: str = field(default_factory=lambda: read_load_average())
    load_at_end: str = ""

    def floor_ops(self, name: str, concurrency: int) -> float | None:
        found = self.floors.get((name, concurrency))
        return found.ops_per_s if found is not None else None


def cost_ratio(
    operation: Measurement, floor_ops: float | None, floor_calls: int
) -> float | None:
    """Return how many times the floor's cost the operation takes: floor ops/s over operation ops/s.

    An operation made of floor_calls floor calls is compared with floor ops/s
    divided by floor_calls.
    """
    if floor_ops is None or operation.ops_per_s <= 0:
        return None
    return (floor_ops / floor_calls) / operation.ops_per_s


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "-"
    # Calls that never leave the process cost a small fraction of a floor.
    return f"{value:.1f}x" if value >= 0.1 else f"{value:.4f}x"


def _ms_text(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def machine_facts(results: Results) -> list[tuple[str, str]]:
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU model", _cpu_model()),
        ("memory", _memory_total()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("load average (1, 5, 15 min) at start", results.load_at_start),
        ("load average (1, 5, 15 min) at end", results.load_at_end),
        ("MariaDB", results.mariadb_version or "not measured"),
        ("MariaDB settings", results.mariadb_settings or "not measured"),
        ("SQLite", sqlite3.sqlite_version),
        ("grpcio", _version("grpcio")),
        ("PyJWT", _version("PyJWT")),
        ("cryptography", _version("cryptography")),
        ("PyMySQL", _version("PyMySQL")),
        ("DBUtils", _version("DBUtils")),
    ]


def read_load_average() -> str:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg."""
    try:
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            return ", ".join(loadavg.read().split()[:3])
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _measurement_cells(found: Measurement | None) -> list[str]:
    if found is None:
        return ["-", "-", "-", "-"]
    return [
        f"{found.ops_per_s:,.0f}",
        _ms_text(found.p50_ms),
        _ms_text(found.p99_ms),
        f"{found.count:,}",
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _floor_rows(results: Results) -> list[list[str]]:
    rows = []
    for name in (GRPC_FLOOR, HEALTH_FLOOR, *SQL_FLOORS):
        for concurrency in results.concurrencies:
            found = results.floors.get((name, concurrency))
            if found is not None:
                rows.append([name, str(concurrency), *_measurement_cells(found)])
    return rows


def operation_rows(results: Results) -> list[list[str]]:
    rows = []
    for backend in BACKENDS:
        for spec in OPERATIONS:
            for concurrency in results.concurrencies:
                rows.append(_operation_row(results, backend, spec, concurrency))
    return rows


def _operation_row(
    results: Results, backend: str, spec: OperationSpec, concurrency: int
) -> list[str]:
    found = results.operations.get((backend, spec.name, concurrency))
    if found is None:
        reason = results.skipped.get(spec.name, "not measured")
        return [backend, spec.name, str(concurrency), f"skipped: {reason}"] + [""] * 6
    grpc_ratio = cost_ratio(
        found, results.floor_ops(GRPC_FLOOR, concurrency), spec.grpc_calls
    )
    sql_ratio = None
    if backend == "MariaDB" and spec.sql_floor is not None:
        sql_ratio = cost_ratio(
            found, results.floor_ops(spec.sql_floor, concurrency), spec.sql_floor_calls
        )
    health_ratio = cost_ratio(
        found, results.floor_ops(HEALTH_FLOOR, concurrency), spec.grpc_calls
    )
    return [
        backend,
        spec.name,
        str(concurrency),
        *_measurement_cells(found),
        _ratio_text(grpc_ratio),
        _ratio_text(health_ratio),
        _ratio_text(sql_ratio),
    ]


def _algorithm_lines(results: Results) -> list[str]:
    if not results.algorithms:
        return ["Not measured."]
    rows = [
        [
            cost.algorithm,
            f"{cost.signs_per_s:,.0f}",
            f"{cost.sign_us:.0f}",
            f"{cost.verifies_per_s:,.0f}",
            f"{cost.verify_us:.0f}",
            str(cost.token_chars),
        ]
        for cost in results.algorithms
    ]
    default = getattr(results.config, "signing_algorithm", "EdDSA")
    lines = _table(
        [
            "algorithm",
            "signs/s",
            "µs per sign",
            "verifies/s",
            "µs per verify",
            "token chars",
        ],
        rows,
    )
    lines += [
        "",
        f"The daemon's default is {default} (`signing_algorithm` in "
        f"server/sessiond_server/config.py). "
        + default_algorithm_verdict(results.algorithms, default),
    ]
    return lines


def _rss_lines(results: Results) -> list[str]:
    if not results.rss:
        return ["Not measured."]
    base = results.rss[0].rss_kib
    rows = []
    for sample in results.rss:
        label = (
            "after startup"
            if sample.creates == 0
            else f"after {sample.creates:,} creates"
        )
        growth = (sample.rss_kib - base) / 1024
        rows.append(
            [
                label,
                f"{sample.rss_kib / 1024:.1f}",
                f"{growth:+.1f}",
                f"{sample.elapsed_s:.0f}",
            ]
        )
    return _table(
        ["daemon state", "VmRSS (MiB)", "growth (MiB)", "create time (s)"], rows
    )


def render(results: Results, plot_written: bool) -> str:
    config = results.config
    concurrency_text = " and ".join(str(value) for value in results.concurrencies)
    quick_note = (
        " This was a quick smoke run (`--quick`), so its numbers mean little."
        if results.quick
        else ""
    )
    lines = [
        "# Benchmarks",
        "",
        "Numbers from one machine only mean something as ratios to floors measured "
        "in the same run: compare the ratio columns, not the ops/s, across machines "
        "and runs.",
        "",
        "`make bench` runs `bench/run.py`, which overwrites this page and the plot. "
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.{quick_note}",
        "",
        "## Machine and command",
        "",
        *_table(
            ["fact", "value"], [[name, value] for name, value in machine_facts(results)]
        ),
        "",
        f"Command: `{results.command}`, wall time {results.wall_time_s:.0f} s "
        "(`make bench` runs `.venv/bin/python bench/run.py` with no options). Each "
        f"measurement runs for {results.seconds:g} s after {WARMUP_CALLS} untimed "
        f"warm-up calls per thread, at concurrency {concurrency_text} (threads in the "
        "bench process). The machine is shared, so the load averages above include "
        "whatever else ran during the run.",
        "",
        "## Setup",
        "",
        f"- {MYSQL_CHOICE}",
        "- Both daemons are `sessiond serve` processes (tests/sessiond_testing.py "
        "DaemonProcess) on free loopback ports with default settings "
        f"(grpc_workers {getattr(config, 'grpc_workers', '?')}, db_pool_size "
        f"{getattr(config, 'db_pool_size', '?')}, signing_algorithm "
        f"{getattr(config, 'signing_algorithm', '?')}, anti_csrf on) and log_level INFO. "
        "SQLite uses a file in a temporary folder on the same disk.",
        f"- {_client_mode_text(results)}",
        "- Every floor is measured twice, before and after the operations, and the "
        "table keeps the faster round, so a burst of other load during one round "
        "does not lower the floor. A floor that is too high only makes the ratios "
        "larger.",
        "- The gRPC floor is one empty unary call (bytes in, bytes out, no protobuf) "
        "to a Python server in a process of its own (bench/floor_server.py), as the "
        "daemon runs in its own. So the server's threads do not compete with the "
        "bench's client threads for one GIL. That server has a thread pool of "
        f"grpc_workers ({getattr(config, 'grpc_workers', '?')}) threads and the "
        "daemon's server options, but none of the daemon's interceptors. The health "
        "check row is a near-empty call served by the SQLite daemon process itself, "
        "metrics interceptor included, as a cross-check on the floor.",
        "- The SQL floors run statements shaped like the daemon's (every column of "
        "the daemon's table for INSERT and SELECT, one UPDATE or DELETE by primary "
        "key for each write) with PyMySQL through a "
        "DBUtils PooledDB built with the daemon's pool settings (maxconnections and "
        "maxcached db_pool_size, blocking=False, reset=False, ping=0, the same "
        "connect arguments and a semaphore around checkout), on a second database "
        "of the same server with the daemon's schema. Single statements run in "
        "autocommit mode, one round trip each. The transaction floor takes two round "
        "trips, as the daemon's merge of session data does: it sends `BEGIN; SELECT "
        "... FOR UPDATE` as one query and `UPDATE ...; COMMIT` as another, which the "
        "connect arguments' CLIENT_MULTI_STATEMENTS flag allows. A refresh sends "
        "its locked read, its UPDATEs and COMMIT in one query. Each thread works on "
        "its own rows.",
        "- refresh is a chain: each call uses the refresh token the previous call "
        "returned and never verifies it, so every refresh presents a child of the "
        "stored token and the daemon promotes it inside the refresh. refresh + verify "
        "is one refresh followed by one get_session on the new access token, which "
        "promotes the child there, and is compared with two calls of each floor.",
        "- Ratios are the floor's ops/s divided by the operation's ops/s at the same "
        "concurrency, so 3.0x means the operation takes three times the floor's cost. "
        "x gRPC floor uses the empty call, x health check the daemon's health check, "
        "and x SQL floor the operation's matching SQL floor (listed under the table). "
        "SQL ratios are given for MariaDB only; SQLite has no SQL floor here.",
        "",
        "## Floors",
        "",
        *_table(
            ["floor", "threads", "ops/s", "p50 ms", "p99 ms", "calls"],
            _floor_rows(results),
        ),
        "",
        "## Operations",
        "",
        *_table(
            [
                "backend",
                "operation",
                "threads",
                "ops/s",
                "p50 ms",
                "p99 ms",
                "calls",
                "x gRPC floor",
                "x health check",
                "x SQL floor",
            ],
            operation_rows(results),
        ),
        "",
        "Matching SQL floor of each operation: "
        + "; ".join(
            f"{spec.name}: {spec.sql_floor or 'none (no database access)'}"
            + (f" (x{spec.sql_floor_calls})" if spec.sql_floor_calls > 1 else "")
            for spec in OPERATIONS
        )
        + ".",
        "",
    ]
    if plot_written:
        lines += [
            f"![ops/s at concurrency {max(results.concurrencies)} against the floors]({PLOT_NAME})",
            "",
        ]
    else:
        lines += [
            "No plot: matplotlib is not installed. `make bench` installs it (the `bench` extra).",
            "",
        ]
    # Imported here because cpu_report and scale_report import this module.
    import cpu_report
    import scale_report

    lines += [
        "## CPU time per call",
        "",
        *cpu_report.cpu_lines(results),
        "",
        "## Targets",
        "",
        *cpu_report.target_lines(results),
        "",
        "## Signing algorithms",
        "",
        "PyJWT encode and decode with loaded key objects, one thread, claims shaped "
        "like an access token's. Each rate is the faster of two rounds.",
        "",
        *_algorithm_lines(results),
        "",
        "## Daemon memory",
        "",
        "VmRSS from /proc/PID/status of a fresh SQLite daemon process, after startup "
        f"and after cumulative creates at concurrency {max(results.concurrencies)}.",
        "",
        *_rss_lines(results),
        "",
    ]
    if results.rss and results.rss[-1].creates < 100_000:
        lines += [
            f"The run stopped at {results.rss[-1].creates:,} creates to stay "
            "short. `bench/run.py --rss-creates 20000,100000` measures the RSS "
            "after 100,000 creates.",
            "",
        ]
    lines += scale_report.scale_lines(results)
    return "\n".join(lines)


def _client_mode_text(results: Results) -> str:
    trials = results.client_mode_trials
    if not trials:
        return "Every thread uses one shared SessionClient."
    parts = ", ".join(
        f"{mode} {found.ops_per_s:,.0f} ops/s" for mode, found in trials.items()
    )
    chosen = (
        "one SessionClient shared by every thread"
        if results.client_mode == "shared"
        else "one SessionClient per thread"
    )
    return (
        f"Clients: stateless verify at concurrency {max(results.concurrencies)} on the "
        f"SQLite daemon measured {parts}, best of two alternating rounds "
        "(shared: one SessionClient for all threads; "
        f"own: one per thread), so every measurement uses {chosen}, and the floors use "
        "gRPC channels the same way."
    )


def write(results: Results, out_dir: Path) -> Path:
    """Write the page, and the plot when matplotlib is installed; return the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_written = importlib.util.find_spec("matplotlib") is not None
    if plot_written:
        import plot

        plot.write(results, out_dir / PLOT_NAME)
    else:
        (out_dir / PLOT_NAME).unlink(missing_ok=True)
    page = out_dir / PAGE_NAME
    page.write_text(render(results, plot_written), encoding="utf-8")
    return page


def summary(results: Results) -> str:
    """Return the operations table as plain text for the terminal."""
    header = [
        "backend",
        "operation",
        "threads",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "calls",
        "x gRPC",
        "x health",
        "x SQL",
    ]
    rows = [header] + operation_rows(results)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
