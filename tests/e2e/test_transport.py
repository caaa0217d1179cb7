"""API keys, TLS, mutual TLS and the unix socket listener, against a real daemon."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessiond_testing import DaemonProcess

import sessiond

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'transport.db'}"


def test_api_key_required(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str
) -> None:
    daemon = start_daemon(sqlite_url, api_keys=f"{KEY_A},{KEY_B}")
    with daemon.client() as anonymous:
        with pytest.raises(sessiond.GeneralError, match="API key is missing") as caught:
            anonymous.create_new_session("user-1")
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    with daemon.client(api_key="key-c-0123456789abcdef") as wrong:
        with pytest.raises(sessiond.GeneralError, match="API key is invalid"):
            wrong.get_all_session_handles_for_user("user-1")
    for key in (KEY_A, KEY_B):
        with daemon.client(api_key=key) as allowed:
            allowed.create_new_session("user-1")
    with daemon.client(api_key=KEY_A) as allowed:
        assert len(allowed.get_all_session_handles_for_user("user-1")) == 2


def test_api_key_file(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# rotated monthly\n{KEY_A}\n\n")
    daemon = start_daemon(sqlite_url, api_keys_file=keys_file)
    with daemon.client(api_key=KEY_A) as allowed:
        allowed.create_new_session("user-2")
    with daemon.client(api_key=KEY_B) as wrong, pytest.raises(sessiond.GeneralError):
        wrong.create_new_session("user-2")
    assert KEY_A not in daemon.log()


def test_api_key_with_newline_rejected(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{KEY_A}\n")
    daemon = start_daemon(sqlite_url, api_keys_file=keys_file)
    key_as_read = keys_file.read_text()

    with pytest.raises(sessiond.InvalidArgumentError) as raised:
        daemon.client(api_key=key_as_read)

    assert raised.value.field == "api_key"
    assert "strip the key" in raised.value.message
    assert KEY_A not in repr(raised.value)
    with daemon.client(api_key=key_as_read.strip()) as allowed:
        allowed.create_new_session("user-3")
    assert KEY_A not in daemon.log()


def test_health_open_without_api_key(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str
) -> None:
    daemon = start_daemon(sqlite_url, api_keys=KEY_A)
    with grpc.insecure_channel(daemon.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_short_api_key_rejected_at_start(tmp_path: Path, sqlite_url: str) -> None:
    daemon = DaemonProcess(sqlite_url, tmp_path / "short.log", api_keys="short")
    with pytest.raises(RuntimeError, match="api_keys"):
        daemon.start()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, bytes]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, written to tmp_path."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    items = {
        "ca.pem": _pem(_issue("test ca", ca_key, ca_key, "test ca", ca=True)),
        "server.pem": _pem(
            _issue("127.0.0.1", server_key, ca_key, "test ca", ca=False)
        ),
        "server.key": _pem(server_key),
        "client.pem": _pem(_issue("client", client_key, ca_key, "test ca", ca=False)),
        "client.key": _pem(client_key),
    }
    for name, data in items.items():
        (tmp_path / name).write_bytes(data)
    return items


def test_tls_listener(
    start_daemon: Callable[..., DaemonProcess],
    sqlite_url: str,
    tmp_path: Path,
    pki: dict[str, bytes],
) -> None:
    daemon = start_daemon(
        sqlite_url,
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.key",
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
    with daemon.client(credentials=credentials) as client:
        session = client.create_new_session("user-tls")
        assert client.get_all_session_handles_for_user("user-tls") == [session.handle]
    with (
        daemon.client(timeout=3) as plaintext,
        pytest.raises(sessiond.UnavailableError),
    ):
        plaintext.get_all_session_handles_for_user("user-tls")


def test_mutual_tls_requires_client_cert(
    start_daemon: Callable[..., DaemonProcess],
    sqlite_url: str,
    tmp_path: Path,
    pki: dict[str, bytes],
) -> None:
    daemon = start_daemon(
        sqlite_url,
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.key",
        tls_client_ca_file=tmp_path / "ca.pem",
    )
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"],
        private_key=pki["client.key"],
        certificate_chain=pki["client.pem"],
    )
    with daemon.client(credentials=with_cert) as client:
        client.create_new_session("user-mtls")
    without_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
    with daemon.client(credentials=without_cert, timeout=3) as client:
        with pytest.raises(sessiond.UnavailableError):
            client.create_new_session("user-mtls")


def test_unix_socket_mode(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str, tmp_path: Path
) -> None:
    socket_path = tmp_path / "sessiond.sock"
    daemon = start_daemon(
        sqlite_url, listen=f"unix:{socket_path}", unix_socket_mode="0600"
    )
    assert daemon.address == f"unix:{socket_path}"
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    with daemon.client() as client:
        session = client.create_new_session("user-unix")
        assert client.get_session_data(session.handle) == {}


def test_default_listens_on_loopback() -> None:
    from sessiond_server.config import Config

    assert Config().listen.startswith("127.0.0.1:")


def test_unix_path_not_a_socket_kept(tmp_path: Path, sqlite_url: str) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    daemon = DaemonProcess(sqlite_url, tmp_path / "victim.log", listen=f"unix:{victim}")
    with pytest.raises(RuntimeError, match="is not a socket"):
        daemon.start()
    assert victim.read_text() == "keep me"


def test_unix_socket_folder_missing(tmp_path: Path, sqlite_url: str) -> None:
    daemon = DaemonProcess(
        sqlite_url,
        tmp_path / "missing.log",
        listen=f"unix:{tmp_path / 'nope' / 's.sock'}",
    )
    with pytest.raises(RuntimeError, match="does not exist"):
        daemon.start()


def test_unix_socket_in_use_kept(
    start_daemon: Callable[..., DaemonProcess], sqlite_url: str, tmp_path: Path
) -> None:
    socket_path = tmp_path / "shared.sock"
    first = start_daemon(sqlite_url, listen=f"unix:{socket_path}")
    second = DaemonProcess(
        sqlite_url, tmp_path / "second.log", listen=f"unix:{socket_path}"
    )
    with pytest.raises(RuntimeError, match="another process is listening"):
        second.start()
    with first.client() as client:
        client.create_new_session("user-still-served")
