"""An HTTP listener serving the JWK Set at /.well-known/jwks.json.

Standard JWT libraries that take a JWKS URL can then verify access tokens
with no gRPC client. Responses carry Cache-Control and an ETag, so clients
refetch cheaply and only when the keys change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import UnavailableError
from .keys import KeyManager

logger = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
# Short enough that a replica's new key reaches clients well within the
# access token lifetime; clients also refetch when they meet an unknown kid.
CACHE_MAX_AGE_S = 300


def _handler_for(keys: KeyManager) -> type[BaseHTTPRequestHandler]:
    class JwksHandler(BaseHTTPRequestHandler):
        server_version = "sessiond"
        sys_version = ""
        # Seconds a connection may stay silent before it is closed, so idle
        # or half-sent requests cannot pile up threads.
        timeout = 10

        def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            if self.path.split("?", 1)[0] != JWKS_PATH:
                self._send(404, b'{"error":"not found"}', {})
                return
            try:
                jwks = keys.jwks()
            except UnavailableError as exc:
                logger.warning("JWK Set unavailable error=%s", exc)
                self._send(503, b'{"error":"signing keys unavailable"}', {})
                return
            body = json.dumps(jwks, separators=(",", ":")).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            headers = {
                "Cache-Control": f"public, max-age={CACHE_MAX_AGE_S}",
                "ETag": etag,
            }
            if self.headers.get("If-None-Match") == etag:
                self._send(304, b"", headers)
                return
            self._send(200, body, headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("jwks request " + format, *args)

    return JwksHandler


def start_jwks_server(host: str, port: int, keys: KeyManager) -> ThreadingHTTPServer:
    """Serve the JWK Set on host:port from a background thread; port 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), _handler_for(keys))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="jwks-http", daemon=True).start()
    return server
