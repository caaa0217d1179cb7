"""Session data without lost updates, payload changes, session listings and lifetimes.

Every test drives a real daemon through the SDK, on SQLite and on MySQL:
- versioned writes (expected_version, ConflictError), merge patches and the
  modify_session_data retry helper, including 16 concurrent writers;
- access token payload updates and RegenerateAccessToken;
- ListSessions with device details;
- idle_timeout_s, max_session_lifetime_s and max_sessions_per_user.
Bad input must raise InvalidArgumentError naming the field and leave the
stored data as it was.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond_testing import DaemonProcess

import sessiond
from sessiond.errors import from_rpc_error
from sessiond.v1 import session_pb2 as pb
from sessiond.v1 import session_pb2_grpc

WRITERS = 16
ROUNDS = 10
# Sixteen writers collide often, so the helper gets far more attempts than
# its default of 5; the tests check the totals, not the number of retries.
CONTENDED_MAX_ATTEMPTS = 1000


# -- helpers ------------------------------------------------------------------


def tokens_of(session: sessiond.Session) -> tuple[str, str, str]:
    """Return (access, anti-CSRF, refresh) token values of a session that issued all three."""
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    assert session.refresh_token is not None
    return (
        session.access_token.value,
        session.anti_csrf_token.value,
        session.refresh_token.value,
    )


def decode_claims(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return claims


@pytest.fixture
def raw_stub(daemon: DaemonProcess) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    """A generated stub on its own channel, for requests the SDK would not build."""
    channel = grpc.insecure_channel(daemon.address)
    try:
        yield session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()


def raw_error(call: Callable[[], Any]) -> sessiond.SessionError:
    """Run a raw stub call that must fail, and return the SDK error it maps to."""
    try:
        call()
    except grpc.RpcError as error:
        return from_rpc_error(error)
    raise AssertionError("the call succeeded")


def run_writers(count: int, write: Callable[[int], None]) -> list[BaseException]:
    """Run write(index) in count threads released together; return their exceptions."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        try:
            write(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    return errors


def increment_count(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "count": data["count"] + 1}


# -- versioned writes ---------------------------------------------------------


def test_versioned_update_returns_version(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-cas", None, {"n": 0})

    first = session.get_session_data_versioned()
    version = session.update_session_data({"n": 1}, expected_version=first.version)

    assert first == sessiond.SessionData({"n": 0}, 1)
    assert version == 2
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"n": 1}, 2
    )


def test_conflict_carries_current_version(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-conflict", None, {"n": 0})
    client.update_session_data(session.handle, {"n": 1})
    client.update_session_data(session.handle, {"n": 2})

    with pytest.raises(sessiond.ConflictError) as raised:
        client.update_session_data(session.handle, {"n": 99}, expected_version=1)

    assert raised.value.current_version == 3
    assert raised.value.code == grpc.StatusCode.ABORTED
    assert "version 3" in raised.value.message
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"n": 2}, 3
    )


def test_conflict_reason_on_the_wire(
    client: sessiond.SessionClient, raw_stub: session_pb2_grpc.SessionServiceStub
) -> None:
    session = client.create_new_session("user-conflict-raw", None, {"n": 0})
    request = pb.UpdateSessionDataRequest(
        session_handle=session.handle,
        session_data_json='{"n":1}',
        expected_data_version=7,
    )

    with pytest.raises(grpc.RpcError) as raised:
        raw_stub.UpdateSessionData(request, timeout=10)
    assert isinstance(raised.value, grpc.Call)
    status = rpc_status.from_call(raised.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)

    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert info.reason == "CONFLICT"
    assert info.domain == "sessiond"
    assert dict(info.metadata) == {"current_data_version": "1"}
    assert client.get_session_data_versioned(session.handle).version == 1


def test_expected_version_below_one_rejected(
    client: sessiond.SessionClient,
) -> None:
    session = client.create_new_session("user-version-zero", None, {"n": 0})
    fields: dict[str, str] = {}
    for version in (0, -1):
        for name, call in (
            ("update", client.update_session_data),
            ("merge", client.merge_session_data),
        ):
            try:
                call(session.handle, {"n": 1}, expected_version=version)
            except sessiond.InvalidArgumentError as error:
                fields[f"{name} {version}"] = error.field
            else:
                fields[f"{name} {version}"] = "accepted"

    assert fields == {
        "update 0": "expected_version",
        "merge 0": "expected_version",
        "update -1": "expected_version",
        "merge -1": "expected_version",
    }
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"n": 0}, 1
    )


