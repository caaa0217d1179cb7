"""Operation speed at several sizes of the sessions table, and the plans of the listing queries.

Each size is a database of its own, bulk-loaded (bulk_load.py) and served
by a daemon of its own, and the SDK operations alternate between them. The
queries behind ListSessions and ListSessionHandles are taken from MariaDB's
general query log while the SDK calls them, so EXPLAIN runs on the
statements the daemon really sends, whatever its storage code builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import operations
from harness import Measurement, WorkerSetup
from operations import ClientFor

import sessiond

# Every load marks this share of its rows expired, as a table between two
# cleanup runs would have.
EXPIRED_SHARE = 0.1
GROWTH_OPERATIONS = ("create", "verify (remote)", "refresh", "get data", "update data")
LISTING_RPCS = ("ListSessions", "ListSessionHandles")


@dataclass(frozen=True)
class QueryPlan:
    """One row of EXPLAIN for a statement the daemon sent."""

    rpc: str
    statement: str
    access_type: str
    key: str | None
    rows: int | None
    extra: str


@dataclass
class GrowthPoint:
    """One database loaded to stored_sessions rows, and what was measured on it."""

    stored_sessions: int
    load_s: float
    # DATA_LENGTH + INDEX_LENGTH of sessiond_sessions after ANALYZE TABLE.
    table_mib: float
    # Rows after the rounds, which add the sessions that the operations create.
    final_sessions: int = 0
    measurements: dict[str, Measurement] = field(default_factory=dict)
    plans: list[QueryPlan] = field(default_factory=list)


@dataclass
class Growth:
    concurrency: int
    rounds: int
    buffer_pool_mib: int
    points: list[GrowthPoint] = field(default_factory=list)

    def ratio(self, operation: str) -> float | None:
        """Return ops/s at the last point divided by ops/s at the first."""
        if len(self.points) < 2:
            return None
        first = self.points[0].measurements.get(operation)
        last = self.points[-1].measurements.get(operation)
        if first is None or last is None or first.ops_per_s <= 0:
            return None
        return last.ops_per_s / first.ops_per_s


def growth_setups(client_for: ClientFor) -> dict[str, Callable[[], WorkerSetup]]:
    """Return a fresh worker setup for each operation of GROWTH_OPERATIONS."""
    # NOTE: verify (remote) is SessionClient.get_session, which sends every
    # token to the daemon. If the SDK starts verifying locally by default,
    # this and replica_setups must opt out to keep measuring the daemon.
    return {
        "create": lambda: operations.create(client_for, []),
        "verify (remote)": lambda: operations.verify(client_for, check_database=False),
        "refresh": lambda: operations.refresh(client_for, verify_each=False),
        "get data": lambda: operations.get_data(client_for),
        "update data": lambda: operations.update_data(client_for),
    }


def buffer_pool_mib(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@innodb_buffer_pool_size")
        return int(cursor.fetchone()[0]) // (1024 * 1024)


def table_mib(connection: Any) -> float:
    """Refresh the table's statistics and return its data and index size in MiB."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE sessiond_sessions")
        cursor.fetchall()
        cursor.execute(
            "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sessiond_sessions'"
        )
        return int(cursor.fetchone()[0]) / (1024 * 1024)


def explain_listing_queries(
    connection: Any, client: sessiond.SessionClient, user_id: str
) -> list[QueryPlan]:
    """Call ListSessions and ListSessionHandles for user_id and EXPLAIN the SELECTs they ran.

    connection is a root connection to the daemon's database on a server
    this bench started: the general query log is switched on for each call
    alone, and written to the mysql.general_log table.

    Raises:
        RuntimeError: a call left no SELECT naming user_id in the log.
    """
    calls: dict[str, Callable[[], object]] = {
        "ListSessions": lambda: client.list_sessions(user_id),
        "ListSessionHandles": lambda: client.get_all_session_handles_for_user(user_id),
    }
    plans: list[QueryPlan] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@global.log_output")
        saved_output = str(cursor.fetchone()[0])
        cursor.execute("SET GLOBAL log_output = 'TABLE'")
        try:
            for rpc, call in calls.items():
                cursor.execute("TRUNCATE TABLE mysql.general_log")
                cursor.execute("SET GLOBAL general_log = ON")
                try:
                    call()
                finally:
                    cursor.execute("SET GLOBAL general_log = OFF")
                statements = _logged_selects(cursor, user_id)
                if not statements:
                    raise RuntimeError(
                        f"the general query log has no SELECT for {user_id!r} "
                        f"after {rpc}; did the daemon answer from elsewhere?"
                    )
                for statement in statements:
                    plans += _explain(cursor, rpc, statement)
        finally:
            cursor.execute("TRUNCATE TABLE mysql.general_log")
            cursor.execute("SET GLOBAL log_output = %s", (saved_output,))
    return plans


def _logged_selects(cursor: Any, user_id: str) -> list[str]:
    """Return the logged SELECTs that name user_id, as a string or a hex literal."""
    # Prepared statements are logged as Execute with their parameters filled in.
    cursor.execute(
        "SELECT argument FROM mysql.general_log "
        "WHERE command_type IN ('Query', 'Execute') ORDER BY event_time"
    )
    texts = [_text(row[0]) for row in cursor]
    forms = (f"'{user_id}'".lower(), f"x'{user_id.encode('utf-8').hex()}'")
    return [
        text
        for text in texts
        if text.lstrip().upper().startswith("SELECT")
        and any(form in text.lower() for form in forms)
    ]


def _text(value: Any) -> str:
    # The argument column is MEDIUMTEXT in MariaDB 10.11 and MEDIUMBLOB in MySQL.
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", errors="replace")


def _explain(cursor: Any, rpc: str, statement: str) -> list[QueryPlan]:
    # No parameters, so PyMySQL sends the text unchanged, % signs included.
    cursor.execute("EXPLAIN " + statement)
    names = [column[0].lower() for column in cursor.description]
    plans = []
    for row in cursor.fetchall():
        found = dict(zip(names, row, strict=True))
        rows = found.get("rows")
        plans.append(
            QueryPlan(
                rpc=rpc,
                statement=statement,
                access_type=str(found.get("type") or ""),
                key=None if found.get("key") is None else str(found["key"]),
                rows=None if rows is None else int(rows),
                extra=str(found.get("extra") or ""),
            )
        )
    return plans
