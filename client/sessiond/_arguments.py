"""Checks of the arguments of client calls, made while building their requests.

An invalid argument raises InvalidArgumentError whose ``field`` is the
argument's name in the SDK, such as ``handle`` for the request field
``session_handle``. Messages describe a value by its type and never
contain it, because arguments carry tokens, session data and payloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import InvalidArgumentError, SessionError

# Request fields whose SDK argument has another name.
_ARGUMENT_NAMES = {
    "session_handle": "handle",
    "session_handles": "handles",
    "expected_data_version": "expected_version",
    "access_token_payload_json": "access_token_payload",
    "session_data_json": "session_data",
    "patch_json": "patch",
}
_INT64_RANGE = (-(2**63), 2**63 - 1, "an int from -(2**63) to 2**63 - 1")
# The values the daemon accepts in int64 request fields, with the text that
# states them. Data versions start at 1.
_INT_RANGES = {"expected_data_version": (1, 2**63 - 1, "an int from 1 to 2**63 - 1")}


def argument_name(field: str) -> str:
    """Return the SDK argument name of a request field, keeping an index: ``handles[2]``."""
    name, bracket, index = field.partition("[")
    return _ARGUMENT_NAMES.get(name, name) + bracket + index


def with_argument_names(error: SessionError) -> SessionError:
    """Return a daemon's InvalidArgumentError with the request field renamed to the SDK argument.

    The daemon names request fields, as in ``invalid session_handle: ...``,
    so both the field and the start of the message get the argument name.
    Other errors are returned unchanged.
    """
    if not isinstance(error, InvalidArgumentError):
        return error
    argument = argument_name(error.field)
    if argument == error.field:
        return error
    message = error.message
    prefix = f"invalid {error.field}:"
    if message.startswith(prefix):
        message = f"invalid {argument}:{message.removeprefix(prefix)}"
    return InvalidArgumentError(message, field=argument, code=error.code)


def wrong_type_error(argument: str, value: Any, expected: str) -> InvalidArgumentError:
    """Return the error for an argument of the wrong type, which names only the type."""
    kind = "None" if value is None else type(value).__name__
    return InvalidArgumentError(
        f"invalid {argument}: got {kind}; pass {expected}", field=argument
    )


def check_text(value: Any, argument: str, *, optional: bool = False) -> None:
    """Raise InvalidArgumentError unless value is a str that UTF-8 can encode.

    Protobuf would silently store bytes as text, and would raise a
    UnicodeEncodeError that names no field on a lone surrogate. With
    optional, None passes.
    """
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise wrong_type_error(
            argument, value, "a str or None" if optional else "a str"
        )
    # ASCII text always encodes, so most text skips the encode.
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"invalid {argument}: contains a lone surrogate (a code point from "
            "U+D800 to U+DFFF), which is not valid Unicode; remove or replace "
            "each surrogate before the call",
            field=argument,
        ) from None


def out_of_range_error(argument: str, expected: str) -> InvalidArgumentError:
    """Return the error for an argument of the right type outside its range."""
    return InvalidArgumentError(
        f"invalid {argument}: out of range; pass {expected}", field=argument
    )


def check_int(
    value: Any, argument: str, expected: str, low: int, high: int | None = None
) -> None:
    """Raise InvalidArgumentError unless value is an int from low to high.

    A bool is rejected although it is an int subclass. expected states the
    range in messages, such as ``an int from 1 to 64``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong_type_error(argument, value, expected)
    if value < low or (high is not None and value > high):
        raise out_of_range_error(argument, expected)


def check_number(value: Any, argument: str, expected: str) -> None:
    """Raise InvalidArgumentError unless value is an int or a float.

    A bool is rejected although it is an int subclass. The caller checks
    the range.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise wrong_type_error(argument, value, expected)


def check_api_key(value: Any) -> None:
    """Raise InvalidArgumentError unless value is None or a str that gRPC metadata can carry.

    gRPC sends only printable ASCII (0x20 to 0x7E) in a text metadata value
    and fails each call on any other character, with an error that names no
    argument. The daemon strips whitespace from the keys it reads, so a key
    that starts or ends with whitespace could never match. The messages
    never contain the key.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise wrong_type_error("api_key", value, "a str or None")
    if value != value.strip():
        raise InvalidArgumentError(
            "invalid api_key: starts or ends with whitespace, such as the line "
            "break at the end of a key file; strip the key before passing it",
            field="api_key",
        )
    if not all(" " <= character <= "~" for character in value):
        raise InvalidArgumentError(
            "invalid api_key: contains a character outside printable ASCII "
            "(0x20 to 0x7E), which gRPC metadata cannot carry; pass one of the "
            "keys in the daemon's api_keys setting",
            field="api_key",
        )


def build_request(message_type: Any, prefix: str = "", **fields: Any) -> Any:
    """Build a request message after checking each field's value against its type.

    The first invalid value raises InvalidArgumentError naming its SDK
    argument, with prefix before the name, as in ``device.label``. None
    leaves a field with presence (``optional`` in the proto) unset.
    """
    descriptors = message_type.DESCRIPTOR.fields_by_name
    checked = {
        name: _checked(descriptors[name], value, prefix + argument_name(name))
        for name, value in fields.items()
    }
    return message_type(**checked)


def _checked(field: Any, value: Any, argument: str) -> Any:
    """Return value as the message constructor takes it, or raise InvalidArgumentError."""
    optional = bool(field.has_presence)
    if value is None and optional:
        return None
    if not _is_repeated(field):
        _check_scalar(field, value, argument, optional=optional)
        return value
    # A str is iterable too, and protobuf would store each character.
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        kind = _scalar_kind(field).removeprefix("a ").removeprefix("an ")
        raise wrong_type_error(argument, value, f"a list of {kind}")
    items = list(value)
    for index, item in enumerate(items):
        _check_scalar(field, item, f"{argument}[{index}]", optional=False)
    return items


def _check_scalar(field: Any, value: Any, argument: str, *, optional: bool) -> None:
    if field.type == field.TYPE_STRING:
        check_text(value, argument, optional=optional)
        return
    expected = _scalar_kind(field) + (" or None" if optional else "")
    if field.type == field.TYPE_BOOL:
        # Protobuf accepts an int for a bool field, so this check does too.
        if not isinstance(value, int):
            raise wrong_type_error(argument, value, expected)
    elif field.type == field.TYPE_INT64:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong_type_error(argument, value, expected)
        low, high, _ = _INT_RANGES.get(field.name, _INT64_RANGE)
        if not low <= value <= high:
            raise InvalidArgumentError(
                f"invalid {argument}: the int is out of range; pass {expected}",
                field=argument,
            )


def _scalar_kind(field: Any) -> str:
    """Return what a value of field must be, such as ``a str``, for messages."""
    if field.type == field.TYPE_INT64:
        return _INT_RANGES.get(field.name, _INT64_RANGE)[2]
    return {field.TYPE_STRING: "a str", field.TYPE_BOOL: "a bool"}.get(
        field.type, "a value of the documented type"
    )


def _is_repeated(field: Any) -> bool:
    # Protobuf releases before is_repeated have only label.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)