def test_versioned_update_missing_session(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-cas-revoked", None, {"n": 0})
    session.revoke()

    # A gone session is reported as gone, never as a conflict.
    with pytest.raises(sessiond.UnauthorisedError):
        client.update_session_data(session.handle, {"n": 1}, expected_version=1)


# -- concurrent writers -------------------------------------------------------


def test_concurrent_modify_counts_every_increment(
    client: sessiond.SessionClient,
) -> None:
    session = client.create_new_session("user-counter", None, {"count": 0})

    def write(_index: int) -> None:
        for _ in range(ROUNDS):
            client.modify_session_data(
                session.handle, increment_count, max_attempts=CONTENDED_MAX_ATTEMPTS
            )

    errors = run_writers(WRITERS, write)
    final = client.get_session_data_versioned(session.handle)

    assert errors == []
    assert final.value == {"count": WRITERS * ROUNDS}
    assert final.version == 1 + WRITERS * ROUNDS


def test_concurrent_merges_and_increments(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-merge-counter", None, {"count": 0})

    def write(index: int) -> None:
        for step in range(ROUNDS):
            client.merge_session_data(session.handle, {f"w{index}": step})
            client.modify_session_data(
                session.handle, increment_count, max_attempts=CONTENDED_MAX_ATTEMPTS
            )

    errors = run_writers(WRITERS, write)
    final = client.get_session_data_versioned(session.handle)

    assert errors == []
    assert final.value["count"] == WRITERS * ROUNDS
    assert {key: value for key, value in final.value.items() if key != "count"} == {
        f"w{index}": ROUNDS - 1 for index in range(WRITERS)
    }
    assert final.version == 1 + 2 * WRITERS * ROUNDS


def test_plain_overwrite_last_writer_wins(client: sessiond.SessionClient) -> None:
    """Unversioned read-then-write increments are last-writer-wins.

    Two writers that read the same value both write value + 1, so one
    increment is lost. How many are lost depends on thread scheduling, so
    the test checks only the bounds, and that every write got a version.
    """
    session = client.create_new_session("user-overwrite", None, {"count": 0})

    def write(_index: int) -> None:
        for _ in range(ROUNDS):
            data = client.get_session_data(session.handle)
            client.update_session_data(session.handle, increment_count(data))

    errors = run_writers(WRITERS, write)
    final = client.get_session_data_versioned(session.handle)

    assert errors == []
    assert 1 <= final.value["count"] <= WRITERS * ROUNDS
    assert final.version == 1 + WRITERS * ROUNDS


def test_modify_raises_last_conflict(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-always-conflict", None, {"count": 0})
    calls: list[Any] = []

    def change_and_interfere(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(data)
        # Another writer gets in between every read and write.
        client.update_session_data(session.handle, {"count": -len(calls)})
        return increment_count(data)

    with pytest.raises(sessiond.ConflictError) as raised:
        client.modify_session_data(session.handle, change_and_interfere, max_attempts=3)

    assert calls == [{"count": 0}, {"count": -1}, {"count": -2}]
    assert raised.value.current_version == 4
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"count": -3}, 4
    )


def test_modify_returns_written_value(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-modify", None, {"count": 41})

    written = session.modify_session_data(increment_count)

    assert written == sessiond.SessionData({"count": 42}, 2)
    assert session.get_session_data() == {"count": 42}


def test_modify_max_attempts_below_one(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-modify-zero", None, {"count": 0})
    calls: list[Any] = []

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        client.modify_session_data(session.handle, calls.append, max_attempts=0)

    assert raised.value.field == "max_attempts"
    assert calls == []
    assert client.get_session_data_versioned(session.handle).version == 1


@pytest.mark.parametrize(
    "max_attempts",
    ["SECRET123", b"SECRET123", ["SECRET123"], {1: 1}, True, 1.0, float("nan"), 2**63],
)
def test_modify_max_attempts_wrong_value(
    client: sessiond.SessionClient, max_attempts: Any
) -> None:
    session = client.create_new_session("user-modify-bad", None, {"count": 0})
    calls: list[Any] = []

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        client.modify_session_data(
            session.handle, calls.append, max_attempts=max_attempts
        )

    assert raised.value.field == "max_attempts"
    assert "pass an int from 1 to 1000" in raised.value.message
    assert "SECRET123" not in raised.value.message
    assert calls == []
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"count": 0}, 1
    )


# -- merge patches ------------------------------------------------------------


def test_merge_end_to_end(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(
        "user-merge",
        None,
        {"cart": ["book"], "prefs": {"theme": "dark", "lang": "en"}, "n": 1},
    )

    merged = session.merge_session_data(
        {"prefs": {"lang": None, "tz": "UTC"}, "seen": True, "n": None}
    )

    expected = {"cart": ["book"], "prefs": {"theme": "dark", "tz": "UTC"}, "seen": True}
    assert merged == sessiond.SessionData(expected, 2)
    assert client.get_session_data_versioned(session.handle) == merged
    # A patch that is not an object replaces the data whole.
    assert client.merge_session_data(session.handle, ["x"]) == sessiond.SessionData(
        ["x"], 3
    )
    assert client.merge_session_data(
        session.handle, {"a": 1}, expected_version=3
    ) == sessiond.SessionData({"a": 1}, 4)


def test_merge_conflict_leaves_data(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-merge-conflict", None, {"a": 1})
    client.merge_session_data(session.handle, {"b": 2})

    with pytest.raises(sessiond.ConflictError) as raised:
        client.merge_session_data(session.handle, {"c": 3}, expected_version=1)

    assert raised.value.current_version == 2
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"a": 1, "b": 2}, 2
    )


def test_merge_result_over_limit_rejected(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, max_session_data_bytes=100)
    with daemon.client() as client:
        session = client.create_new_session("user-merge-limit", None, {"a": "x" * 60})

        # The patch alone fits the limit; the merged data would not.
        with pytest.raises(sessiond.InvalidArgumentError) as raised:
            client.merge_session_data(session.handle, {"b": "y" * 60})

        assert raised.value.field == "session_data"
        assert "after the merge" in raised.value.message
        assert client.get_session_data_versioned(
            session.handle
        ) == sessiond.SessionData({"a": "x" * 60}, 1)
        # Removing a key shrinks the data, so that merge fits.
        assert client.merge_session_data(
            session.handle, {"a": None, "b": "y" * 60}
        ) == sessiond.SessionData({"b": "y" * 60}, 2)


def test_merge_invalid_patch_rejected(
    client: sessiond.SessionClient, raw_stub: session_pb2_grpc.SessionServiceStub
) -> None:
    session = client.create_new_session("user-merge-invalid", None, {"a": 1})
    results: dict[str, tuple[str, str]] = {}
    for text in ("{bad", "", "NaN", "1e999", '{"a":1} trailing'):
        request = pb.MergeSessionDataRequest(
            session_handle=session.handle, patch_json=text
        )
        error = raw_error(lambda request=request: raw_stub.MergeSessionData(request))
        results[text] = (type(error).__name__, getattr(error, "field", ""))

    assert results == {
        text: ("InvalidArgumentError", "patch")
        for text in ("{bad", "", "NaN", "1e999", '{"a":1} trailing')
    }
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"a": 1}, 1
    )


