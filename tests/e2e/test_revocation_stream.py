"""WatchRevocations through real daemons: what it sends, resume, limits, replicas."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from sessiond_testing import DaemonProcess

import sessiond
from sessiond.errors import from_rpc_error
from sessiond.v1 import session_pb2 as pb
from sessiond.v1 import session_pb2_grpc

# How long a test waits for a message before it fails; the daemon sends a
# heartbeat every second, so this is a generous bound.
WAIT_S = 10.0


class Watcher:
    """A raw WatchRevocations stream read by a thread into a queue."""

    def __init__(self, address: str, after_seq: int = 0) -> None:
        self._channel = grpc.insecure_channel(address)
        stub = session_pb2_grpc.SessionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._stream = stub.WatchRevocations(
            pb.WatchRevocationsRequest(after_seq=after_seq)
        )
        self.messages: queue.Queue[Any] = queue.Queue()
        self.resume_after_seq = after_seq
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self._stream:
                self.messages.put(message)
        except grpc.RpcError as error:
            self.messages.put(error)

    def next_message(self) -> pb.WatchRevocationsResponse:
        item = self.messages.get(timeout=WAIT_S)
        if isinstance(item, grpc.RpcError):
            raise from_rpc_error(item)
        self.resume_after_seq = item.resume_after_seq
        return item

    def wait_for(self, handles: set[str]) -> dict[str, pb.Revocation]:
        """Read messages until every handle has arrived; return the revocations by handle."""
        found: dict[str, pb.Revocation] = {}
        deadline = time.monotonic() + WAIT_S
        while not handles <= found.keys():
            assert time.monotonic() < deadline, f"missing {handles - found.keys()}"
            for revocation in self.next_message().revocations:
                found[revocation.session_handle] = revocation
        return found

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


@pytest.fixture
def watch() -> Iterator[Callable[..., Watcher]]:
    opened: list[Watcher] = []

    def open_watcher(address: str, after_seq: int = 0) -> Watcher:
        watcher = Watcher(address, after_seq)
        opened.append(watcher)
        return watcher

    yield open_watcher
    for watcher in opened:
        watcher.close()


def test_revoke_reaches_watcher(
    daemon: DaemonProcess,
    client: sessiond.SessionClient,
    watch: Callable[..., Watcher],
) -> None:
    watcher = watch(daemon.address)
    watcher.next_message()
    session = client.create_new_session("Zoë")

    client.revoke_session(session.handle)
    found = watcher.wait_for({session.handle})

    revocation = found[session.handle]
    assert revocation.user_id == "Zoë"
    assert revocation.reason == pb.Revocation.REVOKED
    assert revocation.seq > 0
    assert revocation.revoked_at_ms > 0


def test_every_ending_reaches_watcher(
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
    watch: Callable[..., Watcher],
) -> None:
    daemon = start_daemon(
        database_url, max_sessions_per_user=1, refresh_grace_period_s=0
    )
    watcher = watch(daemon.address)
    with daemon.client() as client:
        stolen = client.create_new_session("thief-target")
        assert stolen.refresh_token is not None
        child = client.refresh_session(stolen.refresh_token.value)
        assert child.refresh_token is not None
        # Using the child makes it the stored token, so the parent is now stale.
        client.refresh_session(child.refresh_token.value)
        with pytest.raises(sessiond.TokenTheftDetectedError):
            client.refresh_session(stolen.refresh_token.value)
        evicted = client.create_new_session("crowded")
        client.create_new_session("crowded")
        everyone = [client.create_new_session(f"all-{index}") for index in range(2)]
        client.revoke_all_sessions_for_user("all-0")
        client.revoke_sessions([everyone[1].handle])

    found = watcher.wait_for(
        {stolen.handle, evicted.handle, everyone[0].handle, everyone[1].handle}
    )

    assert found[stolen.handle].reason == pb.Revocation.TOKEN_THEFT_DETECTED
    assert found[evicted.handle].reason == pb.Revocation.EVICTED
    assert found[everyone[0].handle].reason == pb.Revocation.REVOKED
    assert found[everyone[1].handle].reason == pb.Revocation.REVOKED


def test_new_watcher_gets_past_revocations(
    daemon: DaemonProcess,
    client: sessiond.SessionClient,
    watch: Callable[..., Watcher],
) -> None:
    session = client.create_new_session("earlier")
    client.revoke_session(session.handle)

    first = watch(daemon.address).next_message()

    assert [row.session_handle for row in first.revocations] == [session.handle]


def test_resume_skips_what_was_seen(
    daemon: DaemonProcess,
    client: sessiond.SessionClient,
    watch: Callable[..., Watcher],
) -> None:
    seen = client.create_new_session("seen")
    client.revoke_session(seen.handle)
    first = watch(daemon.address)
    first.wait_for({seen.handle})
    later = client.create_new_session("later")
    client.revoke_session(later.handle)

    resumed = watch(daemon.address, first.resume_after_seq).next_message()

    assert [row.session_handle for row in resumed.revocations] == [later.handle]


def test_quiet_stream_sends_heartbeats(
    daemon: DaemonProcess, watch: Callable[..., Watcher]
) -> None:
    watcher = watch(daemon.address)
    watcher.next_message()

    quiet = watcher.next_message()

    assert list(quiet.revocations) == []
    assert quiet.heartbeat_ms == 1000


@pytest.mark.mysql
def test_revoke_on_replica_reaches_other_replica(
    start_daemon: Callable[..., DaemonProcess],
    mysql_url: str,
    watch: Callable[..., Watcher],
) -> None:
    first, second = start_daemon(mysql_url), start_daemon(mysql_url)
    watcher = watch(second.address)
    watcher.next_message()
    with first.client() as client:
        session = client.create_new_session("moves")
        client.revoke_session(session.handle)

    found = watcher.wait_for({session.handle})

    assert found[session.handle].user_id == "moves"


def test_resume_after_restart(
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
    watch: Callable[..., Watcher],
) -> None:
    daemon = start_daemon(database_url)
    watcher = watch(daemon.address)
    with daemon.client() as client:
        before = client.create_new_session("before")
        client.revoke_session(before.handle)
    watcher.wait_for({before.handle})
    resume_after = watcher.resume_after_seq
    assert daemon.stop() == 0
    restarted = start_daemon(database_url)
    with restarted.client() as client:
        away = client.create_new_session("while away")
        client.revoke_session(away.handle)

    resumed = watch(restarted.address, resume_after).next_message()

    assert [row.session_handle for row in resumed.revocations] == [away.handle]


def test_negative_after_seq_rejected(
    daemon: DaemonProcess, watch: Callable[..., Watcher]
) -> None:
    watcher = watch(daemon.address, -1)

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        watcher.next_message()

    assert raised.value.field == "after_seq"
    assert "resume_after_seq" in raised.value.message


def test_watchers_over_limit_rejected(
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Any,
    watch: Callable[..., Watcher],
) -> None:
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'limit.db'}", max_revocation_watchers=1
    )
    first = watch(daemon.address)
    first.next_message()

    with pytest.raises(sessiond.UnavailableError) as raised:
        watch(daemon.address).next_message()
    first.close()
    # The slot frees when the first stream ends; allow the daemon to notice.
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            watch(daemon.address).next_message()
            break
        except sessiond.UnavailableError:
            assert time.monotonic() < deadline, "the slot never freed"
            time.sleep(0.1)

    assert "max_revocation_watchers" in raised.value.message


def test_stream_off_when_limit_zero(
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Any,
    watch: Callable[..., Watcher],
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'off.db'}", max_revocation_watchers=0)

    with pytest.raises(sessiond.UnavailableError) as raised:
        watch(daemon.address).next_message()

    assert "max_revocation_watchers = 0" in raised.value.message


def test_stop_ends_streams_promptly(
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Any,
    watch: Callable[..., Watcher],
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'stop.db'}", shutdown_grace_s=30)
    watcher = watch(daemon.address)
    watcher.next_message()

    code = daemon.stop(timeout_s=10)

    assert code == 0
