"""The daemon's log never contains tokens, keys, API keys, payloads or session data."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sessiond_testing import DaemonProcess

import sessiond

API_KEY = "api-key-do-not-log-0123456789"
KEK = "ab" * 32
DATA_MARKER = "session-data-do-not-log"
PAYLOAD_MARKER = "payload-do-not-log"


def test_log_has_no_secrets(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(
        database_url,
        log_level="DEBUG",
        api_keys=API_KEY,
        key_encryption_key=KEK,
        refresh_grace_period_s=0,
    )
    secrets: list[str] = [API_KEY, KEK, DATA_MARKER, PAYLOAD_MARKER]
    with daemon.client(api_key=API_KEY) as client:
        session = client.create_new_session(
            "user-log", {"note": PAYLOAD_MARKER}, {"note": DATA_MARKER}
        )
        assert (
            session.access_token and session.refresh_token and session.anti_csrf_token
        )
        secrets += [
            session.access_token.value,
            session.refresh_token.value,
            session.anti_csrf_token.value,
        ]

        client.get_session(
            session.access_token.value,
            session.anti_csrf_token.value,
            check_database=True,
        )
        with pytest.raises(sessiond.TryRefreshTokenError):
            client.get_session(session.access_token.value, "wrong-" + DATA_MARKER)
        with pytest.raises(sessiond.InvalidArgumentError):
            client.update_session_data(session.handle, float("nan"))
        client.update_session_data(session.handle, {"note": DATA_MARKER + "-2"})

        child = client.refresh_session(session.refresh_token.value)
        assert child.access_token
        assert child.refresh_token
        assert child.anti_csrf_token
        secrets += [
            child.access_token.value,
            child.refresh_token.value,
            child.anti_csrf_token.value,
        ]
        promoted = client.get_session(
            child.access_token.value, child.anti_csrf_token.value
        )
        assert promoted.access_token is not None
        secrets.append(promoted.access_token.value)

        with pytest.raises(sessiond.TokenTheftDetectedError):
            client.refresh_session(session.refresh_token.value)
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(
                session.access_token.value[:-4] + "AAAA", session.anti_csrf_token.value
            )
    with (
        daemon.client(api_key="wrong-" + API_KEY) as stranger,
        pytest.raises(sessiond.GeneralError),
    ):
        stranger.create_new_session("user-log")
    assert daemon.stop() == 0

    log = daemon.log()
    assert "token theft detected" in log, "the flow must have reached the theft path"
    for secret in secrets:
        assert secret not in log
    assert "PRIVATE KEY" not in log
