"""The page sections of the scale measurements: replicas, the cleanup job and table growth."""

from __future__ import annotations

import math
import os

from bulk_load import BATCH_ROWS, SESSIONS_PER_USER
from cleanup import (
    AFTER,
    BEFORE,
    CLEANUP_OPERATIONS,
    DURING,
    POLL_INTERVAL_S,
    WITHOUT,
    CleanupRun,
)
from growth import EXPIRED_SHARE, GROWTH_OPERATIONS, Growth
from harness import Measurement
from replicas import ALL_REPLICAS, ONE_DAEMON, ReplicaRun
from report import Results, _ratio_text, _table

from sessiond_server.daemon import CLEANUP_BATCH_SIZE, CLEANUP_MIN_PAUSE_S


def scale_lines(results: Results) -> list[str]:
    return [
        "## Table growth",
        "",
        *growth_lines(results.growth),
        "",
        "## Expired-session cleanup",
        "",
        *cleanup_lines(results.cleanup),
        "",
        "## Replicas",
        "",
        *replica_lines(results.replicas),
        "",
        "## Worker processes",
        "",
        *worker_lines(results.workers),
        "",
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _ops(found: Measurement | None) -> str:
    return "-" if found is None else f"{found.ops_per_s:,.0f}"


def _p99(found: Measurement | None) -> str:
    return "-" if found is None else _ms(found.p99_ms)


def _rounds_text(rounds: int) -> str:
    return "from one round" if rounds == 1 else f"the faster of {rounds} rounds"


def _quotient(numerator: float, denominator: float) -> float | None:
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def growth_lines(growth: Growth | None) -> list[str]:
    if growth is None or len(growth.points) < 2:
        return ["Not measured."]
    first, last = growth.points[0], growth.points[-1]
    small, large = f"{first.stored_sessions:,}", f"{last.stored_sessions:,}"
    lines = [
        "Each table size is a database of its own on the private MariaDB server, "
        "served by a daemon of its own with default settings. Sessions are "
        f"bulk-loaded with multi-row INSERTs of {BATCH_ROWS:,} rows in primary key "
        "order. The rows are shaped like the daemon's: uuid4 handles, about "
        f"{SESSIONS_PER_USER} sessions per user drawn at random, "
        f"{EXPIRED_SHARE:.0%} of them expired, refresh token hashes, small "
        "payloads, data and device details, and no idle deadline (the default). "
        f"Each operation then runs at concurrency {growth.concurrency} on one "
        "size and right after on the next, so a change in the machine's load "
        "during the run affects both sizes alike, and each figure is "
        f"{_rounds_text(growth.rounds)}. The ratio is ops/s at {large} divided "
        f"by ops/s at {small}: 1.0x means no slowdown, 0.5x half the "
        "throughput. verify (remote) is get_session answered by the daemon, "
        "which reads no table, so its ratio shows the noise between the two "
        "daemons. After each load the bench has InnoDB write the loaded pages "
        "to disk, so the measurements do not share the disk with the load.",
        "",
        *_table(
            [
                "stored sessions",
                "after the rounds",
                "load time (s)",
                "table size (MiB)",
            ],
            [
                [
                    f"{point.stored_sessions:,}",
                    f"{point.final_sessions:,}",
                    f"{point.load_s:.0f}",
                    f"{point.table_mib:,.0f}",
                ]
                for point in growth.points
            ],
        ),
        "",
        "After the rounds the tables also hold the sessions that the operations "
        "created. Table size is data plus indexes from information_schema after "
        f"ANALYZE TABLE. The server's buffer pool is {growth.buffer_pool_mib:,} "
        "MiB, shared by every database. "
        + (
            f"At {large} sessions the table does not fit in it, so a create, which "
            "inserts a random uuid4 into the primary key, may wait for a page read "
            "from disk."
            if last.table_mib > growth.buffer_pool_mib
            else f"At {large} sessions the table fits in it."
        ),
        "",
        *_table(
            [
                "operation",
                f"ops/s at {small}",
                f"ops/s at {large}",
                f"ratio {large} / {small}",
                f"p99 ms at {small}",
                f"p99 ms at {large}",
            ],
            [
                [
                    name,
                    _ops(first.measurements.get(name)),
                    _ops(last.measurements.get(name)),
                    _ratio_text(growth.ratio(name)),
                    _p99(first.measurements.get(name)),
                    _p99(last.measurements.get(name)),
                ]
                for name in GROWTH_OPERATIONS
            ],
        ),
        "",
        "The listing queries come from MariaDB's general query log, captured "
        "while the SDK made one ListSessions and one ListSessionHandles call for "
        "a loaded user with live sessions; each was then run under EXPLAIN.",
        "",
        *_table(
            ["stored sessions", "RPC", "type", "key", "rows", "Extra"],
            [
                [
                    f"{point.stored_sessions:,}",
                    plan.rpc,
                    plan.access_type,
                    plan.key or "none (full scan)",
                    "-" if plan.rows is None else f"{plan.rows:,}",
                    plan.extra,
                ]
                for point in growth.points
                for plan in point.plans
            ],
        ),
        "",
        _index_verdict(growth),
    ]
    return lines


def _index_verdict(growth: Growth) -> str:
    last = growth.points[-1]
    keys = sorted({plan.key or "" for plan in last.plans})
    at = f"At {last.stored_sessions:,} stored sessions"
    if not last.plans:
        return f"{at} no listing query was captured."
    if "" in keys:
        return f"{at} a listing query reads the table without an index."
    return f"{at} both listing queries use the index {', '.join(keys)}."


def cleanup_lines(run: CleanupRun | None) -> list[str]:
    if run is None:
        return ["Not measured."]
    threads = run.concurrency // 2
    rows = []
    for name in CLEANUP_OPERATIONS:
        without = run.windows.get((name, WITHOUT))
        for window in (BEFORE, DURING, AFTER, WITHOUT):
            found = run.windows.get((name, window))
            if found is None:
                continue
            p99_ratio = max_ratio = ""
            if window == DURING and without is not None:
                p99_ratio = _ratio_text(_quotient(found.p99_ms, without.p99_ms))
                max_ratio = _ratio_text(_quotient(found.max_ms, without.max_ms))
            rows.append(
                [
                    name,
                    window,
                    f"{found.count:,}",
                    _ms(found.p50_ms),
                    _ms(found.p99_ms),
                    _ms(found.max_ms),
                    p99_ratio,
                    max_ratio,
                ]
            )
    rate = run.deleted / run.duration_s if run.duration_s > 0 else 0.0
    return [
        f"A daemon with cleanup_interval_s {run.interval_s} starts on a table of "
        f"{run.expired:,} expired and {run.live:,} live bulk-loaded sessions. From "
        f"its start, {threads} threads create sessions and {threads} threads read "
        "session data (get data, each thread on a session of its own). The "
        "daemon's first cleanup run deletes expired sessions in batches of "
        f"{CLEANUP_BATCH_SIZE:,} until a batch comes back short: here "
        f"{run.deleted:,} sessions in {run.duration_s:.1f} s ({rate:,.0f} per "
        "second). After each batch it pauses as long as the batch took, and at "
        f"least {CLEANUP_MIN_PAUSE_S * 1000:.0f} ms. The bench polls MIN(expires_at_ms) every "
        f"{POLL_INTERVAL_S * 1000:.0f} ms. Calls that start before the first "
        "deletion are the calls before cleanup, and calls that start between the "
        "first deletion and the poll that finds no expired row are the calls "
        "during cleanup. The load then goes on for one more interval, the calls "
        "after cleanup, at whose end the job runs again and finds nothing to "
        "delete. Without cleanup is before and after together, so the baseline "
        "does not rest on the first seconds of a fresh daemon alone. The ratios "
        "compare during with without, so 2.0x means twice the latency during cleanup. A "
        "max is one call, so it varies more from run to run than p99.",
        "",
        *_table(
            [
                "operation",
                "window",
                "calls",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 during / without",
                "max during / without",
            ],
            rows,
        ),
    ]


def _spread_table(run: ReplicaRun, spread: str, share_heading: str) -> list[str]:
    """Return the table of one daemon process against the calls spread over run.replicas."""
    rows = []
    for name in run.operations:
        one_daemon = run.measurements.get((ONE_DAEMON, name))
        all_replicas = run.measurements.get((ALL_REPLICAS, name))
        shares = run.cpu_shares.get(name, ())
        rows.append(
            [
                name,
                _ops(one_daemon),
                _ops(all_replicas),
                _ratio_text(run.ratio(name)),
                _p99(one_daemon),
                _p99(all_replicas),
                " / ".join(f"{share:.0%}" for share in shares) or "-",
            ]
        )
    return _table(
        [
            "operation",
            "ops/s one daemon",
            f"ops/s {spread}",
            "ratio",
            "p99 ms one daemon",
            f"p99 ms {spread}",
            share_heading,
        ],
        rows,
    )


def replica_lines(run: ReplicaRun | None) -> list[str]:
    if run is None:
        return ["Not measured."]
    return [
        f"{run.replicas} daemons (default settings) serve one MariaDB database. "
        "The SDK reaches them through a gRPC target that lists every address, "
        "`ipv4:127.0.0.1:P1,127.0.0.1:P2,...`, with the channel option "
        "`grpc.lb_policy_name` set to `round_robin`, passed through "
        "`SessionClient(target, options=...)`: each call goes to the next "
        "replica. Without the option gRPC uses pick_first and sends every call "
        "to one address. The CPU share column is each replica's part of the "
        "replicas' CPU time (from /proc/PID/stat) during the kept measurement, "
        "so an even split shows the calls were spread. The one-daemon column "
        "uses the first replica's address alone while the others idle. The "
        "two setups alternate operation by operation, each figure is "
        f"{_rounds_text(run.rounds)} at concurrency {run.concurrency}, and the "
        "ratio is ops/s through the replicas divided "
        "by ops/s through one daemon.",
        "",
        *_spread_table(run, f"{run.replicas} replicas", "CPU share per replica"),
        "",
        f"The replicas, the MariaDB server and the bench's client threads all run "
        f"on this machine's {os.cpu_count()} cores, so the replicas add no CPU: "
        "the ratio measures the cost of spreading calls over several processes, "
        "not scale-out. Replicas on machines of their own would add cores.",
    ]


def worker_lines(run: ReplicaRun | None) -> list[str]:
    if run is None:
        return ["Not measured."]
    return [
        f"Two daemons serve one MariaDB database: one with workers = 1 (one "
        f"process) and one with workers = {run.replicas}, whose worker processes "
        "share one port through SO_REUSEPORT. The kernel gives each TCP "
        "connection to one worker, so the client of the daemon with workers "
        f"opens {run.connections} connections (`SessionClient(address, "
        f"connections={run.connections})`) and its calls take them in turn; the "
        "one-process daemon's client has one. The CPU share column is each "
        "worker's part of the workers' CPU time (from /proc/PID/stat) during "
        "the kept measurement. The two setups alternate operation by operation, "
        f"each figure is {_rounds_text(run.rounds)} at concurrency "
        f"{run.concurrency}, and the ratio is ops/s with workers divided by ops/s "
        "with one process.",
        "",
        *_spread_table(run, f"{run.replicas} workers", "CPU share per worker"),
        "",
        f"The workers, the MariaDB server and the bench's client threads share "
        f"this machine's {os.cpu_count()} cores, and the client is one Python "
        "process. So a ratio above 1 shows how much of the machine one daemon "
        "process leaves unused, not how workers scale on a larger host.",
    ]
