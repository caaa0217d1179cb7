"""The storage interface and the SQL that every backend shares.

Each public method runs in one connection and at most one transaction, and
never calls another storage method while it has its connection, so no call
ever waits for a second pooled connection while it has one.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from .. import migrations
from ..errors import ConflictError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Cursor = Any

# The idle deadline of a session when idle_timeout_s is off: the largest
# signed 64-bit integer, which both BIGINT and SQLite INTEGER hold.
NO_IDLE_DEADLINE_MS = 2**63 - 1

_SESSION_COLUMNS = (
    "session_handle, user_id, refresh_token_hash2, access_token_payload, "
    "session_data, data_version, created_at_ms, expires_at_ms, "
    "previous_refresh_token_hash2, refresh_token_changed_at_ms, "
    "last_refreshed_at_ms, idle_expires_at_ms, "
    "device_user_agent, device_ip_address, device_label"
)
# The same columns with an empty session_data, for reads that do not need
# the data: it may be megabytes, and verify or refresh must not fetch it.
_SESSION_COLUMNS_WITHOUT_DATA = _SESSION_COLUMNS.replace(
    "session_data,", "X'' AS session_data,"
)
# The columns of ListSessions: all but the refresh token hashes and the
# session data, which may be large.
_LISTING_COLUMNS = (
    "session_handle, user_id, access_token_payload, created_at_ms, "
    "last_refreshed_at_ms, expires_at_ms, idle_expires_at_ms, "
    "device_user_agent, device_ip_address, device_label"
)
# The condition that a session is live, with now_ms as both parameters. Every
# read that treats a session as existing uses it, so a session past either
# deadline is gone for callers before the cleanup job deletes its row.
_LIVE = "expires_at_ms > ? AND idle_expires_at_ms > ?"


class StatementResult(NamedTuple):
    """The row count and rows of one statement in a batch."""

    rowcount: int
    rows: tuple[Any, ...]


@dataclass(frozen=True)
class SessionRecord:
    """One row of the sessions table."""

    session_handle: str
    user_id: str
    refresh_token_hash2: bytes
    access_token_payload: str
    session_data: str
    data_version: int
    created_at_ms: int
    expires_at_ms: int
    # The stored refresh token this one replaced, and when: a replay of it,
    # or of a child of it, within the grace period is not theft.
    previous_refresh_token_hash2: bytes | None = None
    refresh_token_changed_at_ms: int = 0
    # When the session was last refreshed; created_at_ms before that.
    last_refreshed_at_ms: int = 0
    # The session ends unless a refresh comes before this.
    idle_expires_at_ms: int = NO_IDLE_DEADLINE_MS
    # The device the session was created from; an empty string means unknown.
    device_user_agent: str = ""
    device_ip_address: str = ""
    device_label: str = ""

    @property
    def ends_at_ms(self) -> int:
        """When the session stops being live unless a refresh comes first."""
        return min(self.expires_at_ms, self.idle_expires_at_ms)


@dataclass(frozen=True)
class SessionListing:
    """A live session as ListSessions shows it: no token hashes, no data."""

    session_handle: str
    user_id: str
    access_token_payload: str
    created_at_ms: int
    last_refreshed_at_ms: int
    # When the session ends unless a refresh comes first.
    ends_at_ms: int
    device_user_agent: str
    device_ip_address: str
    device_label: str


class Rotation(enum.Enum):
    """The relation of a presented refresh token to the one stored for its session."""

    CURRENT = "current"  # the stored token itself
    PROMOTED = "promoted"  # a child of the stored token, now stored in its place
    GRACE = "grace"  # the token the stored one replaced, or a child of it, used in the grace period
    THEFT = "theft"  # neither: the session was deleted
    NOT_FOUND = "not_found"  # no live session with that handle


@dataclass(frozen=True)
class RotationResult:
    outcome: Rotation
    session: SessionRecord | None


class RevocationReason(enum.Enum):
    """The cause of a session's end, as written to the revocation log."""

    REVOKED = "revoked"  # a revoke call
    THEFT = "theft"  # a replayed refresh token
    EVICTED = "evicted"  # the oldest session past max_sessions_per_user


@dataclass(frozen=True)
class Revocation:
    """A row of the revocation log."""

    seq: int
    session_handle: str
    user_id: str
    reason: RevocationReason
    revoked_at_ms: int


@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    algorithm: str
    private_key_pem: bytes
    created_at_ms: int
    signs_until_ms: int


def capped_expiry(created_at_ms: int, expires_at_ms: int, max_lifetime_ms: int) -> int:
    """Return expires_at_ms, or created_at_ms + max_lifetime_ms if that is earlier.

    A max_lifetime_ms of 0 means no maximum session lifetime.
    """
    if max_lifetime_ms <= 0:
        return expires_at_ms
    return min(expires_at_ms, created_at_ms + max_lifetime_ms)


