"""A revoke racing a refresh or a verify never leaves a live session behind."""

from __future__ import annotations

import threading
from typing import Any

import sessiond

ITERATIONS = 30


def _race(*calls: Any) -> list[Any]:
    """Run the calls at once from a barrier; return each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except sessiond.SessionError as error:
            results[index] = error

    threads = [
        threading.Thread(target=run, args=(index,)) for index in range(len(calls))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_revoke_racing_refresh(client: sessiond.SessionClient) -> None:
    outcomes: set[str] = set()
    for index in range(ITERATIONS):
        user_id = f"user-race-{index}"
        session = client.create_new_session(user_id)
        assert session.refresh_token is not None
        refreshed, revoked = _race(
            lambda token=session.refresh_token.value: client.refresh_session(token),
            lambda handle=session.handle: client.revoke_session(handle),
        )
        assert revoked is True
        if isinstance(refreshed, sessiond.Session):
            outcomes.add("refresh first")
            assert refreshed.refresh_token is not None
            assert refreshed.access_token
            assert refreshed.anti_csrf_token
            # The child of a revoked session is dead too, and no theft is reported.
            try:
                client.refresh_session(refreshed.refresh_token.value)
                raise AssertionError("refresh after revoke succeeded")
            except sessiond.UnauthorisedError:
                pass
            try:
                client.get_session(
                    refreshed.access_token.value, refreshed.anti_csrf_token.value
                )
                raise AssertionError("first use of a revoked session's child succeeded")
            except sessiond.UnauthorisedError:
                pass
        else:
            outcomes.add("revoke first")
            assert type(refreshed) is sessiond.UnauthorisedError
        assert client.get_all_session_handles_for_user(user_id) == []
    assert outcomes, "every iteration must have ended one way or the other"


def test_revoke_racing_verify(client: sessiond.SessionClient) -> None:
    for index in range(ITERATIONS):
        session = client.create_new_session(f"user-verify-race-{index}")
        assert session.refresh_token is not None
        child = client.refresh_session(session.refresh_token.value)
        assert child.access_token
        assert child.anti_csrf_token
        access, csrf = child.access_token.value, child.anti_csrf_token.value
        verified, revoked = _race(
            lambda access=access, csrf=csrf: client.get_session(access, csrf),
            lambda handle=session.handle: client.revoke_session(handle),
        )
        assert revoked is True
        assert isinstance(verified, (sessiond.Session, sessiond.UnauthorisedError))
        assert (
            client.get_all_session_handles_for_user(f"user-verify-race-{index}") == []
        )
