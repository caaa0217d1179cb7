"""The pure parts both clients share: calls, deadlines and retries, channel options."""

from __future__ import annotations

import json
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import sessiond
from sessiond import _calls as calls
from sessiond._aio import _AioCallError
from sessiond._base import channel_options_with_defaults
from sessiond._retry import Attempts, ConflictRetries, RetryPolicy, is_retryable
from sessiond.errors import from_rpc_error
from sessiond.v1 import session_pb2 as pb

DETAILS_KEY = "grpc-status-details-bin"


def rpc_error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes], ...] = ()
) -> grpc.RpcError:
    """A failed call, as the grpc.Call view that both clients give the shared code."""
    error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )
    return _AioCallError(error)


def daemon_status(code: grpc.StatusCode, reason: str, **metadata: str) -> bytes:
    """The status details the daemon sends: google.rpc.Status with an ErrorInfo."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=reason, details=[detail])
    return status.SerializeToString()


UNAVAILABLE = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
DATABASE_DOWN = rpc_error(
    grpc.StatusCode.UNAVAILABLE,
    "UNAVAILABLE",
    ((DETAILS_KEY, daemon_status(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")),),
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- calls --------------------------------------------------------------------------

IDEMPOTENT = {
    "create_new_session": False,
    "refresh_session": False,
    "regenerate_access_token": False,
    "update_access_token_payload": False,
    "merge_session_data": False,
    "get_session": True,
    "revoke_session": True,
    "revoke_sessions": True,
    "revoke_all_sessions_for_user": True,
    "get_all_session_handles_for_user": True,
    "list_sessions": True,
    "get_session_info": True,
    "get_session_data_versioned": True,
    "get_jwks": True,
}
ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "create_new_session": ("u", None, None, None),
    "refresh_session": ("t",),
    "regenerate_access_token": ("t", None),
    "update_access_token_payload": ("h", {}),
    "merge_session_data": ("h", {}, 3),
    "get_session": ("t", "c", False),
    "revoke_session": ("h",),
    "revoke_sessions": (["h"],),
    "revoke_all_sessions_for_user": ("u",),
    "get_all_session_handles_for_user": ("u",),
    "list_sessions": ("u",),
    "get_session_info": ("h",),
    "get_session_data_versioned": ("h",),
    "get_jwks": (),
}


@pytest.mark.parametrize(("name", "idempotent"), IDEMPOTENT.items())
def test_which_calls_are_idempotent(name: str, idempotent: bool) -> None:
    call = getattr(calls, name)(*ARGUMENTS[name])
    assert call.idempotent is idempotent
    assert hasattr(pb, f"{call.rpc}Request")


def test_update_is_idempotent_only_with_an_expected_version() -> None:
    assert calls.update_session_data("h", {}, None).idempotent is False
    versioned = calls.update_session_data("h", {}, 4)
    assert versioned.idempotent is True
    assert versioned.request.expected_data_version == 4


def test_client_methods_have_calls() -> None:
    composed = {"close", "get_session_data", "modify_session_data"}
    methods = {
        name
        for name in vars(sessiond.SessionClient)
        if not name.startswith("_") and callable(getattr(sessiond.SessionClient, name))
    }
    assert methods - composed == set(IDEMPOTENT) | {"update_session_data"}
    async_methods = {
        name for name in vars(sessiond.AsyncSessionClient) if not name.startswith("_")
    }
    assert async_methods == methods


def test_dump_names_the_field() -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as caught:
        calls.create_new_session("u", {"when": object()}, None, None)
    assert caught.value.field == "access_token_payload"
    with pytest.raises(sessiond.InvalidArgumentError) as caught:
        calls.merge_session_data("h", float("nan"), None)
    assert caught.value.field == "patch"


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# Deeper than the interpreter's default recursion limit of 1000.
DEEP = nested_lists(5000)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            lambda: calls.create_new_session("u", {"k": DEEP}, None, None),
            "access_token_payload",
            id="create-payload",
        ),
        pytest.param(
            lambda: calls.create_new_session("u", None, DEEP, None),
            "session_data",
            id="create-data",
        ),
        pytest.param(
            lambda: calls.regenerate_access_token("t", {"k": DEEP}),
            "access_token_payload",
            id="regenerate-payload",
        ),
        pytest.param(
            lambda: calls.update_access_token_payload("h", {"k": DEEP}),
            "access_token_payload",
            id="update-payload",
        ),
        pytest.param(
            lambda: calls.update_session_data("h", DEEP, None),
            "session_data",
            id="update-data",
        ),
        pytest.param(
            lambda: calls.merge_session_data("h", {"k": DEEP}, None),
            "patch",
            id="merge-patch",
        ),
    ],
)
def test_dump_deep_nesting_names_argument(build: Any, field: str) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        build()

    assert raised.value.field == field
    assert "nested too deeply" in raised.value.message
    assert "recursion" not in raised.value.message


def test_create_request_and_parsed_session() -> None:
    device = sessiond.DeviceInfo(label="phone")
    call = calls.create_new_session("u", {"r": "é"}, [1], device)
    assert call.request.access_token_payload_json == '{"r":"é"}'
    assert call.request.session_data_json == "[1]"
    assert call.request.device.label == "phone"
    summary = pb.SessionSummary(
        session_handle="h", user_id="u", access_token_payload_json='{"r":1}'
    )
    response = pb.CreateSessionResponse(
        session=summary,
        access_token=pb.Token(token="a", expiry_ms=1),
        refresh_token=pb.Token(token="r", expiry_ms=2),
    )
    fields = call.parse(response)
    assert fields["handle"] == "h"
    assert fields["access_token_payload"] == {"r": 1}
    assert fields["access_token"] == sessiond.Token("a", 1)
    assert fields["refresh_token"] == sessiond.Token("r", 2)
    # A daemon with anti_csrf = false issues no anti-CSRF token.
    assert fields["anti_csrf_token"] is None


def test_verify_sets_access_token_only_for_a_replacement() -> None:
    call = calls.get_session("t", None, True)
    assert not call.request.HasField("anti_csrf_token")
    assert call.request.check_database is True
    summary = pb.SessionSummary(access_token_payload_json="{}")
    assert call.parse(pb.VerifySessionResponse(session=summary))["access_token"] is None
    replaced = pb.VerifySessionResponse(
        session=summary, new_access_token=pb.Token(token="n", expiry_ms=5)
    )
    assert call.parse(replaced)["access_token"] == sessiond.Token("n", 5)


def test_list_sessions_parses_device_or_none() -> None:
    response = pb.ListSessionsResponse(
        sessions=[
            pb.SessionDetails(session_handle="a", access_token_payload_json="{}"),
            pb.SessionDetails(
                session_handle="b",
                access_token_payload_json="{}",
                device=pb.DeviceInfo(ip_address="::1"),
            ),
        ]
    )
    first, second = calls.list_sessions("u").parse(response)
    assert first.device is None
    assert second.device == sessiond.DeviceInfo(ip_address="::1")


def test_data_and_jwks_parsing() -> None:
    data = pb.GetSessionDataResponse(session_data_json='{"k":[1]}', data_version=9)
    parsed = calls.get_session_data_versioned("h").parse(data)
    assert parsed == sessiond.SessionData({"k": [1]}, 9)
    jwks = {"keys": [{"kid": "k"}]}
    response = pb.GetJwksResponse(jwks_json=json.dumps(jwks))
    assert calls.get_jwks().parse(response) == jwks


# -- deadlines and retries ------------------------------------------------------------


def test_non_idempotent_call_raises_at_once() -> None:
    attempts = RetryPolicy(retries=5).attempts(idempotent=False)
    with pytest.raises(sessiond.UnavailableError):
        attempts.wait_after(UNAVAILABLE)


def test_retry_waits_double_with_jitter() -> None:
    policy = RetryPolicy(timeout_s=100, retries=6, backoff_s=0.1, backoff_max_s=0.5)
    for _ in range(20):
        attempts = Attempts(policy, idempotent=True, clock=Clock())
        waits = [attempts.wait_after(UNAVAILABLE) for _ in range(6)]
        for wait_s, ceiling in zip(waits, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5], strict=True):
            assert ceiling / 2 <= wait_s <= ceiling
        with pytest.raises(sessiond.UnavailableError):
            attempts.wait_after(UNAVAILABLE)


def test_deadline_bounds_the_retries() -> None:
    clock = Clock()
    policy = RetryPolicy(timeout_s=1.0, retries=100, backoff_s=0.3, backoff_max_s=0.3)
    attempts = policy.attempts(idempotent=True, clock=clock)
    assert attempts.timeout_s() == 1.0
    clock.now += 0.6
    assert attempts.timeout_s() == pytest.approx(0.4)
    # A wait of 0.15 s to 0.3 s still ends before the deadline.
    clock.now += attempts.wait_after(UNAVAILABLE)
    # Now at most 0.25 s is left, less than the shortest next wait.
    clock.now += 0.1
    with pytest.raises(sessiond.UnavailableError):
        attempts.wait_after(UNAVAILABLE)
    clock.now += 10
    assert attempts.timeout_s() == 0.0


def test_shutdown_cancel_is_unavailable_and_retried() -> None:
    # A daemon that is shutting down cancels the calls still queued.
    cancelled = rpc_error(grpc.StatusCode.CANCELLED, "Cancelled")

    assert is_retryable(cancelled)
    error = from_rpc_error(cancelled)
    assert isinstance(error, sessiond.UnavailableError)
    assert error.code == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    "error",
    [
        DATABASE_DOWN,
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, "API key is missing"),
        rpc_error(grpc.StatusCode.INTERNAL, "bug"),
    ],
    ids=["daemon-unavailable", "deadline", "api-key", "internal"],
)
def test_only_transport_unavailable_is_retried(error: grpc.RpcError) -> None:
    assert is_retryable(UNAVAILABLE)
    assert not is_retryable(error)
    attempts = RetryPolicy(retries=3).attempts(idempotent=True)
    with pytest.raises(sessiond.SessionError) as caught:
        attempts.wait_after(error)
    assert type(caught.value) is type(from_rpc_error(error))


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"timeout_s": 0}, "timeout"),
        ({"timeout_s": float("nan")}, "timeout"),
        ({"timeout_s": float("inf")}, "timeout"),
        ({"timeout_s": 86_401}, "timeout"),
        ({"timeout_s": 10**400}, "timeout"),
        ({"timeout_s": "1"}, "timeout"),
        ({"timeout_s": None}, "timeout"),
        ({"timeout_s": True}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": 1.0}, "retries"),
        ({"retries": "1"}, "retries"),
        ({"retries": None}, "retries"),
        ({"retries": True}, "retries"),
        ({"backoff_s": 0}, "retry_backoff_s"),
        ({"backoff_s": "0.1"}, "retry_backoff_s"),
        ({"backoff_s": None}, "retry_backoff_s"),
        ({"backoff_s": 1, "backoff_max_s": 0.5}, "retry_backoff_max_s"),
        ({"backoff_max_s": float("inf")}, "retry_backoff_max_s"),
        ({"backoff_max_s": 1e10}, "retry_backoff_max_s"),
        ({"backoff_max_s": "1"}, "retry_backoff_max_s"),
        ({"backoff_max_s": None}, "retry_backoff_max_s"),
    ],
)
def test_bad_policy_rejected(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as caught:
        RetryPolicy(**settings)
    assert caught.value.field == field
    assert "pass a" in caught.value.message


def test_policy_bounds_are_one_day() -> None:
    policy = RetryPolicy(timeout_s=86_400, retries=0, backoff_s=1, backoff_max_s=86_400)

    assert policy.timeout_s == 86_400
    assert policy.backoff_max_s == 86_400
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        RetryPolicy(timeout_s=86_400.5)
    assert raised.value.field == "timeout"
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        RetryPolicy(backoff_max_s=86_400.5)
    assert raised.value.field == "retry_backoff_max_s"


def test_conflict_retries() -> None:
    conflict = sessiond.ConflictError("conflict", current_version=2)
    retries = ConflictRetries(3)
    assert 0 <= retries.wait_after(conflict) <= 0.005
    assert 0 <= retries.wait_after(conflict) <= 0.01
    with pytest.raises(sessiond.ConflictError) as caught:
        retries.wait_after(conflict)
    assert caught.value is conflict
    with pytest.raises(sessiond.InvalidArgumentError):
        ConflictRetries(0)


@pytest.mark.parametrize(
    "max_attempts",
    [
        pytest.param("SECRET123", id="str"),
        pytest.param(b"SECRET123", id="bytes"),
        pytest.param(["SECRET123"], id="list"),
        pytest.param({"SECRET123": 1}, id="dict"),
        pytest.param(None, id="None"),
        pytest.param(True, id="bool"),
        pytest.param(1.0, id="float"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(0, id="zero"),
        pytest.param(1001, id="above-max"),
        pytest.param(-4111, id="negative"),
        pytest.param(4111, id="far-above-max"),
        pytest.param(2**63, id="huge"),
    ],
)
def test_bad_max_attempts_rejected(max_attempts: Any) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        ConflictRetries(max_attempts)

    assert raised.value.field == "max_attempts"
    assert "pass an int from 1 to 1000" in raised.value.message
    assert "SECRET123" not in raised.value.message
    assert "4111" not in raised.value.message


def test_max_attempts_bounds() -> None:
    conflict = sessiond.ConflictError("conflict", current_version=2)
    with pytest.raises(sessiond.ConflictError):
        ConflictRetries(1).wait_after(conflict)
    longest = ConflictRetries(1000)
    for _ in range(999):
        longest.wait_after(conflict)
    with pytest.raises(sessiond.ConflictError):
        longest.wait_after(conflict)

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        ConflictRetries(1001)
    assert raised.value.field == "max_attempts"


def test_daemon_status_maps_to_its_exception() -> None:
    details = daemon_status(
        grpc.StatusCode.ABORTED, "CONFLICT", current_data_version="7"
    )
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.ABORTED, "CONFLICT", ((DETAILS_KEY, details),))
    )
    assert type(error) is sessiond.ConflictError
    assert error.current_version == 7
    assert error.code == grpc.StatusCode.ABORTED
    assert str(error) == "CONFLICT"


# -- channel options -----------------------------------------------------------------

# gRPC's server defaults, which the daemon keeps: the least time between
# pings it accepts without calls in flight, and whether it accepts pings
# with no call at all.
SERVER_MIN_PING_INTERVAL_MS = 300_000
SERVER_PERMITS_PINGS_WITHOUT_CALLS = False
SERVER_MAX_PING_STRIKES = 2


def test_keepalive_defaults_stay_within_the_server_policy() -> None:
    options = dict(channel_options_with_defaults([]))
    assert options["grpc.keepalive_time_ms"] >= SERVER_MIN_PING_INTERVAL_MS
    assert options["grpc.keepalive_timeout_ms"] < options["grpc.keepalive_time_ms"]
    assert bool(options["grpc.keepalive_permit_without_calls"]) is (
        SERVER_PERMITS_PINGS_WITHOUT_CALLS
    )
    assert 0 < options["grpc.http2.max_pings_without_data"] <= SERVER_MAX_PING_STRIKES


def test_caller_options_replace_defaults() -> None:
    policy = RetryPolicy(backoff_s=0.25, backoff_max_s=4)
    options = channel_options_with_defaults(
        [("grpc.keepalive_time_ms", 600_000), ("grpc.primary_user_agent", "x")],
        policy,
    )
    names = [name for name, _ in options]
    assert len(names) == len(set(names))
    values = dict(options)
    assert values["grpc.keepalive_time_ms"] == 600_000
    assert values["grpc.primary_user_agent"] == "x"
    assert values["grpc.max_receive_message_length"] == 65 * 1024 * 1024
    assert values["grpc.initial_reconnect_backoff_ms"] == 250
    assert values["grpc.max_reconnect_backoff_ms"] == 4000


# -- arguments of the wrong type ---------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field", "expected"),
    [
        pytest.param(
            lambda: calls.create_new_session(42, None, calls.NOT_GIVEN, None),
            "user_id",
            "pass a str",
            id="user-id-int",
        ),
        pytest.param(
            lambda: calls.update_session_data("h", {}, "1"),
            "expected_version",
            "pass an int",
            id="version-str",
        ),
        pytest.param(
            lambda: calls.update_session_data("h", {}, 2**64),
            "expected_version",
            "2**63 - 1",
            id="version-too-big",
        ),
        pytest.param(
            lambda: calls.revoke_sessions([1, 2]),
            "handles[0]",
            "pass a str",
            id="handles-ints",
        ),
        pytest.param(
            lambda: calls.revoke_sessions("h"),
            "handles",
            "pass a list of str",
            id="handles-one-str",
        ),
        pytest.param(
            lambda: calls.get_session_info(None),  # type: ignore[arg-type]
            "handle",
            "got None; pass a str",
            id="handle-none",
        ),
        pytest.param(
            lambda: calls.create_new_session(b"x", None, calls.NOT_GIVEN, None),  # type: ignore[arg-type]
            "user_id",
            "got bytes; pass a str",
            id="user-id-bytes",
        ),
        pytest.param(
            lambda: calls.get_session("t", b"c", False),  # type: ignore[arg-type]
            "anti_csrf_token",
            "got bytes; pass a str or None",
            id="anti-csrf-bytes",
        ),
        pytest.param(
            lambda: calls.update_session_data("h", {}, 0),
            "expected_version",
            "from 1 to 2**63 - 1",
            id="version-zero",
        ),
        pytest.param(
            lambda: calls.merge_session_data("h", {}, True),
            "expected_version",
            "got bool",
            id="version-bool",
        ),
        pytest.param(
            lambda: calls.create_new_session(
                "u",
                None,
                calls.NOT_GIVEN,
                {"label": "phone"},  # type: ignore[arg-type]
            ),
            "device",
            "pass a sessiond.DeviceInfo",
            id="device-dict",
        ),
        pytest.param(
            lambda: calls.get_session_data_versioned(7),  # type: ignore[arg-type]
            "handle",
            "pass a str",
            id="handle-int",
        ),
        pytest.param(
            lambda: calls.create_new_session(
                "u",
                None,
                calls.NOT_GIVEN,
                sessiond.DeviceInfo(label=5),  # type: ignore[arg-type]
            ),
            "device.label",
            "pass a str",
            id="device-label-int",
        ),
    ],
)
def test_wrong_type_names_argument(build: Any, field: str, expected: str) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        build()

    assert raised.value.field == field
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("target", 5),
        ("target", "127.0.0.1:1\ud800"),
        ("connections", "2"),
        ("connections", True),
        ("local_cache_size", 1.5),
        ("api_key", 5),
        ("timeout", "1"),
        ("timeout", None),
        ("retries", "1"),
        ("retries", None),
        ("retries", 1.5),
        ("retry_backoff_s", "1"),
        ("retry_backoff_s", None),
        ("retry_backoff_max_s", float("inf")),
    ],
)
def test_client_setting_wrong_type_rejected(setting: str, value: Any) -> None:
    arguments: dict[str, Any] = {"target": "127.0.0.1:1", setting: value}
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        sessiond.SessionClient(**arguments)

    assert raised.value.field == setting


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("connections", "SECRET123"),
        ("connections", 10**20 + 123),
        ("local_cache_size", "SECRET123"),
        ("local_cache_size", -123),
        ("timeout", "SECRET123"),
        ("timeout", 123456.0),
        ("retries", "SECRET123"),
        ("retries", -123),
        ("retry_backoff_s", "SECRET123"),
        ("retry_backoff_s", -123.5),
        ("retry_backoff_max_s", "SECRET123"),
        ("retry_backoff_max_s", 123456.0),
    ],
)
def test_client_setting_message_omits_value(setting: str, value: Any) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        sessiond.SessionClient("127.0.0.1:1", **{setting: value})

    assert raised.value.field == setting
    assert str(value) not in raised.value.message
    assert "123" not in raised.value.message


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [
        pytest.param("SECRET123-0123456789\n", "strip the key", id="newline"),
        pytest.param("SECRET123-0123456789\r\n", "strip the key", id="crlf"),
        pytest.param(" SECRET123-0123456789", "strip the key", id="leading-space"),
        pytest.param("SECRET123-0123\n456789", "printable ASCII", id="inner-newline"),
        pytest.param("SECRET123-0123\x00456789", "printable ASCII", id="nul"),
        pytest.param("SECRET123-0123\t456789", "printable ASCII", id="tab"),
        pytest.param("SECRET123-0123é456789", "printable ASCII", id="non-ascii"),
        pytest.param("SECRET123-0123\ud800456789", "printable ASCII", id="surrogate"),
        pytest.param(b"SECRET123-0123456789", "got bytes", id="bytes"),
        pytest.param(["SECRET123-0123456789"], "got list", id="list"),
        pytest.param(5, "got int", id="int"),
    ],
)
def test_bad_api_key_rejected(api_key: Any, expected: str) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        sessiond.SessionClient("127.0.0.1:1", api_key=api_key)

    assert raised.value.field == "api_key"
    assert expected in raised.value.message
    assert "SECRET123" not in raised.value.message
    assert "SECRET123" not in repr(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None


def test_api_key_printable_ascii_bounds() -> None:
    for api_key in (None, "", "k" * 16, "~ !0123456789abcdef"):
        sessiond.SessionClient("127.0.0.1:1", api_key=api_key).close()

    for outside in ("\x1f", "\x7f"):
        with pytest.raises(sessiond.InvalidArgumentError) as raised:
            sessiond.SessionClient("127.0.0.1:1", api_key=f"0123{outside}456789")
        assert raised.value.field == "api_key"


# -- what messages may contain -------------------------------------------------------

# Values carry this marker so that a test can check messages never echo them.
SECRET = "do-not-echo-4111-1111"
# A lone surrogate: a str can hold it, but UTF-8 cannot encode it.
SURROGATE_TEXT = SECRET + "\ud800"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            lambda: calls.create_new_session(SURROGATE_TEXT, None, None, None),
            "user_id",
            id="user-id",
        ),
        pytest.param(
            lambda: calls.create_new_session("u", {"k": SURROGATE_TEXT}, None, None),
            "access_token_payload",
            id="create-payload",
        ),
        pytest.param(
            lambda: calls.create_new_session("u", None, {SURROGATE_TEXT: 1}, None),
            "session_data",
            id="create-data-key",
        ),
        pytest.param(
            lambda: calls.create_new_session(
                "u", None, None, sessiond.DeviceInfo(user_agent=SURROGATE_TEXT)
            ),
            "device.user_agent",
            id="device-user-agent",
        ),
        pytest.param(
            lambda: calls.get_session(SURROGATE_TEXT, None, False),
            "access_token",
            id="access-token",
        ),
        pytest.param(
            lambda: calls.get_session("t", SURROGATE_TEXT, False),
            "anti_csrf_token",
            id="anti-csrf-token",
        ),
        pytest.param(
            lambda: calls.refresh_session(SURROGATE_TEXT),
            "refresh_token",
            id="refresh-token",
        ),
        pytest.param(
            lambda: calls.regenerate_access_token("t", {"k": SURROGATE_TEXT}),
            "access_token_payload",
            id="regenerate-payload",
        ),
        pytest.param(
            lambda: calls.update_access_token_payload("h", {"k": SURROGATE_TEXT}),
            "access_token_payload",
            id="update-payload",
        ),
        pytest.param(
            lambda: calls.revoke_sessions(["h", SURROGATE_TEXT]),
            "handles[1]",
            id="handles",
        ),
        pytest.param(
            lambda: calls.list_sessions(SURROGATE_TEXT),
            "user_id",
            id="list-user-id",
        ),
        pytest.param(
            lambda: calls.get_session_data_versioned(SURROGATE_TEXT),
            "handle",
            id="handle",
        ),
        pytest.param(
            lambda: calls.update_session_data("h", {"card": SURROGATE_TEXT}, None),
            "session_data",
            id="update-data",
        ),
        pytest.param(
            lambda: calls.merge_session_data("h", [SURROGATE_TEXT], 1),
            "patch",
            id="merge-patch",
        ),
    ],
)
def test_lone_surrogate_names_argument(build: Any, field: str) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        build()

    message = str(raised.value)
    assert SECRET not in message
    assert raised.value.field == field
    assert message.startswith(f"invalid {field}: ")
    assert "lone surrogate" in message
    assert "U+D800 to U+DFFF" in message


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: calls.refresh_session([SECRET]), id="token-list"),
        pytest.param(lambda: calls.get_session_info({SECRET: 1}), id="handle-dict"),
        pytest.param(lambda: calls.revoke_sessions([SECRET, 7]), id="handles-item"),
        pytest.param(
            lambda: calls.update_session_data("h", {"k": SECRET}, SECRET),
            id="version-str",
        ),
    ],
)
def test_wrong_type_message_omits_value(build: Any) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        build()

    assert SECRET not in str(raised.value)


def invalid_argument_from_daemon(field: str, message: str) -> grpc.RpcError:
    """The error the daemon sends for an invalid request field."""
    code = grpc.StatusCode.INVALID_ARGUMENT
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason="INVALID_ARGUMENT", domain="sessiond", metadata={"field": field}
        )
    )
    # rpc_status reads the details only when their code and message match the call's.
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_error(code, message, ((DETAILS_KEY, status.SerializeToString()),))


@pytest.mark.parametrize(
    ("field", "argument"),
    [
        ("session_handle", "handle"),
        ("session_handles[3]", "handles[3]"),
        ("expected_data_version", "expected_version"),
        ("session_data", "session_data"),
        ("device.ip_address", "device.ip_address"),
    ],
)
def test_daemon_field_renamed_to_argument(field: str, argument: str) -> None:
    error = invalid_argument_from_daemon(field, f"invalid {field}: is not valid")
    attempts = RetryPolicy().attempts(idempotent=True)

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        attempts.wait_after(error)

    assert raised.value.field == argument
    assert str(raised.value) == f"invalid {argument}: is not valid"
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