def _expiry_assignment(
    expires_at_ms: int, max_lifetime_ms: int
) -> tuple[str, tuple[int, ...]]:
    """Return the SQL assignment and parameters that store capped_expiry of a row."""
    if max_lifetime_ms <= 0:
        return "expires_at_ms = ?", (expires_at_ms,)
    return (
        "expires_at_ms = CASE WHEN created_at_ms + ? < ? "
        "THEN created_at_ms + ? ELSE ? END",
        (max_lifetime_ms, expires_at_ms, max_lifetime_ms, expires_at_ms),
    )


def _classify(
    session: SessionRecord,
    token_hash2: bytes,
    parent_hash2: bytes | None,
    now_ms: int,
    grace_ms: int,
) -> Rotation:
    """Decide how a presented refresh token relates to the stored one."""
    if session.refresh_token_hash2 == token_hash2:
        return Rotation.CURRENT
    if parent_hash2 is not None and session.refresh_token_hash2 == parent_hash2:
        return Rotation.PROMOTED
    previous = session.previous_refresh_token_hash2
    # A grace period of 0 turns it off, even within the millisecond of the change.
    in_grace = grace_ms > 0 and now_ms - session.refresh_token_changed_at_ms <= grace_ms
    if previous is not None and in_grace and previous in (token_hash2, parent_hash2):
        return Rotation.GRACE
    return Rotation.THEFT


_INSERT_SESSION = (
    f"INSERT INTO sessiond_sessions ({_SESSION_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _session_row(
    record: SessionRecord, text_parameter: Callable[[str, str], Any]
) -> tuple[Any, ...]:
    """Return the values of _INSERT_SESSION for a session."""
    return (
        record.session_handle,
        record.user_id.encode("utf-8"),
        record.refresh_token_hash2,
        text_parameter("access_token_payload", record.access_token_payload),
        text_parameter("session_data", record.session_data),
        record.data_version,
        record.created_at_ms,
        record.expires_at_ms,
        record.previous_refresh_token_hash2,
        record.refresh_token_changed_at_ms,
        record.last_refreshed_at_ms,
        record.idle_expires_at_ms,
        record.device_user_agent.encode("utf-8"),
        record.device_ip_address.encode("utf-8"),
        record.device_label.encode("utf-8"),
    )


def _refresh_token_changes(
    session: SessionRecord, outcome: Rotation, token_hash2: bytes, now_ms: int
) -> dict[str, Any]:
    """Return the columns to set so that the presented refresh token is the stored one.

    The result is empty when the stored token stays, which is the case for
    CURRENT, and for GRACE with the token the stored one replaced.
    """
    if outcome is Rotation.PROMOTED:
        return {
            "refresh_token_hash2": token_hash2,
            "previous_refresh_token_hash2": session.refresh_token_hash2,
            "refresh_token_changed_at_ms": now_ms,
        }
    if (
        outcome is Rotation.GRACE
        and token_hash2 != session.previous_refresh_token_hash2
    ):
        # A sibling of the stored token: the client kept the other response
        # of a concurrent refresh, so its branch becomes the stored one.
        return {"refresh_token_hash2": token_hash2}
    return {}


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        session_handle=row[0],
        user_id=bytes(row[1]).decode("utf-8"),
        refresh_token_hash2=bytes(row[2]),
        access_token_payload=bytes(row[3]).decode("utf-8"),
        session_data=bytes(row[4]).decode("utf-8"),
        data_version=int(row[5]),
        created_at_ms=int(row[6]),
        expires_at_ms=int(row[7]),
        previous_refresh_token_hash2=None if row[8] is None else bytes(row[8]),
        refresh_token_changed_at_ms=int(row[9]),
        last_refreshed_at_ms=int(row[10]),
        idle_expires_at_ms=int(row[11]),
        device_user_agent=bytes(row[12]).decode("utf-8"),
        device_ip_address=bytes(row[13]).decode("utf-8"),
        device_label=bytes(row[14]).decode("utf-8"),
    )


def _listing_from_row(row: Sequence[Any]) -> SessionListing:
    return SessionListing(
        session_handle=row[0],
        user_id=bytes(row[1]).decode("utf-8"),
        access_token_payload=bytes(row[2]).decode("utf-8"),
        created_at_ms=int(row[3]),
        last_refreshed_at_ms=int(row[4]),
        ends_at_ms=min(int(row[5]), int(row[6])),
        device_user_agent=bytes(row[7]).decode("utf-8"),
        device_ip_address=bytes(row[8]).decode("utf-8"),
        device_label=bytes(row[9]).decode("utf-8"),
    )


