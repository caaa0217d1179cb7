"""Client argument checks against a real daemon, on SQLite and on MySQL.

Each invalid argument must raise InvalidArgumentError whose ``field`` is the
SDK argument's name, whose message never contains the value, and must leave
stored sessions, data and payloads as they were.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from sessiond_testing import DaemonProcess

import sessiond

# Values carry this marker so that a test can check messages never echo them.
SECRET = "do-not-echo-4111-1111"
# A lone surrogate: a str can hold it, but UTF-8 cannot encode it.
SURROGATE_TEXT = SECRET + "\ud800"
SECRET_BYTES = SECRET.encode()
USER = "user-arguments"
DATA = {"cart": ["book"]}
PAYLOAD = {"role": "reader"}


@dataclass(frozen=True)
class Rejection:
    """How a call failed: the exception class, its field and its message."""

    kind: str
    field: str
    message: str


def rejection(call: Callable[[], Any]) -> Rejection:
    """Run a call that must fail and return how it failed."""
    try:
        call()
    except sessiond.InvalidArgumentError as error:
        return Rejection(type(error).__name__, error.field, str(error))
    except Exception as error:
        return Rejection(type(error).__name__, "", str(error))
    return Rejection("accepted", "", "")


async def async_rejection(call: Callable[[], Awaitable[Any]]) -> Rejection:
    """Await a call that must fail and return how it failed."""
    try:
        await call()
    except sessiond.InvalidArgumentError as error:
        return Rejection(type(error).__name__, error.field, str(error))
    except Exception as error:
        return Rejection(type(error).__name__, "", str(error))
    return Rejection("accepted", "", "")


AsyncCalls = Callable[
    [sessiond.AsyncSessionClient, str], dict[str, Callable[[], Awaitable[Any]]]
]


def run_async_cases(
    daemon: DaemonProcess, make_calls: AsyncCalls
) -> tuple[dict[str, Rejection], sessiond.SessionData]:
    """Create a session with the async client, run make_calls(client, handle), and read the data back."""

    async def main() -> tuple[dict[str, Rejection], sessiond.SessionData]:
        async with sessiond.AsyncSessionClient(daemon.address) as client:
            session = await client.create_new_session(USER, PAYLOAD, DATA)
            calls = make_calls(client, session.handle)
            rejections = {
                name: await async_rejection(call) for name, call in calls.items()
            }
            stored = await client.get_session_data_versioned(session.handle)
            return rejections, stored

    return asyncio.run(main())


def run_cases(
    cases: Mapping[str, tuple[Callable[[], Any], str]],
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Run each case and return, by case name, (exception class, field) and the message."""
    rejections = {name: rejection(call) for name, (call, _) in cases.items()}
    outcomes = {name: (found.kind, found.field) for name, found in rejections.items()}
    messages = {name: found.message for name, found in rejections.items()}
    return outcomes, messages


def assert_session_unchanged(
    client: sessiond.SessionClient, session: sessiond.Session
) -> None:
    assert client.get_all_session_handles_for_user(USER) == [session.handle]
    assert client.get_session_data_versioned(session.handle) == sessiond.SessionData(
        DATA, 1
    )
    assert client.get_session_info(session.handle).access_token_payload == PAYLOAD


def access_token_of(session: sessiond.Session) -> str:
    assert session.access_token is not None
    return session.access_token.value


