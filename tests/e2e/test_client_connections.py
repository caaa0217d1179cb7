"""The connections setting of both clients: several TCP connections to one daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sessiond_testing import DaemonProcess

import sessiond

TCP_ESTABLISHED = "01"


def established_to(port: int) -> int:
    """Count this host's established TCP connections whose remote port is port.

    Every client connection to the daemon has the daemon's port as its
    remote port. gRPC opens IPv6 sockets that reach 127.0.0.1 through
    IPv4-mapped addresses, so they are listed in /proc/net/tcp6.
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == TCP_ESTABLISHED:
                count += 1
    return count


@pytest.fixture
def daemon(start_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> DaemonProcess:
    return start_daemon(f"sqlite:///{tmp_path / 'connections.db'}")


def port_of(daemon: DaemonProcess) -> int:
    return int(daemon.address.rsplit(":", 1)[1])


def use_every_connection(client: sessiond.SessionClient) -> None:
    """Create a session and use it with more calls than the client has connections."""
    session = client.create_new_session("user-1", {"role": "reader"}, {"n": 1})
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    for _ in range(6):
        verified = client.get_session(
            session.access_token.value, session.anti_csrf_token.value
        )
        assert verified.handle == session.handle
    assert client.get_session_data(session.handle) == {"n": 1}
    assert client.revoke_session(session.handle)


def test_one_connection_by_default(daemon: DaemonProcess) -> None:
    with sessiond.SessionClient(daemon.address) as client:
        use_every_connection(client)

        assert established_to(port_of(daemon)) == 1


def test_sync_client_opens_each_connection(daemon: DaemonProcess) -> None:
    with sessiond.SessionClient(daemon.address, connections=3) as client:
        use_every_connection(client)

        assert established_to(port_of(daemon)) == 3


def test_async_client_opens_each_connection(daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with sessiond.AsyncSessionClient(daemon.address, connections=3) as client:
            session = await client.create_new_session("user-1", {}, {"n": 1})
            reads = [client.get_session_data(session.handle) for _ in range(6)]
            assert await asyncio.gather(*reads) == [{"n": 1}] * 6

            assert established_to(port_of(daemon)) == 3

    asyncio.run(main())


def test_closed_client_closes_every_connection(daemon: DaemonProcess) -> None:
    client = sessiond.SessionClient(daemon.address, connections=2)
    use_every_connection(client)
    client.close()

    with pytest.raises(sessiond.GeneralError, match="closed"):
        client.get_jwks()
    # The daemon may take a moment to see the connections close.
    for _ in range(100):
        if established_to(port_of(daemon)) == 0:
            break
        time.sleep(0.05)
    assert established_to(port_of(daemon)) == 0


@pytest.mark.parametrize("connections", [0, 65])
def test_connections_out_of_range_rejected(connections: int) -> None:
    with pytest.raises(sessiond.InvalidArgumentError) as caught:
        sessiond.SessionClient("127.0.0.1:1", connections=connections)

    assert caught.value.field == "connections"
