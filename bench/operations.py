"""The SDK operations the bench times, each as a per-thread setup for harness.measure."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from harness import Exhausted, Operation, WorkerSetup

import sessiond

USER_PAYLOAD = {"role": "reader"}
SESSION_DATA: dict[str, list[str]] = {"cart": []}


@dataclass(frozen=True)
class OperationSpec:
    """One row of the results table: an SDK operation and the floors it is compared with.

    grpc_calls and sql_floor_calls are the number of floor calls that make
    up the operation's minimum, so refresh + verify is compared with two of each.
    """

    name: str
    description: str
    sql_floor: str | None
    grpc_calls: int = 1
    sql_floor_calls: int = 1


SQL_INSERT = "INSERT"
SQL_SELECT = "SELECT by primary key"
SQL_UPDATE = "UPDATE by primary key"
SQL_LOCKED_UPDATE = "SELECT ... FOR UPDATE + UPDATE in a transaction"
SQL_DELETE = "DELETE by primary key"
SQL_FLOORS = (SQL_INSERT, SQL_SELECT, SQL_UPDATE, SQL_LOCKED_UPDATE, SQL_DELETE)

OPERATIONS = (
    OperationSpec(
        "create", "create_new_session with a small payload and data", SQL_INSERT
    ),
    OperationSpec("verify", "get_session (check_database=False), stateless", None),
    OperationSpec(
        "verify (SDK-local)",
        "get_session through a client with local_verification=True, on a token "
        "it has verified before: no call",
        None,
    ),
    OperationSpec(
        "verify (check_database)", "get_session with check_database=True", SQL_SELECT
    ),
    OperationSpec(
        "refresh",
        "refresh_session with the previous result's refresh token, never verified",
        SQL_LOCKED_UPDATE,
    ),
    OperationSpec(
        "refresh + verify",
        "refresh_session, then get_session on the new access token, which promotes it",
        SQL_LOCKED_UPDATE,
        grpc_calls=2,
        sql_floor_calls=2,
    ),
    OperationSpec("get data", "get_session_data", SQL_SELECT),
    OperationSpec("update data", "update_session_data with a small object", SQL_UPDATE),
    OperationSpec("revoke", "revoke_session of a live session", SQL_DELETE),
    OperationSpec(
        "merge data",
        "merge_session_data with a one-key patch, when the client has it",
        SQL_LOCKED_UPDATE,
    ),
)


def client_has_merge() -> bool:
    return hasattr(sessiond.SessionClient, "merge_session_data")


ClientFor = Callable[[int], sessiond.SessionClient]


def _new_session(client: sessiond.SessionClient, index: int) -> sessiond.Session:
    return client.create_new_session(f"bench-user-{index}", USER_PAYLOAD, SESSION_DATA)


def create(client_for: ClientFor, handles: list[str]) -> WorkerSetup:
    """Time create_new_session; append each new handle to handles for revoke to use."""
    lock = threading.Lock()

    def setup(index: int) -> Operation:
        client = client_for(index)

        def call() -> None:
            session = _new_session(client, index)
            with lock:
                handles.append(session.handle)

        return call

    return setup


def verify(client_for: ClientFor, *, check_database: bool) -> WorkerSetup:
    def setup(index: int) -> Operation:
        client = client_for(index)
        session = _new_session(client, index)
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        access = session.access_token.value
        csrf = session.anti_csrf_token.value

        def call() -> None:
            client.get_session(access, csrf, check_database=check_database)

        return call

    return setup


def verify_local(local_client: sessiond.SessionClient) -> WorkerSetup:
    """Time get_session on a local-verifying client, after one verify per worker."""

    def setup(index: int) -> Operation:
        session = _new_session(local_client, index)
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        access = session.access_token.value
        csrf = session.anti_csrf_token.value
        # The first sight costs a signature check; the timed calls measure
        # the verified-token cache.
        local_client.get_session(access, csrf)

        def call() -> None:
            local_client.get_session(access, csrf)

        return call

    return setup


def refresh(client_for: ClientFor, *, verify_each: bool) -> WorkerSetup:
    """Time a chain of refreshes, each with the refresh token the previous one returned.

    Without verify_each every refresh presents a child of the stored token,
    so the daemon promotes it inside the refresh. With verify_each the new
    access token is verified once after each refresh, which promotes the
    child there, so the next refresh presents the stored token itself.
    """

    def setup(index: int) -> Operation:
        client = client_for(index)
        session = _new_session(client, index)
        assert session.refresh_token is not None
        state = {"refresh": session.refresh_token.value}

        def call() -> None:
            refreshed = client.refresh_session(state["refresh"])
            assert refreshed.refresh_token is not None
            state["refresh"] = refreshed.refresh_token.value
            if verify_each:
                assert refreshed.access_token is not None
                assert refreshed.anti_csrf_token is not None
                verified = client.get_session(
                    refreshed.access_token.value, refreshed.anti_csrf_token.value
                )
                if verified.access_token is None:
                    raise AssertionError(
                        "verify after refresh returned no replacement access token, "
                        "so the refresh token was not promoted"
                    )

        return call

    return setup


def get_data(client_for: ClientFor) -> WorkerSetup:
    def setup(index: int) -> Operation:
        client = client_for(index)
        handle = _new_session(client, index).handle
        return lambda: client.get_session_data(handle)

    return setup


def update_data(client_for: ClientFor) -> WorkerSetup:
    def setup(index: int) -> Operation:
        client = client_for(index)
        handle = _new_session(client, index).handle
        counter = iter(range(10**9))
        return lambda: client.update_session_data(handle, {"cart": [next(counter)]})

    return setup


def merge_data(client_for: ClientFor) -> WorkerSetup:
    """Time merge_session_data. Use it only where client_has_merge() is true."""

    def setup(index: int) -> Operation:
        client = client_for(index)
        handle = _new_session(client, index).handle
        counter = iter(range(10**9))
        return lambda: client.merge_session_data(handle, {"seen": next(counter)})

    return setup


def revoke(client_for: ClientFor, handles: list[str]) -> WorkerSetup:
    """Time revoke_session on the handles given, one each, until none is left."""
    lock = threading.Lock()

    def setup(index: int) -> Operation:
        client = client_for(index)

        def call() -> None:
            with lock:
                if not handles:
                    raise Exhausted
                handle = handles.pop()
            if not client.revoke_session(handle):
                raise AssertionError(f"revoke_session({handle}) found no session")

        return call

    return setup
