"""get_session verified in process, with revocations pushed by real daemons.

The daemon's call counter (Prometheus metrics) shows which verifies stayed
local: a local verify makes no VerifySession call.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sessiond_testing import DaemonProcess, rotate_keys, scrape_metrics

import sessiond

# The bound within which a revocation made through another client must
# reach a local verifier: one poll of the log plus a stream message.
REVOCATION_BOUND_S = 2.0
READY_TIMEOUT_S = 10.0


def verify_calls(daemon: DaemonProcess) -> int:
    """Return how many VerifySession calls the daemon has served, whatever their status."""
    counts = re.findall(
        r'^sessiond_grpc_calls_total\{code="\w+",method="VerifySession"\} (\S+)$',
        scrape_metrics(daemon),
        re.MULTILINE,
    )
    return int(sum(float(count) for count in counts))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def local_daemon(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> DaemonProcess:
    return start_daemon(database_url, metrics_listen="127.0.0.1:0")


@pytest.fixture
def local_client(local_daemon: DaemonProcess) -> Iterator[sessiond.SessionClient]:
    with local_daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        yield client


def wait_until_rejected(
    client: sessiond.SessionClient, session: sessiond.Session, bound_s: float
) -> float:
    """Verify the session's tokens until that fails; return how long it took."""
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    started = time.monotonic()
    while True:
        try:
            client.get_session(
                session.access_token.value, session.anti_csrf_token.value
            )
        except sessiond.UnauthorisedError:
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < bound_s, f"still accepted {elapsed:.2f} s after the revoke"
        time.sleep(0.02)


def test_local_verify_makes_no_call(
    local_daemon: DaemonProcess, local_client: sessiond.SessionClient
) -> None:
    session = local_client.create_new_session("Zoë", {"role": "reader"})
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    before = verify_calls(local_daemon)

    for _ in range(50):
        verified = local_client.get_session(
            session.access_token.value, session.anti_csrf_token.value
        )

    assert verify_calls(local_daemon) == before
    assert verified.handle == session.handle
    assert verified.user_id == "Zoë"
    assert verified.access_token_payload == {"role": "reader"}
    assert verified.access_token is None


def test_check_database_goes_to_daemon(
    local_daemon: DaemonProcess, local_client: sessiond.SessionClient
) -> None:
    session = local_client.create_new_session("checked")
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    before = verify_calls(local_daemon)

    local_client.get_session(
        session.access_token.value, session.anti_csrf_token.value, check_database=True
    )

    assert verify_calls(local_daemon) == before + 1


def test_revoke_elsewhere_rejected_within_bound(
    local_daemon: DaemonProcess, local_client: sessiond.SessionClient
) -> None:
    session = local_client.create_new_session("revoked elsewhere")
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    local_client.get_session(session.access_token.value, session.anti_csrf_token.value)

    with local_daemon.client() as other:
        other.revoke_session(session.handle)
    waited = wait_until_rejected(local_client, session, REVOCATION_BOUND_S)

    assert waited < REVOCATION_BOUND_S


def test_own_revoke_rejected_at_once(local_client: sessiond.SessionClient) -> None:
    session = local_client.create_new_session("revoked here")
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    local_client.get_session(session.access_token.value, session.anti_csrf_token.value)

    local_client.revoke_session(session.handle)

    with pytest.raises(sessiond.UnauthorisedError):
        local_client.get_session(
            session.access_token.value, session.anti_csrf_token.value
        )


def test_theft_rejects_access_token(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, refresh_grace_period_s=0)
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        first = client.create_new_session("victim")
        assert first.refresh_token is not None
        child = client.refresh_session(first.refresh_token.value)
        assert child.refresh_token is not None
        client.refresh_session(child.refresh_token.value)
        with (
            daemon.client() as attacker,
            pytest.raises(sessiond.TokenTheftDetectedError),
        ):
            attacker.refresh_session(first.refresh_token.value)

        waited = wait_until_rejected(client, first, REVOCATION_BOUND_S)

    assert waited < REVOCATION_BOUND_S


