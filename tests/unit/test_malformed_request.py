"""The error for request bytes that do not parse, from each protobuf runtime's exception."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from sessiond.v1 import session_pb2 as pb
from sessiond_server.service import malformed_request_error


def _unicode_error(reason: str) -> UnicodeDecodeError:
    return UnicodeDecodeError("utf-8", b"\xc3(", 0, 1, reason)


def test_upb_decode_error_cause() -> None:
    error = malformed_request_error(
        pb.VerifySessionRequest.DESCRIPTOR,
        DecodeError(
            "Error parsing message with type 'sessiond.v1.VerifySessionRequest': "
            "Wire format was corrupt"
        ),
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "MALFORMED_REQUEST"
    assert error.metadata() == {"field": ""}
    assert error.message.startswith(
        "request is not a valid sessiond.v1.VerifySessionRequest protobuf message "
        "(Wire format was corrupt). Check "
    )


def test_pure_python_decode_error_cause() -> None:
    error = malformed_request_error(
        pb.GetJwksRequest.DESCRIPTOR, DecodeError("Truncated message.")
    )
    assert "(Truncated message)" in error.message
    assert error.metadata() == {"field": ""}


def test_unicode_error_names_nested_field() -> None:
    error = malformed_request_error(
        pb.CreateSessionRequest.DESCRIPTOR,
        _unicode_error(
            "invalid continuation byte in field: sessiond.v1.DeviceInfo.user_agent"
        ),
    )
    assert error.metadata() == {"field": "device.user_agent"}
    assert "(field device.user_agent is not valid UTF-8)" in error.message


def test_unicode_error_names_top_level_field() -> None:
    error = malformed_request_error(
        pb.VerifySessionRequest.DESCRIPTOR,
        _unicode_error(
            "invalid start byte in field: sessiond.v1.VerifySessionRequest.access_token"
        ),
    )
    assert error.metadata() == {"field": "access_token"}


def test_unicode_error_unknown_field() -> None:
    for reason in (
        "invalid start byte",
        "invalid start byte in field: sessiond.v1.DeviceInfo.user_agent",
    ):
        error = malformed_request_error(
            pb.VerifySessionRequest.DESCRIPTOR, _unicode_error(reason)
        )
        assert error.metadata() == {"field": ""}, reason
        assert "(a string field is not valid UTF-8)" in error.message, reason


def test_message_never_quotes_bytes() -> None:
    error = malformed_request_error(
        pb.VerifySessionRequest.DESCRIPTOR, _unicode_error("invalid start byte")
    )
    assert "0xc3" not in error.message
    assert "\\xc3" not in error.message