def surrogate_cases(
    client: sessiond.SessionClient, session: sessiond.Session
) -> dict[str, tuple[Callable[[], Any], str]]:
    """Calls with a lone surrogate in one argument each, and the field each must name."""
    handle = session.handle
    access = access_token_of(session)
    bad = SURROGATE_TEXT
    return {
        "create user_id": (lambda: client.create_new_session(bad), "user_id"),
        "create payload value": (
            lambda: client.create_new_session(USER, {"k": bad}),
            "access_token_payload",
        ),
        "create payload key": (
            lambda: client.create_new_session(USER, {bad: 1}),
            "access_token_payload",
        ),
        "create session_data": (
            lambda: client.create_new_session(USER, None, {"card": bad}),
            "session_data",
        ),
        "create device.user_agent": (
            lambda: client.create_new_session(
                USER, device=sessiond.DeviceInfo(user_agent=bad)
            ),
            "device.user_agent",
        ),
        "create device.ip_address": (
            lambda: client.create_new_session(
                USER, device=sessiond.DeviceInfo(ip_address=bad)
            ),
            "device.ip_address",
        ),
        "create device.label": (
            lambda: client.create_new_session(
                USER, device=sessiond.DeviceInfo(label=bad)
            ),
            "device.label",
        ),
        "get_session access_token": (
            lambda: client.get_session(bad),
            "access_token",
        ),
        "get_session anti_csrf_token": (
            lambda: client.get_session(access, bad),
            "anti_csrf_token",
        ),
        "refresh_session": (lambda: client.refresh_session(bad), "refresh_token"),
        "regenerate access_token": (
            lambda: client.regenerate_access_token(bad),
            "access_token",
        ),
        "regenerate payload": (
            lambda: client.regenerate_access_token(access, {"k": bad}),
            "access_token_payload",
        ),
        "update payload handle": (
            lambda: client.update_access_token_payload(bad, {}),
            "handle",
        ),
        "update payload": (
            lambda: client.update_access_token_payload(handle, {"k": bad}),
            "access_token_payload",
        ),
        "revoke_session": (lambda: client.revoke_session(bad), "handle"),
        "revoke_sessions": (
            lambda: client.revoke_sessions([handle, bad]),
            "handles[1]",
        ),
        "revoke_all_sessions_for_user": (
            lambda: client.revoke_all_sessions_for_user(bad),
            "user_id",
        ),
        "get_all_session_handles_for_user": (
            lambda: client.get_all_session_handles_for_user(bad),
            "user_id",
        ),
        "list_sessions": (lambda: client.list_sessions(bad), "user_id"),
        "get_session_info": (lambda: client.get_session_info(bad), "handle"),
        "get_session_data": (lambda: client.get_session_data(bad), "handle"),
        "update_session_data": (
            lambda: client.update_session_data(handle, {"card": bad}),
            "session_data",
        ),
        "update_session_data str": (
            lambda: client.update_session_data(handle, bad),
            "session_data",
        ),
        "update_session_data versioned": (
            lambda: client.update_session_data(handle, [bad], expected_version=1),
            "session_data",
        ),
        "merge_session_data": (
            lambda: client.merge_session_data(handle, {"card": bad}),
            "patch",
        ),
        "modify_session_data": (
            lambda: client.modify_session_data(handle, lambda data: {"card": bad}),
            "session_data",
        ),
    }