def test_merge_bad_handle_rejected(client: sessiond.SessionClient) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        client.merge_session_data("not-a-handle", {"a": 1})

    assert raised.value.field == "handle"


def test_merge_gone_session_unauthorised(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-merge-gone", None, {"a": 1})
    session.revoke()

    with pytest.raises(sessiond.UnauthorisedError):
        client.merge_session_data(session.handle, {"a": 2})


def test_merge_lone_surrogate_stored(
    client: sessiond.SessionClient, raw_stub: session_pb2_grpc.SessionServiceStub
) -> None:
    session = client.create_new_session("user-merge-surrogate", None, {"a": "é"})
    request = pb.MergeSessionDataRequest(
        session_handle=session.handle, patch_json='{"s":"\\ud800"}'
    )

    response = raw_stub.MergeSessionData(request, timeout=10)

    assert json.loads(response.session_data_json) == {"a": "é", "s": "\ud800"}
    assert client.get_session_data(session.handle) == {"a": "é", "s": "\ud800"}


def test_merge_deep_patch_no_internal_error(
    client: sessiond.SessionClient, raw_stub: session_pb2_grpc.SessionServiceStub
) -> None:
    session = client.create_new_session("user-merge-deep", None, {"a": 1})
    depth = 990
    request = pb.MergeSessionDataRequest(
        session_handle=session.handle,
        patch_json='{"d":' * depth + "1" + "}" * depth,
    )

    # Whether the daemon can merge a patch this deep depends on its stack
    # use. It must either store the result or reject the patch by name.
    try:
        response = raw_stub.MergeSessionData(request, timeout=10)
    except grpc.RpcError as error:
        rejected = from_rpc_error(error)
        assert isinstance(rejected, sessiond.InvalidArgumentError)
        assert rejected.field == "patch"
        assert client.get_session_data_versioned(
            session.handle
        ) == sessiond.SessionData({"a": 1}, 1)
    else:
        assert response.data_version == 2


@pytest.mark.parametrize(
    ("data_json", "expected"),
    [
        pytest.param("[" + "9" * 5000 + "]", "5000 digits", id="long-integer"),
        pytest.param("[" * 990 + "]" * 990, "too deeply", id="deep-nesting"),
    ],
)
def test_parser_limit_leaves_data(
    client: sessiond.SessionClient,
    raw_stub: session_pb2_grpc.SessionServiceStub,
    data_json: str,
    expected: str,
) -> None:
    session = client.create_new_session("user-parser-limit", None, {"a": 1})
    request = pb.UpdateSessionDataRequest(
        session_handle=session.handle, session_data_json=data_json
    )

    error = raw_error(lambda: raw_stub.UpdateSessionData(request, timeout=10))

    assert isinstance(error, sessiond.InvalidArgumentError)
    assert error.field == "session_data"
    assert expected in str(error)
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"a": 1}, 1
    )