def test_local_errors_match_daemon(
    local_daemon: DaemonProcess, local_client: sessiond.SessionClient
) -> None:
    session = local_client.create_new_session("errors")
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    token = session.access_token.value
    header, payload, signature = token.split(".")
    # A character in the middle carries six whole bits of the signature.
    changed = "A" if signature[10] != "A" else "B"
    flipped = signature[:10] + changed + signature[11:]
    before = verify_calls(local_daemon)

    with pytest.raises(sessiond.TryRefreshTokenError) as missing_csrf:
        local_client.get_session(token)
    with pytest.raises(sessiond.TryRefreshTokenError) as wrong_csrf:
        local_client.get_session(token, "not-the-anti-csrf-token")
    with pytest.raises(sessiond.UnauthorisedError) as forged:
        local_client.get_session(f"{header}.{payload}.{flipped}", "x")
    with pytest.raises(sessiond.UnauthorisedError) as garbage:
        local_client.get_session("not.a.token", "x")

    assert verify_calls(local_daemon) == before
    assert "missing" in missing_csrf.value.message
    assert "does not match" in wrong_csrf.value.message
    assert "invalid" in forged.value.message
    assert "malformed" in garbage.value.message


def test_expired_token_asks_for_refresh(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'expiry.db'}",
        access_token_validity_s=1,
        clock_skew_leeway_s=0,
    )
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        session = client.create_new_session("short")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        client.get_session(session.access_token.value, session.anti_csrf_token.value)
        # exp rounds up to whole seconds, so 2.1 s is surely past it.
        time.sleep(2.1)

        with pytest.raises(sessiond.TryRefreshTokenError) as raised:
            client.get_session(
                session.access_token.value, session.anti_csrf_token.value
            )

    assert "expired" in raised.value.message


def test_refreshed_token_first_use_goes_to_daemon(
    local_daemon: DaemonProcess, local_client: sessiond.SessionClient
) -> None:
    session = local_client.create_new_session("refreshing")
    assert session.refresh_token is not None
    refreshed = local_client.refresh_session(session.refresh_token.value)
    assert refreshed.access_token is not None
    assert refreshed.anti_csrf_token is not None
    before = verify_calls(local_daemon)

    first = local_client.get_session(
        refreshed.access_token.value, refreshed.anti_csrf_token.value
    )
    after_first = verify_calls(local_daemon)
    local_client.get_session(
        refreshed.access_token.value, refreshed.anti_csrf_token.value
    )

    assert after_first == before + 1
    assert verify_calls(local_daemon) == after_first
    assert first.access_token is not None


def test_blacklisting_daemon_verifies_remotely(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'blacklisting.db'}",
        blacklisting=True,
        metrics_listen="127.0.0.1:0",
    )
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        session = client.create_new_session("strict")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        before = verify_calls(daemon)

        client.get_session(session.access_token.value, session.anti_csrf_token.value)

    assert verify_calls(daemon) == before + 1


def test_new_signing_key_verified_locally(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'rotation.db'}"
    daemon = start_daemon(database_url, metrics_listen="127.0.0.1:0")
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        client.create_new_session("before rotation")
        rotate_keys(database_url)
        # A running daemon switches to the new key within a second.
        time.sleep(1.5)
        session = client.create_new_session("after rotation")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        before = verify_calls(daemon)

        verified = client.get_session(
            session.access_token.value, session.anti_csrf_token.value
        )

        assert verify_calls(daemon) == before
    assert verified.user_id == "after rotation"