def test_lone_surrogates_rejected(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(USER, PAYLOAD, DATA)
    cases = surrogate_cases(client, session)

    outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [name for name, text in messages.items() if SECRET in text] == []
    assert [
        name
        for name, text in messages.items()
        if "lone surrogate" not in text or "U+D800 to U+DFFF" not in text
    ] == []
    assert [
        name
        for name, text in messages.items()
        if not text.startswith(f"invalid {cases[name][1]}:")
    ] == []
    assert_session_unchanged(client, session)


def test_bytes_for_str_rejected(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(USER, PAYLOAD, DATA)
    access = access_token_of(session)
    # Typed Any because they are the wrong type on purpose.
    handle_bytes: Any = session.handle.encode()
    user_bytes: Any = b"x"
    user_of_session: Any = USER.encode()
    secret: Any = SECRET_BYTES
    cases: dict[str, tuple[Callable[[], Any], str]] = {
        "create user_id": (lambda: client.create_new_session(user_bytes), "user_id"),
        "create device.label": (
            lambda: client.create_new_session(
                USER,
                device=sessiond.DeviceInfo(label=user_bytes),
            ),
            "device.label",
        ),
        "get_session access_token": (
            lambda: client.get_session(secret),
            "access_token",
        ),
        "get_session anti_csrf_token": (
            lambda: client.get_session(access, secret),
            "anti_csrf_token",
        ),
        "refresh_session": (
            lambda: client.refresh_session(secret),
            "refresh_token",
        ),
        "regenerate access_token": (
            lambda: client.regenerate_access_token(secret),
            "access_token",
        ),
        "update payload handle": (
            lambda: client.update_access_token_payload(handle_bytes, {}),
            "handle",
        ),
        "revoke_session": (
            lambda: client.revoke_session(handle_bytes),
            "handle",
        ),
        "revoke_sessions item": (
            lambda: client.revoke_sessions([handle_bytes]),
            "handles[0]",
        ),
        "revoke_sessions bytes": (
            lambda: client.revoke_sessions(handle_bytes),
            "handles",
        ),
        "revoke_all_sessions_for_user": (
            lambda: client.revoke_all_sessions_for_user(user_of_session),
            "user_id",
        ),
        "get_all_session_handles_for_user": (
            lambda: client.get_all_session_handles_for_user(user_bytes),
            "user_id",
        ),
        "list_sessions": (
            lambda: client.list_sessions(user_bytes),
            "user_id",
        ),
        "get_session_info": (
            lambda: client.get_session_info(handle_bytes),
            "handle",
        ),
        "get_session_data_versioned": (
            lambda: client.get_session_data_versioned(handle_bytes),
            "handle",
        ),
        "update_session_data": (
            lambda: client.update_session_data(handle_bytes, {}),
            "handle",
        ),
        "merge_session_data": (
            lambda: client.merge_session_data(handle_bytes, {}),
            "handle",
        ),
    }

    outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [name for name, text in messages.items() if SECRET in text] == []
    assert [name for name, text in messages.items() if "got bytes" not in text] == []
    assert [
        name
        for name, text in messages.items()
        if re.search(r"; pass a (list of )?str\b", text) is None
    ] == []
    assert client.get_all_session_handles_for_user("x") == []
    assert_session_unchanged(client, session)


def test_handle_named_handle_everywhere(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(USER, PAYLOAD, DATA)
    methods: dict[str, Callable[[Any], Any]] = {
        "get_session_info": client.get_session_info,
        "get_session_data_versioned": client.get_session_data_versioned,
        "revoke_session": client.revoke_session,
        "update_session_data": lambda handle: client.update_session_data(handle, {}),
        "merge_session_data": lambda handle: client.merge_session_data(handle, {}),
        "update_access_token_payload": lambda handle: (
            client.update_access_token_payload(handle, {})
        ),
    }
    no_handle: Any = None
    # The client rejects None and 123; the daemon rejects the two strings.
    handles: list[Any] = [None, 123, "", "not-a-handle"]
    cases = {
        f"{name} {handle!r}": (partial(method, handle), "handle")
        for name, method in methods.items()
        for handle in handles
    }
    cases["revoke_sessions daemon"] = (
        partial(client.revoke_sessions, [session.handle, "not-a-handle"]),
        "handles[1]",
    )
    cases["revoke_sessions client"] = (
        partial(client.revoke_sessions, [session.handle, no_handle]),
        "handles[1]",
    )

    outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [
        name
        for name, text in messages.items()
        if not text.startswith(f"invalid {cases[name][1]}:")
    ] == []
    assert [name for name, text in messages.items() if "session_handle" in text] == []
    assert_session_unchanged(client, session)


def test_expected_version_range_in_message(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(USER, PAYLOAD, DATA)
    versions: list[Any] = [0, -1, -(2**63), 2**63, True, "1", 1.0]
    cases = {
        f"{name} {version!r}": (
            partial(method, session.handle, {"n": 1}, expected_version=version),
            "expected_version",
        )
        for name, method in (
            ("update", client.update_session_data),
            ("merge", client.merge_session_data),
        )
        for version in versions
    }

    outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", "expected_version") for name in cases
    }
    assert [
        name
        for name, text in messages.items()
        if "an int from 1 to 2**63 - 1" not in text
    ] == []
    assert_session_unchanged(client, session)
    # The largest version passes the client's check and reaches the daemon,
    # which finds the data at version 1.
    with pytest.raises(sessiond.ConflictError):
        client.update_session_data(session.handle, DATA, expected_version=2**63 - 1)


def test_local_verification_checks_tokens(daemon: DaemonProcess) -> None:
    # Typed Any because they are the wrong type on purpose.
    secret_bytes: Any = SECRET_BYTES
    csrf_int: Any = 5
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(10)
        session = client.create_new_session(USER, PAYLOAD, DATA)
        access = access_token_of(session)
        cases: dict[str, tuple[Callable[[], Any], str]] = {
            "access surrogate": (
                partial(client.get_session, SURROGATE_TEXT),
                "access_token",
            ),
            "access bytes": (
                partial(client.get_session, secret_bytes),
                "access_token",
            ),
            "csrf surrogate": (
                partial(client.get_session, access, SURROGATE_TEXT),
                "anti_csrf_token",
            ),
            "csrf int": (
                partial(client.get_session, access, csrf_int),
                "anti_csrf_token",
            ),
        }

        outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [name for name, text in messages.items() if SECRET in text] == []


def test_async_client_checks_arguments(daemon: DaemonProcess) -> None:
    # Typed Any because they are the wrong type on purpose.
    user_bytes: Any = b"x"
    no_handle: Any = None

    bad = {"card": SURROGATE_TEXT}

    def make_calls(
        client: sessiond.AsyncSessionClient, handle: str
    ) -> dict[str, Callable[[], Awaitable[Any]]]:
        return {
            "create surrogate": lambda: client.create_new_session(USER, None, bad),
            "update surrogate": lambda: client.update_session_data(handle, bad),
            "merge surrogate": lambda: client.merge_session_data(handle, bad),
            "create bytes": lambda: client.create_new_session(user_bytes),
            "handle None": lambda: client.get_session_info(no_handle),
            "handle daemon": lambda: client.get_session_info("not-a-handle"),
        }

    rejections, stored = run_async_cases(daemon, make_calls)

    outcomes = {name: (found.kind, found.field) for name, found in rejections.items()}
    assert outcomes == {
        "create surrogate": ("InvalidArgumentError", "session_data"),
        "update surrogate": ("InvalidArgumentError", "session_data"),
        "merge surrogate": ("InvalidArgumentError", "patch"),
        "create bytes": ("InvalidArgumentError", "user_id"),
        "handle None": ("InvalidArgumentError", "handle"),
        "handle daemon": ("InvalidArgumentError", "handle"),
    }
    assert [name for name, found in rejections.items() if SECRET in found.message] == []
    assert stored == sessiond.SessionData(DATA, 1)


def deeply_nested(depth: int = 5000) -> Any:
    """Return SECRET inside lists nested deeper than the recursion limit of 1000."""
    value: Any = {"card": SECRET}
    for _ in range(depth):
        value = [value]
    return value


def test_deep_nesting_rejected(client: sessiond.SessionClient) -> None:
    session = client.create_new_session(USER, PAYLOAD, DATA)
    access = access_token_of(session)
    deep = deeply_nested()
    cases: dict[str, tuple[Callable[[], Any], str]] = {
        "create payload": (
            lambda: client.create_new_session(USER, {"k": deep}),
            "access_token_payload",
        ),
        "create data": (
            lambda: client.create_new_session(USER, None, deep),
            "session_data",
        ),
        "regenerate payload": (
            lambda: client.regenerate_access_token(access, {"k": deep}),
            "access_token_payload",
        ),
        "update payload": (
            lambda: client.update_access_token_payload(session.handle, {"k": deep}),
            "access_token_payload",
        ),
        "update data": (
            lambda: client.update_session_data(session.handle, deep),
            "session_data",
        ),
        "merge patch": (
            lambda: client.merge_session_data(session.handle, {"k": deep}),
            "patch",
        ),
        "modify result": (
            lambda: client.modify_session_data(session.handle, lambda data: deep),
            "session_data",
        ),
    }

    outcomes, messages = run_cases(cases)

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [name for name, text in messages.items() if SECRET in text] == []
    assert [
        name for name, text in messages.items() if "nested too deeply" not in text
    ] == []
    assert_session_unchanged(client, session)


def test_module_level_checks_arguments(daemon: DaemonProcess) -> None:
    sessiond.init(daemon.address)
    try:
        session = sessiond.create_new_session(USER, PAYLOAD, DATA)
        deep = deeply_nested()
        bad_attempts: Any = "5"
        changes: list[Any] = []
        cases: dict[str, tuple[Callable[[], Any], str]] = {
            "update data": (
                lambda: sessiond.update_session_data(session.handle, deep),
                "session_data",
            ),
            "merge patch": (
                lambda: sessiond.merge_session_data(session.handle, deep),
                "patch",
            ),
            "modify result": (
                lambda: sessiond.modify_session_data(session.handle, lambda data: deep),
                "session_data",
            ),
            "modify max_attempts": (
                lambda: sessiond.modify_session_data(
                    session.handle, changes.append, max_attempts=bad_attempts
                ),
                "max_attempts",
            ),
        }

        outcomes, messages = run_cases(cases)
        stored = sessiond.get_session_data_versioned(session.handle)
    finally:
        sessiond.close()

    assert outcomes == {
        name: ("InvalidArgumentError", field) for name, (_, field) in cases.items()
    }
    assert [name for name, text in messages.items() if SECRET in text] == []
    assert changes == []
    assert stored == sessiond.SessionData(DATA, 1)


def test_async_client_checks_data_arguments(daemon: DaemonProcess) -> None:
    deep = deeply_nested()
    bad_attempts: Any = float("nan")

    async def deep_change(data: Any) -> Any:
        return deep

    def make_calls(
        client: sessiond.AsyncSessionClient, handle: str
    ) -> dict[str, Callable[[], Awaitable[Any]]]:
        return {
            "create data": lambda: client.create_new_session(USER, None, deep),
            "create payload": lambda: client.create_new_session(USER, {"k": deep}),
            "update data": lambda: client.update_session_data(handle, deep),
            "merge patch": lambda: client.merge_session_data(handle, deep),
            "modify result": lambda: client.modify_session_data(handle, deep_change),
            "modify max_attempts": lambda: client.modify_session_data(
                handle, deep_change, max_attempts=bad_attempts
            ),
        }

    rejections, stored = run_async_cases(daemon, make_calls)

    outcomes = {name: (found.kind, found.field) for name, found in rejections.items()}
    assert outcomes == {
        "create data": ("InvalidArgumentError", "session_data"),
        "create payload": ("InvalidArgumentError", "access_token_payload"),
        "update data": ("InvalidArgumentError", "session_data"),
        "merge patch": ("InvalidArgumentError", "patch"),
        "modify result": ("InvalidArgumentError", "session_data"),
        "modify max_attempts": ("InvalidArgumentError", "max_attempts"),
    }
    assert [name for name, found in rejections.items() if SECRET in found.message] == []
    assert stored == sessiond.SessionData(DATA, 1)


@pytest.mark.parametrize(
    "api_key",
    [SECRET + "\n", SECRET + "\x00", SECRET + "é", SURROGATE_TEXT, SECRET_BYTES, 5],
)
def test_async_client_checks_api_key(daemon: DaemonProcess, api_key: Any) -> None:
    async def main() -> None:
        async with sessiond.AsyncSessionClient(daemon.address, api_key=api_key):
            pass

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        asyncio.run(main())

    assert raised.value.field == "api_key"
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value)