# A number that overflows a double, carrying a card number that messages must
# never quote.
OVERFLOW_JSON = '{"card": 4111111111111111e999}'
SECRET_DIGITS = "4111111111111111"


def test_rejected_values_not_echoed(
    client: sessiond.SessionClient, raw_stub: session_pb2_grpc.SessionServiceStub
) -> None:
    session = client.create_new_session("user-not-echoed", {"role": "r"}, {"a": 1})
    handle = session.handle
    negative = -int(SECRET_DIGITS)
    requests: dict[str, tuple[Callable[[], Any], str]] = {
        "create data": (
            lambda: raw_stub.CreateSession(
                pb.CreateSessionRequest(
                    user_id="user-not-echoed", session_data_json=OVERFLOW_JSON
                ),
                timeout=10,
            ),
            "session_data",
        ),
        "create payload": (
            lambda: raw_stub.CreateSession(
                pb.CreateSessionRequest(
                    user_id="user-not-echoed", access_token_payload_json=OVERFLOW_JSON
                ),
                timeout=10,
            ),
            "access_token_payload",
        ),
        "update data": (
            lambda: raw_stub.UpdateSessionData(
                pb.UpdateSessionDataRequest(
                    session_handle=handle, session_data_json=OVERFLOW_JSON
                ),
                timeout=10,
            ),
            "session_data",
        ),
        "merge patch": (
            lambda: raw_stub.MergeSessionData(
                pb.MergeSessionDataRequest(
                    session_handle=handle, patch_json=OVERFLOW_JSON
                ),
                timeout=10,
            ),
            "patch",
        ),
        "update payload": (
            lambda: raw_stub.UpdateAccessTokenPayload(
                pb.UpdateAccessTokenPayloadRequest(
                    session_handle=handle, access_token_payload_json=OVERFLOW_JSON
                ),
                timeout=10,
            ),
            "access_token_payload",
        ),
        "update version": (
            lambda: raw_stub.UpdateSessionData(
                pb.UpdateSessionDataRequest(
                    session_handle=handle,
                    session_data_json='{"a": 2}',
                    expected_data_version=negative,
                ),
                timeout=10,
            ),
            "expected_data_version",
        ),
        "merge version": (
            lambda: raw_stub.MergeSessionData(
                pb.MergeSessionDataRequest(
                    session_handle=handle,
                    patch_json='{"a": 2}',
                    expected_data_version=negative,
                ),
                timeout=10,
            ),
            "expected_data_version",
        ),
    }

    errors = {name: raw_error(call) for name, (call, _) in requests.items()}

    assert {
        name: (type(error).__name__, getattr(error, "field", ""))
        for name, error in errors.items()
    } == {
        name: ("InvalidArgumentError", field) for name, (_, field) in requests.items()
    }
    assert [name for name, error in errors.items() if SECRET_DIGITS in str(error)] == []
    assert [
        name
        for name, error in errors.items()
        if "version" not in name and "double at position 9;" not in str(error)
    ] == []
    assert client.get_all_session_handles_for_user("user-not-echoed") == [handle]
    assert client.get_session_data_versioned(handle) == sessiond.SessionData(
        {"a": 1}, 1
    )
    assert client.get_session_info(handle).access_token_payload == {"role": "r"}