def test_lost_stream_falls_back_then_catches_up(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Without the stream, verifies go to the daemon; on reconnect, missed revocations arrive."""
    database_url = f"sqlite:///{tmp_path / 'restart.db'}"
    listen = f"127.0.0.1:{free_port()}"
    daemon = start_daemon(database_url, listen=listen)
    with sessiond.SessionClient(listen, local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        session = client.create_new_session("survivor")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        client.get_session(session.access_token.value, session.anti_csrf_token.value)
        assert daemon.stop() == 0
        # While the daemon is away another one revokes the session in the
        # same database, so only a resumed stream can tell the client.
        away = start_daemon(database_url)
        with away.client() as other:
            other.revoke_session(session.handle)
        assert away.stop() == 0
        # With the stream gone, get_session calls the daemon, which is down.
        deadline = time.monotonic() + 10
        while True:
            try:
                client.get_session(
                    session.access_token.value, session.anti_csrf_token.value
                )
            except sessiond.UnavailableError:
                break
            assert time.monotonic() < deadline, "verified locally without a stream"
            time.sleep(0.1)
        start_daemon(database_url, listen=listen)
        assert client.wait_for_local_verification(READY_TIMEOUT_S)

        # Stateless remote verify would accept the token, so only the
        # replayed revocation can reject it.
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(
                session.access_token.value, session.anti_csrf_token.value
            )


# How soon after its daemon exits a client stops verifying locally: the
# kernel closes the stream's connection at once, so this is the client's
# own reaction time, well below the heartbeat timeout of 2.5 s.
STREAM_END_BOUND_S = 0.5


@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_ended_stream_stops_local_verify(
    start_daemon: Callable[..., DaemonProcess], database_url: str, ending: str
) -> None:
    daemon = start_daemon(database_url)
    with daemon.client(local_verification=True) as client:
        assert client.wait_for_local_verification(READY_TIMEOUT_S)
        session = client.create_new_session("ended stream")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        tokens = (session.access_token.value, session.anti_csrf_token.value)
        client.get_session(*tokens)

        if ending == "stop":
            assert daemon.stop() == 0
        else:
            daemon.kill()
        ended = time.monotonic()
        # A revoke made through another daemon in this window would go
        # unseen, so a local verify must stop at once: the daemon is down,
        # and the fallback call to it fails.
        while True:
            try:
                client.get_session(*tokens)
            except sessiond.UnavailableError:
                break
            elapsed = time.monotonic() - ended
            assert elapsed < STREAM_END_BOUND_S, (
                f"verified locally {elapsed:.2f} s after the daemon exited"
            )
            time.sleep(0.01)


def test_async_client_verifies_locally(local_daemon: DaemonProcess) -> None:
    async def scenario() -> tuple[int, int, type[BaseException] | None]:
        async with sessiond.AsyncSessionClient(
            local_daemon.address, local_verification=True
        ) as client:
            assert client.wait_for_local_verification(READY_TIMEOUT_S)
            session = await client.create_new_session("async user")
            assert session.access_token is not None
            assert session.anti_csrf_token is not None
            tokens = (session.access_token.value, session.anti_csrf_token.value)
            before = verify_calls(local_daemon)
            await asyncio.gather(*(client.get_session(*tokens) for _ in range(20)))
            after = verify_calls(local_daemon)
            await client.revoke_session(session.handle)
            try:
                await client.get_session(*tokens)
            except sessiond.SessionError as error:
                return before, after, type(error)
            return before, after, None

    before, after, raised = asyncio.run(scenario())

    assert after == before
    assert raised is sessiond.UnauthorisedError


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_revoke_seen_without_stream(
    start_daemon: Callable[..., DaemonProcess], database_url: str, kind: str
) -> None:
    # With the stream off the verifier never vouches for a token, so every
    # verify goes to the daemon, which must read the session row.
    daemon = start_daemon(database_url, max_revocation_watchers=0)
    with daemon.client() as other:
        session = other.create_new_session("no-stream")
        assert session.access_token is not None
        assert session.anti_csrf_token is not None
        access, csrf = session.access_token.value, session.anti_csrf_token.value

        async def verify_before_and_after_revoke() -> None:
            client: sessiond.SessionClient | sessiond.AsyncSessionClient
            if kind == "sync":
                client = sessiond.SessionClient(daemon.address, local_verification=True)
            else:
                client = sessiond.AsyncSessionClient(
                    daemon.address, local_verification=True
                )
            try:
                first = client.get_session(access, csrf)
                if not isinstance(first, sessiond.Session):
                    first = await first
                assert first.handle == session.handle

                assert other.revoke_session(session.handle)

                with pytest.raises(sessiond.UnauthorisedError):
                    again = client.get_session(access, csrf)
                    if not isinstance(again, sessiond.Session):
                        await again
            finally:
                closed = client.close()
                if closed is not None:
                    await closed

        asyncio.run(verify_before_and_after_revoke())
