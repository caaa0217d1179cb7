"""Checks of caller input, run before anything reaches storage.

Each check raises InvalidArgumentError naming the field and the rule, so a
rejected call changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError

MAX_USER_ID_BYTES = 255
MAX_HANDLES_PER_CALL = 1000
# The binary columns of the device fields in the sessions table are this wide.
MAX_USER_AGENT_BYTES = 512
MAX_IP_ADDRESS_BYTES = 64
MAX_DEVICE_LABEL_BYTES = 255
# Claims sessiond itself writes into every access token. A payload that
# contains one is rejected, because it would override the daemon's value.
RESERVED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "sid",
        "rth",
        "prth",
        "csrf",
        "kid",
    }
)
_HANDLE_PATTERN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def check_user_id(user_id: str, field: str = "user_id") -> str:
    if not user_id:
        raise InvalidArgumentError(field, "must not be empty")
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(field, "must be valid UTF-8 text") from None
    if size > MAX_USER_ID_BYTES:
        raise InvalidArgumentError(
            field, f"is {size} bytes of UTF-8; the maximum is {MAX_USER_ID_BYTES}"
        )
    return user_id


def _check_text_bytes(text: str, field: str, max_bytes: int) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(field, "must be valid UTF-8 text") from None
    if size > max_bytes:
        raise InvalidArgumentError(
            field, f"is {size} bytes of UTF-8; the maximum is {max_bytes}"
        )


@dataclass(frozen=True)
class Device:
    """The checked device details of a new session; an empty string means unknown."""

    user_agent: str = ""
    ip_address: str = ""
    label: str = ""


def check_device(device: Device, field: str = "device") -> Device:
    """Check the device fields and return them, with the IP address in canonical form."""
    _check_text_bytes(device.user_agent, f"{field}.user_agent", MAX_USER_AGENT_BYTES)
    _check_text_bytes(device.label, f"{field}.label", MAX_DEVICE_LABEL_BYTES)
    canonical_ip = ""
    if device.ip_address:
        _check_text_bytes(
            device.ip_address, f"{field}.ip_address", MAX_IP_ADDRESS_BYTES
        )
        try:
            canonical_ip = str(ipaddress.ip_address(device.ip_address))
        except ValueError:
            raise InvalidArgumentError(
                f"{field}.ip_address",
                "is not an IPv4 or IPv6 address; send an address such as "
                "203.0.113.7 or 2001:db8::7, or leave it empty",
            ) from None
    return Device(
        user_agent=device.user_agent, ip_address=canonical_ip, label=device.label
    )


def check_expected_version(
    version: int | None, field: str = "expected_data_version"
) -> int | None:
    if version is not None and version < 1:
        raise InvalidArgumentError(
            field,
            "is below 1, but data versions start at 1; pass the data_version "
            "that GetSessionData returned, or leave it unset",
        )
    return version


def check_handle(handle: str, field: str = "session_handle") -> str:
    if _HANDLE_PATTERN.fullmatch(handle) is None:
        raise InvalidArgumentError(
            field, "is not a session handle; pass the handle a session call returned"
        )
    return handle


def check_handles(handles: list[str], field: str = "session_handles") -> list[str]:
    if len(handles) > MAX_HANDLES_PER_CALL:
        raise InvalidArgumentError(
            field,
            f"has {len(handles)} entries; send at most {MAX_HANDLES_PER_CALL} per call",
        )
    for index, handle in enumerate(handles):
        check_handle(handle, f"{field}[{index}]")
    return handles


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DoubleOverflowError(ValueError):
    """A JSON number with a fraction or an exponent that is too large for a double."""


# A JSON string or number. Outside strings, digits occur only in numbers, so
# in text that parsed up to some point this finds the numbers before it.
_STRING_OR_NUMBER = re.compile(
    r'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?', re.DOTALL
)


def _parse_finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # The parser does not pass the position, and the text may be
        # session data, so the message must not quote it.
        raise _DoubleOverflowError
    return value


def _double_overflow_position(text: str) -> int | None:
    """Return the index of the first number that overflows a double when parsed as one.

    Integers are skipped, because parse_json reads them as ints of full
    precision.
    """
    for match in _STRING_OR_NUMBER.finditer(text):
        token = match.group()
        if token.startswith('"') or not any(mark in token for mark in ".eE"):
            continue
        if math.isinf(float(token)):
            return match.start()
    return None


class _JsonLimitError(ValueError):
    """Valid JSON that goes past a limit of the parser, with a message for the caller."""


def _parse_bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    limit = sys.get_int_max_str_digits()
    if limit and digits > limit:
        raise _JsonLimitError(
            f"contains an integer of {digits} digits; the maximum is {limit} digits, "
            "so send a longer number as a string"
        )
    return int(text)


def parse_json(text: str, field: str, max_bytes: int) -> Any:
    """Parse strict JSON text of at most max_bytes UTF-8 bytes.

    NaN, Infinity and numbers that overflow a double are rejected, because
    they would not come back as the same JSON. Integers keep full precision,
    up to the interpreter's limit on integer digits (4300 by default).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgumentError(
            field, f"is {size} bytes; the maximum is {max_bytes} bytes"
        )
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_finite_float,
            parse_int=_parse_bounded_int,
        )
    except _JsonLimitError as exc:
        raise InvalidArgumentError(field, str(exc)) from None
    except _DoubleOverflowError:
        position = _double_overflow_position(text)
        where = "" if position is None else f" at position {position}"
        raise InvalidArgumentError(
            field,
            f"contains a number out of the range of a double{where}; send a "
            "number that large as a string",
        ) from None
    except RecursionError:
        # The parser recurses once per level, so the interpreter's recursion
        # limit (1000 by default, less the frames already in use) bounds it.
        raise InvalidArgumentError(
            field,
            "nests arrays and objects too deeply for the parser (the limit is "
            "near 900 levels); flatten the value",
        ) from None
    except ValueError as exc:
        # The remaining errors name the rule broken and the position, or one
        # of the constants NaN, Infinity and -Infinity, but never the text.
        raise InvalidArgumentError(field, f"is not valid JSON: {exc}") from None


def parse_payload(text: str, field: str, max_bytes: int) -> dict[str, Any]:
    """Parse an access token payload: a JSON object without reserved claims."""
    payload = parse_json(text, field, max_bytes)
    if not isinstance(payload, dict):
        raise InvalidArgumentError(
            field, f"must be a JSON object, not a JSON {json_type_name(payload)}"
        )
    reserved = sorted(RESERVED_CLAIMS.intersection(payload))
    if reserved:
        raise InvalidArgumentError(
            field,
            f"contains claim names that sessiond sets itself: {', '.join(reserved)}",
        )
    return payload


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def dump_json(value: Any) -> str:
    """Serialise a parsed JSON value compactly, keeping non-ASCII text as is.

    JSON text may escape a lone UTF-16 surrogate ("\\ud800"), which parses to
    a str that UTF-8 cannot encode. Such a value is serialised with every
    non-ASCII character escaped, so the result can always be stored as UTF-8.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text