def test_wrong_type_version_leaves_data(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-wrong-type", None, {"a": 1})

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        client.update_session_data(
            session.handle,
            {"a": 2},
            expected_version="1",  # type: ignore[arg-type]
        )

    assert raised.value.field == "expected_version"
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        {"a": 1}, 1
    )


# -- access token payload -----------------------------------------------------


def test_payload_update_visible_after_refresh(
    client: sessiond.SessionClient,
) -> None:
    session = client.create_new_session("user-payload", {"role": "reader"})
    access, csrf, refresh = tokens_of(session)

    session.update_access_token_payload({"role": "admin", "tier": 2})

    assert session.access_token_payload == {"role": "admin", "tier": 2}
    # Tokens issued before keep their payload until they expire.
    assert client.get_session(access, csrf).access_token_payload == {"role": "reader"}
    assert client.get_session_info(session.handle).access_token_payload == {
        "role": "admin",
        "tier": 2,
    }
    refreshed = client.refresh_session(refresh)
    assert refreshed.access_token_payload == {"role": "admin", "tier": 2}
    new_access, new_csrf, _ = tokens_of(refreshed)
    verified = client.get_session(new_access, new_csrf)
    assert verified.access_token_payload == {"role": "admin", "tier": 2}


def test_payload_update_reaches_promotion(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-payload-promote", {"role": "reader"})
    child = client.refresh_session(tokens_of(session)[2])
    child_access, child_csrf, _ = tokens_of(child)

    client.update_access_token_payload(session.handle, {"role": "admin"})
    verified = client.get_session(child_access, child_csrf)

    assert verified.access_token is not None, "promotion must issue a new token"
    assert verified.access_token_payload == {"role": "admin"}
    assert decode_claims(verified.access_token.value)["role"] == "admin"


def test_regenerate_new_payload_same_handle(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-regenerate", {"role": "reader"})
    access, csrf, refresh = tokens_of(session)

    regenerated = client.regenerate_access_token(access, {"role": "admin"})

    assert regenerated.handle == session.handle
    assert regenerated.user_id == "user-regenerate"
    assert regenerated.access_token_payload == {"role": "admin"}
    assert regenerated.access_token is not None
    assert regenerated.access_token.value != access
    # The new token works with the anti-CSRF token issued at login.
    verified = client.get_session(regenerated.access_token.value, csrf)
    assert verified.handle == session.handle
    assert verified.access_token_payload == {"role": "admin"}
    assert client.get_session_info(session.handle).access_token_payload == {
        "role": "admin"
    }
    # The payload is stored, so the next refresh keeps it.
    assert client.refresh_session(refresh).access_token_payload == {"role": "admin"}


def test_regenerate_without_payload_uses_stored(
    client: sessiond.SessionClient,
) -> None:
    session = client.create_new_session("user-regenerate-stored", {"role": "reader"})
    access, csrf, _ = tokens_of(session)
    client.update_access_token_payload(session.handle, {"role": "editor"})

    regenerated = client.regenerate_access_token(access)

    assert regenerated.access_token is not None
    verified = client.get_session(regenerated.access_token.value, csrf)
    assert verified.access_token_payload == {"role": "editor"}


@pytest.fixture
def strict_client(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> Iterator[sessiond.SessionClient]:
    """A client of a daemon with no refresh grace period, so every replay is theft."""
    with start_daemon(database_url, refresh_grace_period_s=0).client() as client:
        yield client


def test_regenerate_keeps_refresh_binding(
    strict_client: sessiond.SessionClient,
) -> None:
    client = strict_client
    session = client.create_new_session("user-regenerate-child", {"role": "reader"})
    parent_refresh = tokens_of(session)[2]
    child = client.refresh_session(parent_refresh)
    child_access, child_csrf, _ = tokens_of(child)

    regenerated = client.regenerate_access_token(child_access, {"role": "admin"})
    assert regenerated.access_token is not None
    old_claims = decode_claims(child_access)
    new_claims = decode_claims(regenerated.access_token.value)

    for claim in ("rth", "prth", "csrf", "sid", "sub"):
        assert new_claims[claim] == old_claims[claim], claim
    # The first verify of the regenerated child token still promotes the
    # child refresh token, so the parent becomes a replay.
    verified = client.get_session(regenerated.access_token.value, child_csrf)
    assert verified.access_token is not None
    assert "prth" not in decode_claims(verified.access_token.value)
    assert verified.access_token_payload == {"role": "admin"}
    with pytest.raises(sessiond.TokenTheftDetectedError):
        client.refresh_session(parent_refresh)


def test_regenerate_rejects_bad_tokens(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-regenerate-bad", {"role": "reader"})
    access, _, _ = tokens_of(session)
    header, claims, signature = access.split(".")
    tampered = f"{header}.{claims[:-2]}AA.{signature}"

    for token in ("", "not.a.token", tampered):
        with pytest.raises(sessiond.UnauthorisedError):
            client.regenerate_access_token(token, {"role": "admin"})
    session.revoke()
    with pytest.raises(sessiond.UnauthorisedError):
        client.regenerate_access_token(access, {"role": "admin"})


def test_regenerate_expired_token_asks_refresh(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(
        database_url, access_token_validity_s=1, clock_skew_leeway_s=0
    )
    with daemon.client() as client:
        session = client.create_new_session("user-regenerate-expired", {"r": 1})
        access, _, _ = tokens_of(session)
        # exp is whole seconds, so the token is invalid 2 s after issue at the latest.
        time.sleep(2.1)

        with pytest.raises(sessiond.TryRefreshTokenError):
            client.regenerate_access_token(access, {"r": 2})
        assert client.get_session_info(session.handle).access_token_payload == {"r": 1}


BAD_PAYLOADS: list[Any] = [
    [],
    "text",
    0,
    True,
    [{"role": "admin"}],
    {"sub": "someone-else"},
    {"sid": "forged", "role": "admin"},
    {"exp": 9999999999},
    {"csrf": "x"},
]


def test_payload_bad_input_rejected(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-payload-bad", {"role": "reader"})
    access, _, _ = tokens_of(session)
    fields: dict[str, str] = {}
    for payload in BAD_PAYLOADS:
        for name, call in (
            ("update", lambda p: client.update_access_token_payload(session.handle, p)),
            ("regenerate", lambda p: client.regenerate_access_token(access, p)),
        ):
            try:
                call(payload)
            except sessiond.InvalidArgumentError as error:
                fields[f"{name} {payload!r}"] = error.field
            except sessiond.SessionError as error:
                fields[f"{name} {payload!r}"] = type(error).__name__
            else:
                fields[f"{name} {payload!r}"] = "accepted"

    assert fields == {
        f"{name} {payload!r}": "access_token_payload"
        for payload in BAD_PAYLOADS
        for name in ("update", "regenerate")
    }
    assert client.get_session_info(session.handle).access_token_payload == {
        "role": "reader"
    }


def test_payload_over_limit_rejected(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, max_access_token_payload_bytes=100)
    with daemon.client() as client:
        session = client.create_new_session("user-payload-limit", {"role": "reader"})
        access, _, _ = tokens_of(session)

        with pytest.raises(sessiond.InvalidArgumentError) as updated:
            session.update_access_token_payload({"blob": "x" * 100})
        with pytest.raises(sessiond.InvalidArgumentError) as regenerated:
            client.regenerate_access_token(access, {"blob": "x" * 100})

        assert updated.value.field == "access_token_payload"
        assert regenerated.value.field == "access_token_payload"
        assert session.access_token_payload == {"role": "reader"}
        assert client.get_session_info(session.handle).access_token_payload == {
            "role": "reader"
        }


def test_payload_update_gone_session(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-payload-gone", {"role": "reader"})
    session.revoke()

    with pytest.raises(sessiond.UnauthorisedError):
        client.update_access_token_payload(session.handle, {"role": "admin"})
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        client.update_access_token_payload("not-a-handle", {"role": "admin"})
    assert raised.value.field == "handle"


# -- listing sessions ---------------------------------------------------------


def test_list_sessions_device_details(client: sessiond.SessionClient) -> None:
    user = "user-list"
    before = time.time_ns() // 1_000_000
    laptop = client.create_new_session(
        user,
        {"role": "reader"},
        device=sessiond.DeviceInfo(
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Zoë",
            ip_address="2001:DB8:0:0:0:0:0:7",
            label="Zoë's laptop 💻",
        ),
    )
    phone = client.create_new_session(
        user, None, device=sessiond.DeviceInfo(ip_address="203.0.113.9")
    )
    bare = client.create_new_session(user)
    revoked = client.create_new_session(user)
    revoked.revoke()
    client.create_new_session("user-list-other")

    listed = client.list_sessions(user)

    assert [item.handle for item in listed] == [
        laptop.handle,
        phone.handle,
        bare.handle,
    ]
    first = listed[0]
    assert first.user_id == user
    assert first.access_token_payload == {"role": "reader"}
    assert first.device == sessiond.DeviceInfo(
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Zoë",
        ip_address="2001:db8::7",
        label="Zoë's laptop 💻",
    )
    assert before <= first.created_at_ms <= time.time_ns() // 1_000_000
    assert first.last_refreshed_at_ms == first.created_at_ms
    assert laptop.refresh_token is not None
    assert first.expires_at_ms == laptop.refresh_token.expiry_ms
    assert listed[1].device == sessiond.DeviceInfo(ip_address="203.0.113.9")
    assert listed[1].access_token_payload == {}
    assert listed[2].device is None
    assert client.list_sessions("user-list-nobody") == []


def test_list_sessions_after_refresh(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-list-refresh")
    created = client.list_sessions("user-list-refresh")[0]
    time.sleep(0.05)

    refreshed = client.refresh_session(tokens_of(session)[2])
    listed = client.list_sessions("user-list-refresh")[0]

    assert listed.created_at_ms == created.created_at_ms
    assert listed.last_refreshed_at_ms > created.last_refreshed_at_ms
    assert listed.expires_at_ms > created.expires_at_ms
    assert refreshed.refresh_token is not None
    assert listed.expires_at_ms == refreshed.refresh_token.expiry_ms


def test_bad_device_rejected(client: sessiond.SessionClient) -> None:
    user = "user-bad-device"
    cases = {
        "device.user_agent": sessiond.DeviceInfo(user_agent="a" * 513),
        "device.label": sessiond.DeviceInfo(label="é" * 128),
        "device.ip_address": sessiond.DeviceInfo(ip_address="not-an-ip"),
    }
    bad_addresses = ["999.1.1.1", "1.2.3.4/24", "example.com", "1.2.3.4 ", "x" * 100]
    fields: dict[str, str] = {}
    for expected, device in cases.items():
        try:
            client.create_new_session(user, None, {"k": 1}, device=device)
        except sessiond.InvalidArgumentError as error:
            fields[expected] = error.field
            assert "device" in error.message
    for address in bad_addresses:
        try:
            client.create_new_session(
                user, None, None, device=sessiond.DeviceInfo(ip_address=address)
            )
        except sessiond.InvalidArgumentError as error:
            fields[address] = error.field

    assert fields == {
        **{name: name for name in cases},
        **{address: "device.ip_address" for address in bad_addresses},
    }
    assert client.list_sessions(user) == []
    assert client.get_all_session_handles_for_user(user) == []


def test_list_sessions_excludes_expired(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    # Cleanup runs once a day, so only the read's filter can hide the row.
    daemon = start_daemon(
        database_url, refresh_token_validity_s=1, cleanup_interval_s=86400
    )
    with daemon.client() as client:
        expired = client.create_new_session("user-list-expired")
        time.sleep(1.5)
        live = client.create_new_session("user-list-expired")

        listed = client.list_sessions("user-list-expired")

        assert [item.handle for item in listed] == [live.handle]
        assert expired.handle != live.handle


# -- lifetimes ----------------------------------------------------------------


def test_idle_timeout_ends_session(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, idle_timeout_s=2, cleanup_interval_s=86400)
    user = "user-idle"
    with daemon.client() as client:
        active = client.create_new_session(user, None, {"k": 1})
        idle = client.create_new_session(user, None, {"k": 2})
        active_access, active_csrf, active_refresh = tokens_of(active)
        idle_access, idle_csrf, idle_refresh = tokens_of(idle)
        assert idle.refresh_token is not None
        assert (
            idle.refresh_token.expiry_ms
            == client.get_session_info(idle.handle).expires_at_ms
        )

        time.sleep(1.0)
        refreshed = client.refresh_session(active_refresh)
        assert refreshed.refresh_token is not None
        listed = client.list_sessions(user)
        assert listed[0].expires_at_ms == listed[0].last_refreshed_at_ms + 2000
        time.sleep(1.4)

        # 2.4 s after login: idle has had no refresh for longer than 2 s,
        # and active was refreshed 1.4 s ago.
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_data(idle.handle)
        with pytest.raises(sessiond.UnauthorisedError):
            client.update_session_data(idle.handle, {"k": 3})
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_info(idle.handle)
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(idle_access, idle_csrf, check_database=True)
        # An idle session is gone, not stolen: UnauthorisedError is not
        # TokenTheftDetectedError.
        with pytest.raises(sessiond.UnauthorisedError):
            client.refresh_session(idle_refresh)
        assert client.get_session_data(active.handle) == {"k": 1}
        assert client.get_all_session_handles_for_user(user) == [active.handle]
        assert [item.handle for item in client.list_sessions(user)] == [active.handle]

        time.sleep(1.2)
        # 1.2 s later, active too has been idle for more than 2 s.
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(active_access, active_csrf, check_database=True)
        assert client.list_sessions(user) == []


def test_max_lifetime_caps_refresh(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(
        database_url, max_session_lifetime_s=3, cleanup_interval_s=86400
    )
    with daemon.client() as client:
        session = client.create_new_session("user-lifetime", None, {"k": 1})
        _, _, refresh = tokens_of(session)
        created_at = client.get_session_info(session.handle).created_at_ms
        assert session.refresh_token is not None
        assert session.refresh_token.expiry_ms == created_at + 3000

        time.sleep(1.5)
        refreshed = client.refresh_session(refresh)

        # The refresh did not extend the session past created + 3 s.
        assert refreshed.refresh_token is not None
        assert refreshed.refresh_token.expiry_ms == created_at + 3000
        assert client.get_session_info(session.handle).expires_at_ms == (
            created_at + 3000
        )
        details = client.list_sessions("user-lifetime")[0]
        assert details.expires_at_ms == created_at + 3000
        assert details.last_refreshed_at_ms > created_at

        time.sleep(max(0.0, (created_at + 3300) / 1000 - time.time()))
        with pytest.raises(sessiond.UnauthorisedError):
            client.refresh_session(refreshed.refresh_token.value)
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_data(session.handle)
        assert client.list_sessions("user-lifetime") == []


def test_per_user_cap_revokes_oldest(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, max_sessions_per_user=2)
    user = "user-capped"
    with daemon.client() as client:
        first = client.create_new_session(user, None, {"k": 1})
        second = client.create_new_session(user, None, {"k": 2})
        other = client.create_new_session("user-capped-other")
        assert [item.handle for item in client.list_sessions(user)] == [
            first.handle,
            second.handle,
        ]

        third = client.create_new_session(user, None, {"k": 3})

        assert [item.handle for item in client.list_sessions(user)] == [
            second.handle,
            third.handle,
        ]
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_data(first.handle)
        # A revoked session is gone, not stolen.
        with pytest.raises(sessiond.UnauthorisedError):
            client.refresh_session(tokens_of(first)[2])
        assert client.get_session_data(second.handle) == {"k": 2}
        assert client.get_all_session_handles_for_user("user-capped-other") == [
            other.handle
        ]
        assert "oldest sessions revoked" in daemon.log()


# -- module-level calls -------------------------------------------------------


def test_module_level_new_calls(daemon: DaemonProcess) -> None:
    sessiond.init(daemon.address)
    try:
        session = sessiond.create_new_session(
            "user-module",
            {"role": "reader"},
            {"count": 0},
            device=sessiond.DeviceInfo(label="module"),
        )
        access, csrf, _ = tokens_of(session)
        assert sessiond.modify_session_data(
            session.handle, increment_count
        ) == sessiond.SessionData({"count": 1}, 2)
        assert sessiond.merge_session_data(
            session.handle, {"x": 1}, expected_version=2
        ) == sessiond.SessionData({"count": 1, "x": 1}, 3)
        assert (
            sessiond.update_session_data(
                session.handle, {"count": 5}, expected_version=3
            )
            == 4
        )
        assert sessiond.get_session_data_versioned(
            session.handle
        ) == sessiond.SessionData({"count": 5}, 4)
        sessiond.update_access_token_payload(session.handle, {"role": "editor"})
        regenerated = sessiond.regenerate_access_token(access)
        assert regenerated.access_token_payload == {"role": "editor"}
        listed = sessiond.list_sessions("user-module")
        assert [item.device for item in listed] == [sessiond.DeviceInfo(label="module")]
        assert sessiond.get_session(access, csrf).handle == session.handle
    finally:
        sessiond.close()


def test_data_over_grpc_default_limit(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # gRPC's default receive limit is 4 MiB; the client raises it, so data the
    # daemon accepts can also be read back.
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'large.db'}", max_session_data_bytes=6 * 1024 * 1024
    )
    value = {"blob": "x" * (5 * 1024 * 1024)}
    with daemon.client(timeout=60) as client:
        session = client.create_new_session("user-large", None, value)
        assert client.get_session_data(session.handle) == value