class Storage(abc.ABC):
    """Session, key and secret storage over a SQL database.

    Subclasses supply connections and transactions; the statements are
    written once here, with ``?`` placeholders.
    """

    dialect: str
    # Appended to a SELECT that must lock the rows it reads until commit.
    for_update: str = ""

    # -- what a backend provides -------------------------------------------

    @abc.abstractmethod
    def _read(self, work: Callable[[Cursor], T]) -> T:
        """Run work with a cursor outside any explicit transaction."""

    @abc.abstractmethod
    def _write(self, work: Callable[[Cursor], T]) -> T:
        """Run work in one write transaction, retried on transient errors.

        work may run more than once, so it must not have side effects outside
        the database.
        """

    @abc.abstractmethod
    def _execute(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        """Execute one statement written with ``?`` placeholders."""

    def _execute_and_commit(
        self, cursor: Cursor, sql: str, params: Sequence[Any] = ()
    ) -> None:
        """Execute the last statement of a write transaction.

        A backend may send COMMIT together with it, to save a round trip, so
        work runs no statement after this one and raises nothing after it.
        """
        self._execute(cursor, sql, params)

    def _execute_all_and_commit(
        self, cursor: Cursor, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[StatementResult]:
        """Execute the last statements of a write transaction; return each one's result.

        A backend may send them and COMMIT in one round trip, so, as with
        _execute_and_commit, work runs no statement after these and raises
        nothing after them.
        """
        results = []
        for sql, params in statements:
            self._execute(cursor, sql, params)
            results.append(StatementResult(cursor.rowcount, tuple(cursor.fetchall())))
        return results

    def _text_parameter(self, field: str, text: str) -> Any:
        """Return the parameter that stores text as UTF-8 bytes in a binary column.

        field names the request field the text came from, for errors.
        """
        return text.encode("utf-8")

    def _insert_new_row(self, sql: str, params: Sequence[Any]) -> None:
        """Run one INSERT whose primary key the caller chose at random, as a write of its own.

        One INSERT is atomic, so a backend may run it without an explicit
        transaction.
        """
        self._write(lambda cursor: self._execute(cursor, sql, params))

    @abc.abstractmethod
    def _insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """Return an INSERT that does nothing when the primary key exists."""

    @abc.abstractmethod
    def _delete_first_rows(
        self,
        table: str,
        key: str,
        order: str,
        condition: str,
        params: Sequence[Any],
        limit: int,
    ) -> tuple[str, list[Any]]:
        """Return the DELETE, and its parameters, of the first limit rows of table in order that match condition.

        key is the table's primary key, and order ends with it, so the rows
        are the same whatever plan the database picks. condition has ``?``
        placeholders for params and does not name key. The database checks
        condition on each row as it deletes it (on MySQL under the row
        lock), so a row that another transaction has just changed to no
        longer match is kept.
        """

    @abc.abstractmethod
    def _migration_lock(self) -> Any:
        """Return a context manager that serialises migrations across daemons."""

    @abc.abstractmethod
    def pool_stats(self) -> tuple[int, int]:
        """Return (connections in use, pool size)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection."""

    # -- schema ---------------------------------------------------------------

    def migrate(self, now_ms: int) -> list[int]:
        """Apply the migrations not yet applied; return their versions."""
        applied: list[int] = []
        with self._migration_lock():
            current = self.schema_version()
            for migration in migrations.MIGRATIONS:
                if migration.version <= current:
                    continue
                statements = migration.statements(self.dialect)

                def apply(
                    cursor: Cursor,
                    migration: Any = migration,
                    statements: Any = statements,
                ) -> None:
                    for statement in statements:
                        self._execute(cursor, statement)
                    self._execute(
                        cursor,
                        "INSERT INTO sessiond_schema_migrations "
                        "(version, description, applied_at_ms) VALUES (?, ?, ?)",
                        (migration.version, migration.description, now_ms),
                    )

                self._write(apply)
                logger.info(
                    "migration applied version=%d description=%s",
                    migration.version,
                    migration.description,
                )
                applied.append(migration.version)
        return applied

    def schema_version(self) -> int:
        def work(cursor: Cursor) -> int:
            self._execute(cursor, migrations.CREATE_VERSION_TABLE[self.dialect])
            self._execute(cursor, "SELECT MAX(version) FROM sessiond_schema_migrations")
            row = cursor.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return self._read(work)

    def ping(self) -> None:
        """Run a trivial query; raise UnavailableError when the database is down."""

        def work(cursor: Cursor) -> None:
            self._execute(cursor, "SELECT 1")
            cursor.fetchall()

        self._read(work)

    # -- sessions -------------------------------------------------------------

    def create_session(
        self, record: SessionRecord, *, max_sessions_per_user: int = 0
    ) -> list[str]:
        """Insert a session; return the handles of the sessions it evicted.

        With max_sessions_per_user above 0, the oldest live sessions of the
        user are deleted in the same transaction, so that the user has at
        most that many live sessions after the insert. Sessions are live
        relative to record.created_at_ms.
        """
        if max_sessions_per_user <= 0:
            # The handle is a new random UUID, so no other row has it.
            self._insert_new_row(
                _INSERT_SESSION, _session_row(record, self._text_parameter)
            )
            return []

        def work(cursor: Cursor) -> list[str]:
            evicted: list[str] = []
            if max_sessions_per_user > 0:
                evicted = self._evict_oldest_sessions(
                    cursor,
                    record.user_id,
                    max_sessions_per_user - 1,
                    record.created_at_ms,
                )
                self._log_revocations(
                    cursor,
                    [(handle, record.user_id) for handle in evicted],
                    RevocationReason.EVICTED,
                    record.created_at_ms,
                )
            self._execute(
                cursor, _INSERT_SESSION, _session_row(record, self._text_parameter)
            )
            return evicted

        return self._write(work)

    def _evict_oldest_sessions(
        self, cursor: Cursor, user_id: str, keep: int, now_ms: int
    ) -> list[str]:
        """Delete all but the newest keep live sessions of a user; return the deleted handles.

        On MySQL the locking read takes next-key locks on the user's range of
        the (user_id, expires_at_ms) index, so a concurrent create for the
        same user waits or deadlocks and is retried, and cannot slip past
        the count.
        NOTE: this relies on InnoDB's default REPEATABLE READ isolation. Under
        READ COMMITTED there are no gap locks, so two concurrent creates can
        leave the user one session over the maximum.
        """
        self._execute(
            cursor,
            f"SELECT session_handle FROM sessiond_sessions WHERE user_id = ? AND {_LIVE} "
            f"ORDER BY created_at_ms, session_handle{self.for_update}",
            (user_id.encode("utf-8"), now_ms, now_ms),
        )
        handles = [row[0] for row in cursor.fetchall()]
        evicted = handles[: max(0, len(handles) - keep)]
        if evicted:
            marks = ", ".join("?" for _ in evicted)
            self._execute(
                cursor,
                f"DELETE FROM sessiond_sessions WHERE session_handle IN ({marks})",
                evicted,
            )
        return evicted

    def live_session_user_id(self, handle: str, now_ms: int) -> str | None:
        """Return the user id of the live session with this handle, or None.

        This is the database check of a verify, so it reads one short column.
        """

        def work(cursor: Cursor) -> str | None:
            self._execute(
                cursor,
                f"SELECT user_id FROM sessiond_sessions WHERE session_handle = ? AND {_LIVE}",
                (handle, now_ms, now_ms),
            )
            row = cursor.fetchone()
            return None if row is None else bytes(row[0]).decode("utf-8")

        return self._read(work)

    def get_session(self, handle: str, now_ms: int) -> SessionRecord | None:
        """Return the live session with this handle, or None."""

        def work(cursor: Cursor) -> SessionRecord | None:
            self._execute(
                cursor,
                f"SELECT {_SESSION_COLUMNS} FROM sessiond_sessions "
                f"WHERE session_handle = ? AND {_LIVE}",
                (handle, now_ms, now_ms),
            )
            row = cursor.fetchone()
            return None if row is None else _session_from_row(row)

        return self._read(work)

    def rotate_refresh_token(
        self,
        handle: str,
        token_hash2: bytes,
        parent_hash2: bytes | None,
        now_ms: int,
        expires_at_ms: int,
        grace_ms: int,
        *,
        idle_expires_at_ms: int = NO_IDLE_DEADLINE_MS,
        max_lifetime_ms: int = 0,
    ) -> RotationResult:
        """Check a refresh token against the stored one and slide the deadlines.

        A child of the stored token replaces it. Inside the grace period, the
        token the stored one replaced is accepted, and a child of that token
        (a sibling of the stored one) becomes the stored token. Anything else
        deletes the session (theft). Unless it is theft, the session gets
        expires_at_ms (capped by capped_expiry with max_lifetime_ms) and
        idle_expires_at_ms, and last_refreshed_at_ms becomes now_ms. The
        returned session is the row as it was before this call.
        """
        expiry_sql, expiry_params = _expiry_assignment(expires_at_ms, max_lifetime_ms)
        found = self._store_current_or_child(
            handle,
            token_hash2,
            parent_hash2,
            now_ms,
            grace_ms,
            [
                (expiry_sql, expiry_params),
                ("idle_expires_at_ms = ?", (idle_expires_at_ms,)),
                ("last_refreshed_at_ms = ?", (now_ms,)),
            ],
        )
        if found.outcome not in (Rotation.GRACE, Rotation.THEFT):
            return found

        def work(cursor: Cursor) -> RotationResult:
            session = self._lock_session(cursor, handle, now_ms)
            if session is None:
                return RotationResult(Rotation.NOT_FOUND, None)
            outcome = _classify(session, token_hash2, parent_hash2, now_ms, grace_ms)
            if outcome is Rotation.THEFT:
                self._execute(
                    cursor,
                    "DELETE FROM sessiond_sessions WHERE session_handle = ?",
                    (handle,),
                )
                self._log_revocations(
                    cursor, [(handle, session.user_id)], RevocationReason.THEFT, now_ms
                )
                return RotationResult(outcome, session)
            # One UPDATE stores the token, if it changes, and the deadlines.
            changes = _refresh_token_changes(session, outcome, token_hash2, now_ms)
            changes["expires_at_ms"] = capped_expiry(
                session.created_at_ms, expires_at_ms, max_lifetime_ms
            )
            changes["idle_expires_at_ms"] = idle_expires_at_ms
            changes["last_refreshed_at_ms"] = now_ms
            self._update_session(cursor, handle, changes)
            return RotationResult(outcome, session)

        return self._write(work)

    def promote_refresh_token(
        self,
        handle: str,
        parent_hash2: bytes,
        token_hash2: bytes,
        now_ms: int,
        grace_ms: int,
    ) -> RotationResult:
        """Store a child refresh token in place of its parent, on first use of its access token.

        The outcomes are those of rotate_refresh_token, except that THEFT
        leaves the session alone: an access token alone never proves theft.
        """
        found = self._store_current_or_child(
            handle, token_hash2, parent_hash2, now_ms, grace_ms, []
        )
        if found.outcome is not Rotation.GRACE:
            return found

        def work(cursor: Cursor) -> RotationResult:
            session = self._lock_session(cursor, handle, now_ms)
            if session is None:
                return RotationResult(Rotation.NOT_FOUND, None)
            outcome = _classify(session, token_hash2, parent_hash2, now_ms, grace_ms)
            if outcome is not Rotation.THEFT:
                changes = _refresh_token_changes(session, outcome, token_hash2, now_ms)
                if changes:
                    self._update_session(cursor, handle, changes)
            return RotationResult(outcome, session)

        return self._write(work)

    def _store_current_or_child(
        self,
        handle: str,
        token_hash2: bytes,
        parent_hash2: bytes | None,
        now_ms: int,
        grace_ms: int,
        deadlines: Sequence[tuple[str, Sequence[Any]]],
    ) -> RotationResult:
        """Handle the common cases of a refresh token in one batch of statements.

        The batch locks and reads the live session, then runs two UPDATEs,
        each matching only one case. For the stored token itself (CURRENT),
        the first sets the deadlines. For a child of the stored token
        (PROMOTED), the second stores the child and sets the deadlines. The
        deadlines are (assignment, parameters) pairs, and may be empty. A
        backend may send the batch with BEGIN and COMMIT in one round trip.
        The outcome comes from the row as it was read under the lock, so it
        shows which UPDATE matched. For GRACE and THEFT neither did, and the
        session is unchanged.
        """
        assignments = ", ".join(sql for sql, _params in deadlines)
        deadline_params = [value for _sql, params in deadlines for value in params]
        where = f"WHERE session_handle = ? AND refresh_token_hash2 = ? AND {_LIVE}"
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                f"SELECT {_SESSION_COLUMNS_WITHOUT_DATA} FROM sessiond_sessions "
                f"WHERE session_handle = ? AND {_LIVE}{self.for_update}",
                (handle, now_ms, now_ms),
            )
        ]
        if deadlines:
            statements.append(
                (
                    f"UPDATE sessiond_sessions SET {assignments} {where}",
                    (*deadline_params, handle, token_hash2, now_ms, now_ms),
                )
            )
        if parent_hash2 is not None:
            token_columns = (
                "previous_refresh_token_hash2 = ?, refresh_token_hash2 = ?, "
                "refresh_token_changed_at_ms = ?"
            )
            statements.append(
                (
                    "UPDATE sessiond_sessions SET "
                    + ", ".join(part for part in (token_columns, assignments) if part)
                    + f" {where}",
                    (
                        parent_hash2,
                        token_hash2,
                        now_ms,
                        *deadline_params,
                        handle,
                        parent_hash2,
                        now_ms,
                        now_ms,
                    ),
                )
            )

        def work(cursor: Cursor) -> RotationResult:
            rows = self._execute_all_and_commit(cursor, statements)[0].rows
            if not rows:
                return RotationResult(Rotation.NOT_FOUND, None)
            session = _session_from_row(rows[0])
            outcome = _classify(session, token_hash2, parent_hash2, now_ms, grace_ms)
            return RotationResult(outcome, session)

        return self._write(work)

    def _update_session(
        self, cursor: Cursor, handle: str, changes: dict[str, Any]
    ) -> None:
        """Set columns of a locked session row, as the last statement of the transaction.

        The keys of changes are column names from this module, never input.
        """
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._execute_and_commit(
            cursor,
            f"UPDATE sessiond_sessions SET {assignments} WHERE session_handle = ?",
            (*changes.values(), handle),
        )

    def _lock_session(
        self, cursor: Cursor, handle: str, now_ms: int, *, with_data: bool = False
    ) -> SessionRecord | None:
        """Read and lock a live session; its session_data is "" unless with_data."""
        columns = _SESSION_COLUMNS if with_data else _SESSION_COLUMNS_WITHOUT_DATA
        self._execute(
            cursor,
            f"SELECT {columns} FROM sessiond_sessions "
            f"WHERE session_handle = ? AND {_LIVE}{self.for_update}",
            (handle, now_ms, now_ms),
        )
        row = cursor.fetchone()
        return None if row is None else _session_from_row(row)

    def revoke_sessions(self, handles: Sequence[str], now_ms: int) -> list[str]:
        """Delete sessions by handle and log them; return the handles that existed."""
        if not handles:
            return []
        unique = list(dict.fromkeys(handles))
        marks = ", ".join("?" for _ in unique)

        def work(cursor: Cursor) -> list[str]:
            self._execute(
                cursor,
                f"SELECT session_handle, user_id FROM sessiond_sessions "
                f"WHERE session_handle IN ({marks}){self.for_update}",
                unique,
            )
            existing = {
                row[0]: bytes(row[1]).decode("utf-8") for row in cursor.fetchall()
            }
            revoked = [handle for handle in unique if handle in existing]
            if revoked:
                self._execute_all_and_commit(
                    cursor,
                    [
                        (
                            "DELETE FROM sessiond_sessions "
                            f"WHERE session_handle IN ({marks})",
                            unique,
                        ),
                        self._revocation_insert(
                            [(handle, existing[handle]) for handle in revoked],
                            RevocationReason.REVOKED,
                            now_ms,
                        ),
                    ],
                )
            return revoked

        return self._write(work)

    def revoke_all_sessions_for_user(self, user_id: str, now_ms: int) -> list[str]:
        """Delete every session of a user in one statement; return the live handles."""
        key = user_id.encode("utf-8")

        def work(cursor: Cursor) -> list[str]:
            self._execute(
                cursor,
                "SELECT session_handle, expires_at_ms, idle_expires_at_ms FROM sessiond_sessions "
                f"WHERE user_id = ? ORDER BY created_at_ms, session_handle{self.for_update}",
                (key,),
            )
            rows = cursor.fetchall()
            live = [row[0] for row in rows if min(int(row[1]), int(row[2])) > now_ms]
            statements: list[tuple[str, Sequence[Any]]] = []
            if rows:
                statements.append(
                    ("DELETE FROM sessiond_sessions WHERE user_id = ?", (key,))
                )
            if live:
                statements.append(
                    self._revocation_insert(
                        [(handle, user_id) for handle in live],
                        RevocationReason.REVOKED,
                        now_ms,
                    )
                )
            if statements:
                self._execute_all_and_commit(cursor, statements)
            return live

        return self._write(work)

    def list_session_handles(self, user_id: str, now_ms: int) -> list[str]:
        def work(cursor: Cursor) -> list[str]:
            self._execute(
                cursor,
                f"SELECT session_handle FROM sessiond_sessions WHERE user_id = ? AND {_LIVE} "
                "ORDER BY created_at_ms, session_handle",
                (user_id.encode("utf-8"), now_ms, now_ms),
            )
            return [row[0] for row in cursor.fetchall()]

        return self._read(work)

    def list_sessions(self, user_id: str, now_ms: int) -> list[SessionListing]:
        """Return the live sessions of a user, oldest first."""

        def work(cursor: Cursor) -> list[SessionListing]:
            self._execute(
                cursor,
                f"SELECT {_LISTING_COLUMNS} FROM sessiond_sessions WHERE user_id = ? AND {_LIVE} "
                "ORDER BY created_at_ms, session_handle",
                (user_id.encode("utf-8"), now_ms, now_ms),
            )
            return [_listing_from_row(row) for row in cursor.fetchall()]

        return self._read(work)

    def get_session_data(self, handle: str, now_ms: int) -> tuple[str, int] | None:
        """Return (data JSON, data version) of a live session, or None."""

        def work(cursor: Cursor) -> tuple[str, int] | None:
            self._execute(
                cursor,
                "SELECT session_data, data_version FROM sessiond_sessions "
                f"WHERE session_handle = ? AND {_LIVE}",
                (handle, now_ms, now_ms),
            )
            row = cursor.fetchone()
            return None if row is None else (bytes(row[0]).decode("utf-8"), int(row[1]))

        return self._read(work)

    def update_session_data(
        self,
        handle: str,
        data: str,
        now_ms: int,
        expected_version: int | None = None,
    ) -> int | None:
        """Overwrite the data of a live session; return the new version, or None.

        This is a plain UPDATE, never an upsert, so a write that races with a
        revoke cannot bring the session back.

        Raises:
            ConflictError: expected_version is set and differs from the stored
                version; nothing is written.
        """
        # The new data does not depend on the stored data, so one
        # conditional UPDATE writes it, without a locking read first, and a
        # SELECT in the same transaction reads the version it wrote, or the
        # version that did not match.
        condition = f"session_handle = ? AND {_LIVE}"
        live = (handle, now_ms, now_ms)
        update_params: tuple[Any, ...] = (
            self._text_parameter("session_data", data),
            *live,
        )
        if expected_version is not None:
            condition += " AND data_version = ?"
            update_params += (expected_version,)

        def work(cursor: Cursor) -> int | None:
            updated, found = self._execute_all_and_commit(
                cursor,
                [
                    (
                        "UPDATE sessiond_sessions SET session_data = ?, "
                        f"data_version = data_version + 1 WHERE {condition}",
                        update_params,
                    ),
                    (
                        "SELECT data_version FROM sessiond_sessions "
                        f"WHERE session_handle = ? AND {_LIVE}",
                        live,
                    ),
                ],
            )
            if not found.rows:
                return None
            version = int(found.rows[0][0])
            if updated.rowcount != 1:
                # Only the version condition can leave a live row unwritten.
                assert expected_version is not None
                raise ConflictError(expected_version, version)
            return version

        return self._write(work)

    def rewrite_session_data(
        self,
        handle: str,
        rewrite: Callable[[str], str],
        now_ms: int,
        expected_version: int | None = None,
    ) -> tuple[str, int] | None:
        """Replace a live session's data with rewrite(stored data JSON), under the row lock.

        Return the new (data JSON, data version), or None when there is no
        live session. rewrite runs inside the transaction, and again if the
        transaction is retried, so it must only compute. An exception from it
        rolls the transaction back and propagates, leaving the data unchanged.

        Raises:
            ConflictError: expected_version is set and differs from the stored
                version; nothing is written.
        """

        def work(cursor: Cursor) -> tuple[str, int] | None:
            session = self._lock_session(cursor, handle, now_ms, with_data=True)
            if session is None:
                return None
            if (
                expected_version is not None
                and expected_version != session.data_version
            ):
                raise ConflictError(expected_version, session.data_version)
            data = rewrite(session.session_data)
            version = session.data_version + 1
            self._update_session(
                cursor,
                handle,
                {
                    "session_data": self._text_parameter("session_data", data),
                    "data_version": version,
                },
            )
            return data, version

        return self._write(work)

    def update_access_token_payload(
        self, handle: str, payload: str, now_ms: int
    ) -> SessionRecord | None:
        """Store a new access token payload (JSON object text) for a live session.

        Return the session as stored after the update, or None when there is
        no live session.
        """

        def work(cursor: Cursor) -> SessionRecord | None:
            session = self._lock_session(cursor, handle, now_ms)
            if session is None:
                return None
            self._update_session(
                cursor,
                handle,
                {
                    "access_token_payload": self._text_parameter(
                        "access_token_payload", payload
                    )
                },
            )
            return dataclasses.replace(session, access_token_payload=payload)

        return self._write(work)

    def delete_expired_sessions(self, now_ms: int, batch_size: int) -> int:
        """Delete at most batch_size sessions past either deadline; return how many.

        Sessions past expires_at_ms go first, in order of it, then sessions
        past idle_expires_at_ms. A count below batch_size means that the
        call found no other session past a deadline at now_ms.
        """

        # One DELETE per deadline, so each can use its own index. Each
        # checks its deadline on the row it deletes, so a session that a
        # refresh has just extended is kept.
        def delete_past(column: str, limit: int) -> tuple[str, list[Any]]:
            return self._delete_first_rows(
                "sessiond_sessions",
                "session_handle",
                f"{column}, session_handle",
                f"{column} <= ?",
                (now_ms,),
                limit,
            )

        def work(cursor: Cursor) -> int:
            self._execute(cursor, *delete_past("expires_at_ms", batch_size))
            deleted = int(cursor.rowcount)
            if deleted < batch_size:
                # The first DELETE left no session past its expiry, so this
                # one fills the rest of the batch without counting any twice.
                self._execute_and_commit(
                    cursor,
                    *delete_past("idle_expires_at_ms", batch_size - deleted),
                )
                deleted += int(cursor.rowcount)
            return deleted

        return self._write(work)

    # -- revocation log ----------------------------------------------------

    def _log_revocations(
        self,
        cursor: Cursor,
        sessions: Sequence[tuple[str, str]],
        reason: RevocationReason,
        now_ms: int,
    ) -> None:
        """Append (handle, user id) pairs to the revocation log in one INSERT.

        Callers run it as the last statement of their transaction, so that on
        MySQL the seq it takes is committed soon after it is allocated.
        """
        if sessions:
            self._execute(cursor, *self._revocation_insert(sessions, reason, now_ms))

    @staticmethod
    def _revocation_insert(
        sessions: Sequence[tuple[str, str]], reason: RevocationReason, now_ms: int
    ) -> tuple[str, list[Any]]:
        """Return the INSERT, and its values, that logs (handle, user id) pairs."""
        return (
            "INSERT INTO sessiond_revocations "
            "(session_handle, user_id, reason, revoked_at_ms) VALUES "
            + ", ".join("(?, ?, ?, ?)" for _ in sessions),
            [
                value
                for handle, user_id in sessions
                for value in (handle, user_id.encode("utf-8"), reason.value, now_ms)
            ],
        )

    def read_revocations(
        self, after_seq: int, revoked_after_ms: int, limit: int
    ) -> list[Revocation]:
        """Return up to limit log rows with seq above after_seq, in seq order.

        Rows revoked at or before revoked_after_ms are left out.
        """

        def work(cursor: Cursor) -> list[Revocation]:
            self._execute(
                cursor,
                "SELECT seq, session_handle, user_id, reason, revoked_at_ms "
                "FROM sessiond_revocations WHERE seq > ? AND revoked_at_ms > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, revoked_after_ms, limit),
            )
            return [
                Revocation(
                    seq=int(row[0]),
                    session_handle=row[1],
                    user_id=bytes(row[2]).decode("utf-8"),
                    reason=RevocationReason(row[3]),
                    revoked_at_ms=int(row[4]),
                )
                for row in cursor.fetchall()
            ]

        return self._read(work)

    def max_revocation_seq(self) -> int:
        """Return the highest seq in the revocation log, or 0 when it is empty."""

        def work(cursor: Cursor) -> int:
            self._execute(cursor, "SELECT MAX(seq) FROM sessiond_revocations")
            row = cursor.fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

        return self._read(work)

    def delete_revocations(self, revoked_before_ms: int, batch_size: int) -> int:
        """Delete at most batch_size log rows revoked before revoked_before_ms, oldest first; return how many."""
        statement = self._delete_first_rows(
            "sessiond_revocations",
            "seq",
            "revoked_at_ms, seq",
            "revoked_at_ms < ?",
            (revoked_before_ms,),
            batch_size,
        )

        def work(cursor: Cursor) -> int:
            self._execute_and_commit(cursor, *statement)
            return int(cursor.rowcount)

        return self._write(work)

    # -- secrets and signing keys ------------------------------------------

    def get_or_create_secret(self, name: str, candidate: bytes, now_ms: int) -> bytes:
        """Return the stored secret called name, storing candidate if there is none.

        When several daemons start at once, every one gets the value of the
        first insert.
        """

        def work(cursor: Cursor) -> bytes:
            self._execute(
                cursor,
                self._insert_ignore(
                    "sessiond_secrets", ("name", "value", "created_at_ms")
                ),
                (name, candidate, now_ms),
            )
            self._execute(
                cursor, "SELECT value FROM sessiond_secrets WHERE name = ?", (name,)
            )
            return bytes(cursor.fetchone()[0])

        return self._write(work)

    def load_signing_keys(self, signed_after_ms: int) -> list[SigningKeyRecord]:
        """Return the keys that signed tokens after signed_after_ms, oldest first."""

        def work(cursor: Cursor) -> list[SigningKeyRecord]:
            self._execute(
                cursor,
                "SELECT kid, algorithm, private_key, created_at_ms, signs_until_ms "
                "FROM sessiond_signing_keys WHERE signs_until_ms > ? ORDER BY created_at_ms, kid",
                (signed_after_ms,),
            )
            return [
                SigningKeyRecord(
                    row[0], row[1], bytes(row[2]), int(row[3]), int(row[4])
                )
                for row in cursor.fetchall()
            ]

        return self._read(work)

    def add_signing_key_if_due(
        self, make_key: Callable[[int], SigningKeyRecord], now_ms: int, *, force: bool
    ) -> SigningKeyRecord | None:
        """Insert a new signing key when the newest one stops signing by now_ms.

        A lock row serialises this across daemons sharing the database, so
        exactly one of them adds the key. With force, the current key stops
        signing now and a new one is added regardless.
        """

        def work(cursor: Cursor) -> SigningKeyRecord | None:
            self._execute(
                cursor,
                f"SELECT name FROM sessiond_locks WHERE name = ?{self.for_update}",
                ("signing_keys",),
            )
            cursor.fetchall()
            self._execute(
                cursor, "SELECT MAX(signs_until_ms) FROM sessiond_signing_keys"
            )
            row = cursor.fetchone()
            newest_until = int(row[0]) if row and row[0] is not None else 0
            if newest_until > now_ms and not force:
                return None
            if force:
                self._execute(
                    cursor,
                    "UPDATE sessiond_signing_keys SET signs_until_ms = ? WHERE signs_until_ms > ?",
                    (now_ms, now_ms),
                )
            record = make_key(now_ms)
            self._execute(
                cursor,
                "INSERT INTO sessiond_signing_keys "
                "(kid, algorithm, private_key, created_at_ms, signs_until_ms) VALUES (?, ?, ?, ?, ?)",
                (
                    record.kid,
                    record.algorithm,
                    record.private_key_pem,
                    record.created_at_ms,
                    record.signs_until_ms,
                ),
            )
            return record

        return self._write(work)

    def delete_signing_keys(self, signed_before_ms: int) -> int:
        """Delete keys that stopped signing before signed_before_ms."""

        def work(cursor: Cursor) -> int:
            self._execute(
                cursor,
                "DELETE FROM sessiond_signing_keys WHERE signs_until_ms < ?",
                (signed_before_ms,),
            )
            return int(cursor.rowcount)

        return self._write(work)
