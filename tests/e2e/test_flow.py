"""The login-to-logout flow through the SDK against a real daemon, on both backends."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sessiond_testing import DaemonProcess

import sessiond


def decode_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_create_and_verify(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-1", {"role": "reader"}, {"cart": []})
    assert session.user_id == "user-1"
    assert session.access_token_payload == {"role": "reader"}
    assert session.access_token is not None
    assert session.refresh_token is not None
    assert session.anti_csrf_token is not None

    verified = client.get_session(
        session.access_token.value, session.anti_csrf_token.value
    )
    assert verified.handle == session.handle
    assert verified.user_id == "user-1"
    assert verified.access_token_payload == {"role": "reader"}
    assert verified.access_token is None


def test_session_data_read_update_reread(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-2", None, {"cart": []})
    assert session.get_session_data() == {"cart": []}
    session.update_session_data({"cart": ["book"]})
    assert client.get_session_data(session.handle) == {"cart": ["book"]}
    assert client.get_session_info(session.handle).data_version == 2


def test_refresh_then_verify_new_token(client: sessiond.SessionClient) -> None:
    first = client.create_new_session("user-3", {"n": 1})
    assert first.refresh_token is not None
    refreshed = client.refresh_session(first.refresh_token.value)
    assert refreshed.handle == first.handle
    assert refreshed.access_token is not None
    assert refreshed.anti_csrf_token is not None
    assert refreshed.refresh_token is not None
    assert refreshed.refresh_token.value != first.refresh_token.value

    verified = client.get_session(
        refreshed.access_token.value, refreshed.anti_csrf_token.value
    )
    assert verified.handle == first.handle
    assert verified.access_token_payload == {"n": 1}


@pytest.fixture
def strict_client(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> Iterator[sessiond.SessionClient]:
    """A client of a daemon with no refresh grace period, so every replay is theft."""
    with start_daemon(database_url, refresh_grace_period_s=0).client() as client:
        yield client


def test_first_use_of_child_token_promotes(
    strict_client: sessiond.SessionClient,
) -> None:
    client = strict_client
    first = client.create_new_session("user-4")
    assert first.refresh_token is not None
    child = client.refresh_session(first.refresh_token.value)
    assert child.access_token is not None
    assert child.anti_csrf_token is not None
    assert "prth" in decode_claims(child.access_token.value)

    verified = client.get_session(child.access_token.value, child.anti_csrf_token.value)
    assert verified.access_token is not None, "promotion must return a new access token"
    assert "prth" not in decode_claims(verified.access_token.value)

    # Promotion made the child the stored token, so the parent is now a replay.
    with pytest.raises(sessiond.TokenTheftDetectedError):
        client.refresh_session(first.refresh_token.value)


def test_replayed_refresh_token_is_theft(
    strict_client: sessiond.SessionClient,
) -> None:
    client = strict_client
    first = client.create_new_session("user-5")
    assert first.refresh_token is not None
    second = client.refresh_session(first.refresh_token.value)
    assert second.refresh_token is not None
    third = client.refresh_session(second.refresh_token.value)
    assert third.refresh_token is not None

    with pytest.raises(sessiond.TokenTheftDetectedError) as caught:
        client.refresh_session(first.refresh_token.value)
    assert caught.value.session_handle == first.handle
    assert caught.value.user_id == "user-5"
    assert client.get_all_session_handles_for_user("user-5") == []
    with pytest.raises(sessiond.UnauthorisedError):
        client.refresh_session(third.refresh_token.value)


def test_revoke_one_all_and_list(client: sessiond.SessionClient) -> None:
    sessions = [client.create_new_session("user-6") for _ in range(3)]
    handles = [session.handle for session in sessions]
    # The list is in order of creation time, then handle, and sessions
    # created in one millisecond come in handle order, so compare sorted.
    assert sorted(client.get_all_session_handles_for_user("user-6")) == sorted(handles)

    assert sessions[0].revoke() is True
    assert sessions[0].revoke() is False
    listed = client.get_all_session_handles_for_user("user-6")
    assert sorted(listed) == sorted(handles[1:])
    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session_data(handles[0])

    other = client.create_new_session("user-6b")
    assert sorted(client.revoke_all_sessions_for_user("user-6")) == sorted(handles[1:])
    assert client.get_all_session_handles_for_user("user-6") == []
    assert client.get_all_session_handles_for_user("user-6b") == [other.handle]


def test_revoke_sessions_returns_existing(client: sessiond.SessionClient) -> None:
    a = client.create_new_session("user-7")
    b = client.create_new_session("user-7")
    a.revoke()
    assert client.revoke_sessions([a.handle, b.handle]) == [b.handle]


def test_check_database_sees_revoke(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-8")
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    session.revoke()
    # Without the database check the token stays valid until it expires.
    client.get_session(session.access_token.value, session.anti_csrf_token.value)
    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session(
            session.access_token.value,
            session.anti_csrf_token.value,
            check_database=True,
        )


def test_expired_access_token_asks_for_refresh(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(
        database_url, access_token_validity_s=1, clock_skew_leeway_s=0
    )
    with daemon.client() as client:
        session = client.create_new_session("user-9")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        assert session.refresh_token is not None
        # exp is whole seconds, so the token is invalid 2 s after issue at the latest.
        time.sleep(2.1)
        with pytest.raises(sessiond.TryRefreshTokenError):
            client.get_session(
                session.access_token.value, session.anti_csrf_token.value
            )
        refreshed = client.refresh_session(session.refresh_token.value)
        assert (
            refreshed.access_token is not None and refreshed.anti_csrf_token is not None
        )
        client.get_session(
            refreshed.access_token.value, refreshed.anti_csrf_token.value
        )


def test_blacklisting_checks_database_on_every_verify(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, blacklisting=True)
    with daemon.client() as client:
        session = client.create_new_session("user-10")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        client.get_session(session.access_token.value, session.anti_csrf_token.value)
        session.revoke()
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(
                session.access_token.value, session.anti_csrf_token.value
            )


def test_jwks_verifies_access_token_locally(client: sessiond.SessionClient) -> None:
    import jwt

    session = client.create_new_session("user-11", {"role": "admin"})
    assert session.access_token is not None
    jwks = jwt.PyJWKSet.from_dict(client.get_jwks())
    kid = jwt.get_unverified_header(session.access_token.value)["kid"]
    key = next(key for key in jwks.keys if key.key_id == kid)
    claims = jwt.decode(
        session.access_token.value,
        key.key,
        algorithms=[key.algorithm_name],
        issuer="sessiond",
    )
    assert claims["sub"] == "user-11"
    assert claims["sid"] == session.handle
    assert claims["role"] == "admin"


def test_module_level_calls_share_one_client(daemon: DaemonProcess) -> None:
    sessiond.init(daemon.address)
    try:
        session = sessiond.create_new_session("user-12", None, {"k": 1})
        assert sessiond.get_session_data(session.handle) == {"k": 1}
        sessiond.update_session_data(session.handle, {"k": 2})
        assert sessiond.get_session_data(session.handle) == {"k": 2}
        assert sessiond.get_all_session_handles_for_user("user-12") == [session.handle]
        assert sessiond.revoke_session(session.handle) is True
    finally:
        sessiond.close()
    with pytest.raises(sessiond.GeneralError, match="init"):
        sessiond.get_session_data(session.handle)


def test_sigterm_exits_zero(daemon: DaemonProcess) -> None:
    assert daemon.stop() == 0
    assert "stopped" in daemon.log()


def test_grace_accepts_recent_parent(client: sessiond.SessionClient) -> None:
    first = client.create_new_session("user-13")
    assert first.refresh_token is not None
    second = client.refresh_session(first.refresh_token.value)
    assert second.refresh_token is not None
    third = client.refresh_session(second.refresh_token.value)
    assert third.refresh_token is not None

    # A retry with the token that was replaced a moment ago is not theft.
    retried = client.refresh_session(first.refresh_token.value)
    assert retried.handle == first.handle
    assert client.get_all_session_handles_for_user("user-13") == [first.handle]


@pytest.mark.parametrize("kept", ["first", "last"])
def test_grace_either_response_kept(
    start_daemon: Callable[..., DaemonProcess], database_url: str, kept: str
) -> None:
    daemon = start_daemon(database_url, refresh_grace_period_s=2)
    with daemon.client() as client:
        session = client.create_new_session("user-14")
        assert session.refresh_token is not None
        # Two tabs refresh at the same moment with the same token.
        barrier = threading.Barrier(2)

        def refresh(token: str) -> sessiond.Session:
            barrier.wait()
            return client.refresh_session(token)

        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(refresh, session.refresh_token.value) for _ in range(2)
            ]
            responses = [future.result() for future in futures]
        # Each response is used once, as two tabs would, and then only the
        # kept one goes on.
        for response in responses:
            assert response.access_token is not None
            assert response.anti_csrf_token is not None
            client.get_session(
                response.access_token.value, response.anti_csrf_token.value
            )
        chosen = responses[0] if kept == "first" else responses[1]
        other = responses[1] if kept == "first" else responses[0]
        assert chosen.refresh_token is not None
        assert other.refresh_token is not None

        rotated = client.refresh_session(chosen.refresh_token.value)
        assert rotated.access_token is not None
        assert rotated.anti_csrf_token is not None
        client.get_session(rotated.access_token.value, rotated.anti_csrf_token.value)
        assert client.get_all_session_handles_for_user("user-14") == [session.handle]

        # Past the grace period the abandoned branch is a replay.
        time.sleep(2.2)
        with pytest.raises(sessiond.TokenTheftDetectedError):
            client.refresh_session(other.refresh_token.value)
