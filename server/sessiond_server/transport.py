"""Listeners and access control: TCP or unix socket, TLS, mutual TLS, API keys."""

from __future__ import annotations

import hmac
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from .config import Config
from .errors import SessiondError, error_status

logger = logging.getLogger(__name__)


class StartError(Exception):
    """The daemon cannot start; the message names the cause."""


API_KEY_METADATA = "x-api-key"
# Load balancers and orchestrators probe health without credentials.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class ApiKeyError(SessiondError):
    reason = "INVALID_API_KEY"
    code = grpc.StatusCode.UNAUTHENTICATED


class ApiKeyInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Reject calls whose x-api-key metadata matches none of the configured keys.

    Every configured key is compared, in constant time, so the time taken
    does not reveal which key, or how much of one, matched.
    """

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    def _accepts(self, presented: bytes) -> bool:
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: Any
    ) -> Any:
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return continuation(details)
        presented = b""
        for name, value in details.invocation_metadata or ():
            if name == API_KEY_METADATA:
                presented = value.encode("utf-8") if isinstance(value, str) else value
                break
        if presented and self._accepts(presented):
            return continuation(details)
        message = (
            "API key is missing; send it in x-api-key metadata"
            if not presented
            else "API key is invalid"
        )
        logger.warning(
            "call rejected method=%s reason=%s",
            details.method,
            "missing" if not presented else "invalid",
        )
        return _rejecting_handler(continuation(details), ApiKeyError(message))


def _rejecting_handler(handler: Any, error: SessiondError) -> Any:
    """Return a handler of the same streaming kind as handler that fails with error."""
    if handler is None:
        return None

    def reject(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(error_status(error))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """Return TLS credentials from the config, requiring client certificates when a client CA is set."""
    if not config.tls_cert_file:
        return None
    pair = (
        Path(config.tls_key_file).read_bytes(),
        Path(config.tls_cert_file).read_bytes(),
    )
    if config.tls_client_ca_file:
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=Path(config.tls_client_ca_file).read_bytes(),
            require_client_auth=True,
        )
    return grpc.ssl_server_credentials([pair])


def bind(server: grpc.Server, config: Config) -> str:
    """Bind the listen address and return it with the real port (port 0 picks a free one)."""
    listen = config.listen
    credentials = server_credentials(config)

    def add_port(address: str) -> int:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))

    if listen.startswith("unix:"):
        _remove_stale_socket(listen[len("unix:") :])
        if add_port(listen) == 0:
            raise StartError(f"listen: cannot bind {listen}")
        return listen
    try:
        port = add_port(listen)
    except RuntimeError as exc:
        raise StartError(f"listen: cannot bind {listen}: {exc}") from None
    if port == 0:
        raise StartError(f"listen: cannot bind {listen}; is the port in use?")
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by an earlier run; refuse to touch any other file."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise StartError(f"listen: folder {folder} of the unix socket does not exist")
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise StartError(
            f"listen: {path} exists and is not a socket; choose another path or remove it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nothing listens: a leftover of a stopped daemon
    else:
        raise StartError(f"listen: another process is listening on {path}")
    finally:
        probe.close()


def set_socket_mode(config: Config) -> None:
    """Apply unix_socket_mode to the unix socket, once the server has created it."""
    if config.listen.startswith("unix:"):
        os.chmod(config.listen[len("unix:") :], int(config.unix_socket_mode, 8))
