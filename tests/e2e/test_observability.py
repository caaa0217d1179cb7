"""Prometheus metrics and JSON logs of a real daemon."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sessiond_testing import DaemonProcess, metric_value, scrape_metrics

import sessiond


def test_metrics_count_calls(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'metrics.db'}", metrics_listen="127.0.0.1:0"
    )
    with daemon.client() as client:
        session = client.create_new_session(
            "user-metrics", {"secret-ish": "payload"}, {"k": 1}
        )
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session("not-a-token")
        session.revoke()
    text = scrape_metrics(daemon)
    assert (
        metric_value(
            text, 'sessiond_grpc_calls_total{code="OK",method="CreateSession"}'
        )
        == 1
    )
    assert (
        metric_value(
            text,
            'sessiond_grpc_calls_total{code="UNAUTHENTICATED",method="VerifySession"}',
        )
        == 1
    )
    assert (
        metric_value(
            text, 'sessiond_grpc_call_duration_seconds_count{method="RevokeSession"}'
        )
        == 1
    )
    assert metric_value(text, "sessiond_signing_key_rotations_total") == 1
    assert metric_value(text, 'sessiond_session_events_total{event="created"}') == 1
    assert metric_value(text, 'sessiond_session_events_total{event="revoked"}') == 1
    in_use = metric_value(text, 'sessiond_database_pool_connections{state="in_use"}')
    idle = metric_value(text, 'sessiond_database_pool_connections{state="idle"}')
    # No call is running; the health check may hold one connection for a moment.
    assert in_use <= 1
    assert in_use + idle == 10
    assert "user-metrics" not in text
    assert "payload" not in text


def test_metrics_count_repeated_calls(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """Each call is counted once, under its own code, on the first call of a method and after."""
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'repeated.db'}", metrics_listen="127.0.0.1:0"
    )
    with daemon.client() as client:
        session = client.create_new_session("repeated")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        tokens = (session.access_token.value, session.anti_csrf_token.value)
        # Failures and successes alternate, so both codes go through a
        # method whose handler is already wrapped.
        for _ in range(3):
            with pytest.raises(sessiond.UnauthorisedError):
                client.get_session("not-a-token")
            client.get_session(*tokens)
    text = scrape_metrics(daemon)

    verify = 'sessiond_grpc_calls_total{code="%s",method="VerifySession"}'
    assert metric_value(text, verify % "OK") == 3
    assert metric_value(text, verify % "UNAUTHENTICATED") == 3
    duration = 'sessiond_grpc_call_duration_seconds_count{method="VerifySession"}'
    assert metric_value(text, duration) == 6


def test_metrics_port_in_use_fails_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = DaemonProcess(
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            tmp_path / "daemon.log",
            metrics_listen=f"127.0.0.1:{port}",
        )
        with pytest.raises(RuntimeError, match="metrics_listen: cannot bind"):
            daemon.start()


def test_json_log_lines(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'json.db'}", log_format="json")
    assert daemon.stop() == 0
    entries = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    messages = [entry["message"] for entry in entries]
    assert any(message.startswith("listening address=") for message in messages)
    assert all(
        {"time", "level", "logger", "message"} <= entry.keys() for entry in entries
    )


def test_jwks_over_http(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    import urllib.error

    import jwt

    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'jwks.db'}", jwks_listen="127.0.0.1:0"
    )
    match = re.search(r"jwks listening address=(\S+)", daemon.log())
    assert match is not None
    url = f"http://{match.group(1)}/.well-known/jwks.json"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Cache-Control"].startswith("public, max-age=")
        etag = response.headers["ETag"]
        jwks = json.loads(response.read())
    request = urllib.request.Request(url, headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request, timeout=5)
    not_modified.value.close()
    assert not_modified.value.code == 304

    with daemon.client() as client:
        session = client.create_new_session("user-jwks", {"role": "reader"})
    assert session.access_token is not None
    client_keys = jwt.PyJWKClient(url)
    key = client_keys.get_signing_key_from_jwt(session.access_token.value)
    claims = jwt.decode(
        session.access_token.value,
        key.key,
        algorithms=[key.algorithm_name],
        issuer="sessiond",
    )
    assert claims["sid"] == session.handle
    assert jwks["keys"][0]["kid"] == key.key_id
