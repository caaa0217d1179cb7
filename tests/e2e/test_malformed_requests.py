"""Requests whose bytes do not parse, sent to a real daemon by a raw gRPC client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond_testing import DaemonProcess, metric_value, scrape_metrics

import sessiond
from sessiond.errors import from_rpc_error
from sessiond.v1 import session_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["SessionService"]
# A varint that never ends: no message type parses it.
GARBAGE = b"\xff\xff\xff\xff\xff"
# Field 1, length-delimited, announces 16 bytes but 3 follow.
TRUNCATED = b"\x0a\x10abc"
# "\xc3(" is a UTF-8 lead byte followed by a byte that cannot continue it.
BAD_UTF8 = b"\xc3("
BURST = 50
# The daemon logs malformed requests at most once per this many seconds.
LOG_INTERVAL_S = 10.0
API_KEY = "key-a-0123456789abcdef"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'malformed.db'}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bad_utf8_request(method: MethodDescriptor) -> bytes | None:
    """Return a request whose first string field is invalid UTF-8, or None when it has none."""
    for field in method.input_type.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            tag = _varint(field.number << 3 | 2)
            return tag + _varint(len(BAD_UTF8)) + BAD_UTF8
    return None


def _call_raw(
    channel: grpc.Channel,
    method: MethodDescriptor,
    request: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.RpcError:
    """Send request bytes as they are and return the error the daemon sent."""
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(request, timeout=10, metadata=metadata):
                pass
        else:
            channel.unary_unary(path)(request, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{method.name} accepted {request!r}")


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no status details in {error}"
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def _assert_malformed(
    error: grpc.RpcError, method: MethodDescriptor, field: str = ""
) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, method.name  # type: ignore[attr-defined]
    details = error.details()  # type: ignore[attr-defined]
    assert (
        f"request is not a valid {method.input_type.full_name} protobuf message"
        in details
    )
    assert "stubs or request serializer" in details
    info = _error_info(error)
    assert info.reason == "MALFORMED_REQUEST"
    assert info.domain == "sessiond"
    assert dict(info.metadata) == {"field": field}


def _malformed_warnings(daemon: DaemonProcess) -> list[str]:
    return [
        line
        for line in daemon.log().splitlines()
        if "level=WARNING" in line and "malformed request rejected" in line
    ]


@pytest.fixture
def channel(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str
) -> Iterator[tuple[DaemonProcess, grpc.Channel]]:
    daemon = start_daemon(sqlite_url)
    with grpc.insecure_channel(daemon.address) as opened:
        yield daemon, opened


def test_every_method_rejects_malformed(
    channel: tuple[DaemonProcess, grpc.Channel],
) -> None:
    daemon, opened = channel
    for method in SERVICE.methods:
        requests = {"garbage": GARBAGE, "truncated": TRUNCATED}
        bad_utf8 = _bad_utf8_request(method)
        if bad_utf8 is not None:
            requests["bad UTF-8"] = bad_utf8
        for kind, request in requests.items():
            error = _call_raw(opened, method, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (  # type: ignore[attr-defined]
                f"{method.name} with a {kind} request"
            )
            _assert_malformed(error, method)
    assert "Traceback" not in daemon.log()
    assert "Exception deserializing" not in daemon.log()


def test_malformed_writes_leave_data_unchanged(
    channel: tuple[DaemonProcess, grpc.Channel],
) -> None:
    daemon, opened = channel
    with daemon.client() as client:
        session = client.create_new_session("malformed-writes", None, {"k": 1})
    method = SERVICE.methods_by_name["UpdateSessionData"]
    valid = pb.UpdateSessionDataRequest(
        session_handle=session.handle, session_data_json='{"k": 2}'
    ).SerializeToString()
    # The handle and the new data both come first, so each request names a
    # real session and would overwrite its data if the daemon read it.
    data_field = _varint(2 << 3 | 2)
    requests = {
        "truncated": valid[:-1],
        "bad UTF-8 data": valid.split(data_field)[0]
        + data_field
        + _varint(len(BAD_UTF8))
        + BAD_UTF8,
    }

    for kind, request in requests.items():
        error = _call_raw(opened, method, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, kind  # type: ignore[attr-defined]
        _assert_malformed(error, method)

    with daemon.client() as client:
        assert client.get_session_data_versioned(session.handle) == (
            sessiond.SessionData({"k": 1}, 1)
        )


def test_malformed_burst_logs_once(
    channel: tuple[DaemonProcess, grpc.Channel],
) -> None:
    daemon, opened = channel
    verify = SERVICE.methods_by_name["VerifySession"]
    started = time.monotonic()
    for index in range(BURST):
        request = GARBAGE if index % 2 else TRUNCATED
        _assert_malformed(_call_raw(opened, verify, request), verify)
    elapsed_s = time.monotonic() - started

    warnings = _malformed_warnings(daemon)
    assert warnings, daemon.log()
    # One line per started interval: a slow machine may cross into a second.
    assert len(warnings) <= 1 + int(elapsed_s // LOG_INTERVAL_S), warnings
    assert "method=VerifySession peer=ipv4:127.0.0.1:" in warnings[0]
    assert " failures=1 " in warnings[0]
    assert "Traceback" not in daemon.log()
    assert "Exception deserializing" not in daemon.log()
    assert not [line for line in daemon.log().splitlines() if "level=ERROR" in line]

    with daemon.client() as client:
        session = client.create_new_session("user-after-burst")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        verified = client.get_session(
            session.access_token.value, session.anti_csrf_token.value
        )
    assert verified.user_id == "user-after-burst"


def test_client_maps_malformed_to_invalid_argument(
    channel: tuple[DaemonProcess, grpc.Channel],
) -> None:
    _, opened = channel
    error = _call_raw(opened, SERVICE.methods_by_name["CreateSession"], GARBAGE)
    mapped = from_rpc_error(error)
    assert isinstance(mapped, sessiond.InvalidArgumentError)
    assert mapped.code == grpc.StatusCode.INVALID_ARGUMENT
    assert mapped.field == ""
    assert "sessiond.v1.CreateSessionRequest" in mapped.message


def test_malformed_names_field_pure_python_protobuf(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str
) -> None:
    # The pure-Python protobuf runtime names the field that is not UTF-8,
    # and the upb runtime (the default) does not.
    daemon = start_daemon(
        sqlite_url, env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    )
    create = SERVICE.methods_by_name["CreateSession"]
    # Field 4 (device) contains a DeviceInfo whose field 1 (user_agent) is not UTF-8.
    device = b"\x0a" + _varint(len(BAD_UTF8)) + BAD_UTF8
    request = b"\x0a\x06user-1\x22" + _varint(len(device)) + device
    with grpc.insecure_channel(daemon.address) as opened:
        error = _call_raw(opened, create, request)
    _assert_malformed(error, create, field="device.user_agent")
    assert "field device.user_agent is not valid UTF-8" in error.details()  # type: ignore[attr-defined]
    assert "Traceback" not in daemon.log()


def _scrape_calls(daemon: DaemonProcess, code: str, method: str) -> float:
    sample = f'sessiond_grpc_calls_total{{code="{code}",method="{method}"}}'
    return metric_value(scrape_metrics(daemon), sample)


def test_malformed_counted_and_key_checked(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str
) -> None:
    daemon = start_daemon(sqlite_url, api_keys=API_KEY, metrics_listen="127.0.0.1:0")
    verify = SERVICE.methods_by_name["VerifySession"]
    with grpc.insecure_channel(daemon.address) as opened:
        anonymous = _call_raw(opened, verify, GARBAGE)
        keyed = [
            _call_raw(opened, verify, GARBAGE, metadata=(("x-api-key", API_KEY),))
            for _ in range(3)
        ]
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert _error_info(anonymous).reason == "INVALID_API_KEY"
    for error in keyed:
        _assert_malformed(error, verify)
    assert _scrape_calls(daemon, "INVALID_ARGUMENT", "VerifySession") == 3
    assert _scrape_calls(daemon, "UNAUTHENTICATED", "VerifySession") == 1


def test_oversized_request_resource_exhausted(
    channel: tuple[DaemonProcess, grpc.Channel],
) -> None:
    # grpc core rejects a message above grpc.max_receive_message_length
    # before any daemon code runs, so the status has no ErrorInfo.
    daemon, opened = channel
    request = pb.VerifySessionRequest(access_token="a" * (5 * 1024 * 1024))
    error = _call_raw(
        opened, SERVICE.methods_by_name["VerifySession"], request.SerializeToString()
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "larger than max" in error.details()  # type: ignore[attr-defined]
    assert "Traceback" not in daemon.log()
    with daemon.client() as client:
        assert client.create_new_session("user-after-oversized").handle
