"""Tests of the input checks: user ids, session handles, JSON text and payloads.

Every rejection must be an InvalidArgumentError whose ``field`` names the
input, because callers read that attribute to find what to fix.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond_server.errors import InvalidArgumentError
from sessiond_server.validation import (
    MAX_DEVICE_LABEL_BYTES,
    MAX_IP_ADDRESS_BYTES,
    MAX_USER_AGENT_BYTES,
    MAX_USER_ID_BYTES,
    RESERVED_CLAIMS,
    Device,
    check_device,
    check_expected_version,
    check_handle,
    check_user_id,
    dump_json,
    parse_json,
    parse_payload,
)

LARGE = 10 * 1024 * 1024


# -- user ids -----------------------------------------------------------------


def test_user_id_empty_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_user_id("")

    assert raised.value.field == "user_id"


def test_user_id_custom_field_named() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_user_id("", field="owner")

    assert raised.value.field == "owner"


def test_user_id_one_character_accepted() -> None:
    assert check_user_id("1") == "1"


def test_user_id_255_bytes_accepted() -> None:
    # "é" is two bytes of UTF-8, so 127 of them and one "a" make 255 bytes.
    user_id = "é" * 127 + "a"
    assert len(user_id.encode("utf-8")) == MAX_USER_ID_BYTES

    assert check_user_id(user_id) == user_id


def test_user_id_256_bytes_rejected() -> None:
    # 128 characters is far below 255, but 256 bytes of UTF-8.
    user_id = "é" * 128
    assert len(user_id.encode("utf-8")) == MAX_USER_ID_BYTES + 1

    with pytest.raises(InvalidArgumentError) as raised:
        check_user_id(user_id)

    assert raised.value.field == "user_id"


def test_user_id_four_byte_characters() -> None:
    # "😀" is four bytes of UTF-8: 63 of them and three "a" are 255 bytes.
    accepted = "😀" * 63 + "aaa"
    rejected = "😀" * 64

    assert check_user_id(accepted) == accepted
    with pytest.raises(InvalidArgumentError) as raised:
        check_user_id(rejected)
    assert raised.value.field == "user_id"


def test_user_id_lone_surrogate_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_user_id("bob\ud800")

    assert raised.value.field == "user_id"


# -- session handles ----------------------------------------------------------


def test_handle_uuid4_accepted() -> None:
    handle = str(uuid.uuid4())

    assert check_handle(handle) == handle


BAD_HANDLES = [
    pytest.param(str(uuid.uuid4()).upper(), id="uppercase"),
    pytest.param(str(uuid.uuid1()), id="version-1"),
    pytest.param(str(uuid.UUID(int=0)), id="nil"),
    pytest.param(str(uuid.uuid4())[:-1], id="too-short"),
    pytest.param(str(uuid.uuid4()) + "0", id="too-long"),
    pytest.param(uuid.uuid4().hex, id="no-dashes"),
    pytest.param("{" + str(uuid.uuid4()) + "}", id="braces"),
    pytest.param(str(uuid.uuid4()) + "\n", id="trailing-newline"),
    pytest.param("' OR '1'='1", id="sql-text"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("handle", BAD_HANDLES)
def test_handle_bad_form_rejected(handle: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_handle(handle)

    assert raised.value.field == "session_handle"


def test_handle_custom_field_named() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_handle("x", field="session_handles[3]")

    assert raised.value.field == "session_handles[3]"


# -- parse_json ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["NaN", "Infinity", "-Infinity", "[NaN]", '{"a": Infinity}', "1e400", "-1e400"],
)
def test_parse_json_non_finite_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(text, "session_data", LARGE)

    assert raised.value.field == "session_data"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        pytest.param('{"card": 4111111111111111e999}', 9, id="exponent"),
        pytest.param("[-4111111111111111.5E+999]", 1, id="negative"),
        pytest.param(
            '["4111111111111111e999 \\" 9e999", 1.5, 4111111111111111e999]',
            39,
            id="after-string",
        ),
        pytest.param(
            "[" + "9" * 400 + ", 4111111111111111e999]",
            403,
            id="after-long-integer",
        ),
    ],
)
def test_parse_json_double_overflow_not_echoed(text: str, position: int) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(text, "session_data", LARGE)

    assert raised.value.field == "session_data"
    assert "out of the range of a double" in raised.value.message
    assert f"at position {position};" in raised.value.message
    assert "4111111111111111" not in raised.value.message
    assert "e999" not in raised.value.message.lower()


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a': 1}", "undefined", "1 2"])
def test_parse_json_malformed_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(text, "session_data", LARGE)

    assert raised.value.field == "session_data"


def test_parse_json_big_integers_exact() -> None:
    big = 2**64 + 1
    huge = -(10**40) - 7

    parsed = parse_json(f"[{big}, {huge}]", "session_data", LARGE)

    assert parsed == [big, huge]
    assert dump_json(parsed) == f"[{big},{huge}]"


@pytest.mark.parametrize("sign", ["", "-"])
def test_parse_json_integer_digit_limit(sign: str) -> None:
    limit = sys.get_int_max_str_digits()
    longest = sign + "9" * limit

    assert parse_json(longest, "session_data", LARGE) == int(longest)
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(f"[{longest}1]", "session_data", LARGE)

    assert raised.value.field == "session_data"
    assert f"{limit + 1} digits" in raised.value.message
    assert "as a string" in raised.value.message
    assert "sys." not in raised.value.message


def test_parse_json_limit_counts_utf8_bytes() -> None:
    # Five characters, but each "é" is two bytes: 8 bytes in all.
    text = '"ééé"'

    assert parse_json(text, "session_data", 8) == "ééé"
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(text, "session_data", 7)
    assert raised.value.field == "session_data"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100_000, id="open-arrays"),
        pytest.param("{" + '"a":{' * 100_000, id="open-objects"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="closed-arrays"),
    ],
)
def test_parse_json_deep_nesting_rejected(text: str) -> None:
    # An escaped RecursionError would reach the caller as a GeneralError, so
    # parse_json must turn it into InvalidArgumentError.
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(text, "session_data", LARGE)

    assert raised.value.field == "session_data"
    assert "too deeply" in raised.value.message
    assert "recursion" not in raised.value.message


# -- parse_payload ------------------------------------------------------------


@pytest.mark.parametrize("text", ["[]", "null", "1", '"text"', "true", "[{}]"])
def test_payload_non_object_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_payload(text, "access_token_payload", LARGE)

    assert raised.value.field == "access_token_payload"


@pytest.mark.parametrize("claim", sorted(RESERVED_CLAIMS))
def test_payload_reserved_claim_rejected(claim: str) -> None:
    text = json.dumps({"role": "reader", claim: "x"})

    with pytest.raises(InvalidArgumentError) as raised:
        parse_payload(text, "access_token_payload", LARGE)

    assert raised.value.field == "access_token_payload"
    assert claim in raised.value.message


def test_payload_nested_reserved_name_accepted() -> None:
    # Only top-level names become claims, so a nested "sub" is harmless.
    payload = parse_payload('{"profile": {"sub": "x"}}', "p", LARGE)

    assert payload == {"profile": {"sub": "x"}}


def test_payload_over_limit_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_payload('{"a": "bcd"}', "access_token_payload", 5)

    assert raised.value.field == "access_token_payload"


# -- round trip ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def assert_same_json(actual: Any, expected: Any) -> None:
    assert actual == expected
    # == treats -0.0 and 0.0 (and 1 and 1.0) as equal, but the JSON text
    # distinguishes them.
    assert json.dumps(actual) == json.dumps(expected)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_round_trip_unchanged(value: Any) -> None:
    text = dump_json(value)

    assert_same_json(parse_json(text, "session_data", LARGE), value)


def test_dump_json_lone_surrogate_escaped() -> None:
    value = parse_json('{"a":"\\ud800","b":"é"}', "session_data", LARGE)

    text = dump_json(value)

    assert text == '{"a":"\\ud800","b":"\\u00e9"}'
    assert text.encode("utf-8")
    assert parse_json(text, "session_data", LARGE) == value


# -- device details and expected versions -------------------------------------

BAD_DEVICES = [
    pytest.param(
        Device(user_agent="a" * (MAX_USER_AGENT_BYTES + 1)),
        "device.user_agent",
        id="user-agent-too-long",
    ),
    pytest.param(
        Device(user_agent="é" * (MAX_USER_AGENT_BYTES // 2 + 1)),
        "device.user_agent",
        id="user-agent-bytes-not-characters",
    ),
    pytest.param(Device(user_agent="\ud800"), "device.user_agent", id="ua-surrogate"),
    pytest.param(
        Device(label="a" * (MAX_DEVICE_LABEL_BYTES + 1)),
        "device.label",
        id="label-too-long",
    ),
    pytest.param(Device(ip_address="localhost"), "device.ip_address", id="ip-name"),
    pytest.param(Device(ip_address="256.1.1.1"), "device.ip_address", id="ip-range"),
    pytest.param(Device(ip_address="01.2.3.4"), "device.ip_address", id="ip-zero"),
    pytest.param(Device(ip_address=" 1.2.3.4"), "device.ip_address", id="ip-space"),
    pytest.param(Device(ip_address="1.2.3.4/32"), "device.ip_address", id="ip-cidr"),
    pytest.param(
        Device(ip_address="1" * (MAX_IP_ADDRESS_BYTES + 1)),
        "device.ip_address",
        id="ip-too-long",
    ),
]


@pytest.mark.parametrize(("device", "field"), BAD_DEVICES)
def test_device_bad_field_rejected(device: Device, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_device(device)

    assert raised.value.field == field


def test_device_limits_accepted() -> None:
    device = Device(
        user_agent="a" * MAX_USER_AGENT_BYTES,
        ip_address="203.0.113.7",
        label="é" * (MAX_DEVICE_LABEL_BYTES // 2),
    )

    assert check_device(device) == device


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::1", "::1"),
        ("192.0.2.1", "192.0.2.1"),
        ("", ""),
    ],
)
def test_device_ip_address_canonical(given: str, canonical: str) -> None:
    assert check_device(Device(ip_address=given)).ip_address == canonical


@pytest.mark.parametrize("version", [0, -1, -(2**63)])
def test_expected_version_below_one_rejected(version: int) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_expected_version(version)

    assert raised.value.field == "expected_data_version"


@pytest.mark.parametrize("version", [-4111111111111111, -(2**63)])
def test_expected_version_not_echoed(version: int) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_expected_version(version)

    assert raised.value.field == "expected_data_version"
    assert str(version) not in raised.value.message
    assert str(-version) not in raised.value.message
    assert "start at 1" in raised.value.message


@pytest.mark.parametrize("version", [None, 1, 2**63 - 1])
def test_expected_version_accepted(version: int | None) -> None:
    assert check_expected_version(version) == version
