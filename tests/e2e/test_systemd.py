"""systemd notifications and gRPC health, against a real daemon process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessiond_testing import DaemonProcess


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: str) -> list[str]:
    received: list[str] = []
    while not any(until in message for message in received):
        received.append(sock.recv(4096).decode())
    return received


def test_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    daemon = DaemonProcess(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "daemon.log",
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
    )
    daemon.start()
    try:
        ready = _messages(sock, "READY=1")
        assert any(daemon.address in message for message in ready)
        # WATCHDOG_USEC of 0.4 s means a ping every 0.2 s.
        assert "WATCHDOG=1" in _messages(sock, "WATCHDOG=1")[-1]
    finally:
        assert daemon.stop() == 0
    assert any("STOPPING=1" in message for message in _messages(sock, "STOPPING=1"))


def test_health_serving(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "sessiond.v1.SessionService"):
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_service(daemon: DaemonProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = [service.name for service in response.list_services_response.service]
    assert "sessiond.v1.SessionService" in names
