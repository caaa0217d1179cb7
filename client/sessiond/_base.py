"""The shared base of SessionClient and AsyncSessionClient: settings, channel options, the stub."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ._arguments import check_api_key, check_int, check_text
from ._calls import Call, SessionFields
from ._local import DEFAULT_CACHE_SIZE, LocalVerifier
from ._retry import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF_MAX_S,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
)
from .errors import GeneralError
from .v1 import session_pb2_grpc

MAX_RECEIVE_MESSAGE_BYTES = 65 * 1024 * 1024
API_KEY_METADATA = "x-api-key"
# Keepalive pings, only while calls are in flight, after 5 minutes without
# activity; 20 s without an answer closes the connection. The daemon keeps
# gRPC's server defaults: pings closer than 5 minutes apart
# (grpc.http2.min_recv_ping_interval_without_data_ms) or with no call in
# flight (grpc.keepalive_permit_without_calls = 0) are "strikes", and the
# third strike (grpc.http2.max_ping_strikes = 2) closes the connection with
# GOAWAY too_many_pings. These values stay within that policy, and at most 2
# pings without data between them (the client's default, set explicitly)
# could never reach a third strike.
KEEPALIVE_TIME_MS = 300_000
KEEPALIVE_TIMEOUT_MS = 20_000
MAX_PINGS_WITHOUT_DATA = 2
# A bound that only catches typos.
MAX_CONNECTIONS = 64


def channel_options_with_defaults(
    options: Sequence[tuple[str, Any]], policy: RetryPolicy | None = None
) -> list[tuple[str, Any]]:
    """Return options plus defaults for any the caller did not set.

    - The receive limit matches the largest session data a daemon may be
      configured to accept (64 MiB) plus room for the rest of the message,
      where gRPC's own default of 4 MiB would reject large data on read.
    - Keepalive: see KEEPALIVE_TIME_MS.
    - Reconnection: after a failed connection attempt the channel tries
      again after ``retry_backoff_s``, growing to ``retry_backoff_max_s``,
      the schedule of the client's retries. gRPC's defaults (1 s growing to
      120 s) would leave the channel failing every call at once for up to
      two minutes after a daemon comes back, and a retry made before the
      channel reconnects fails without reaching the daemon.
    """
    policy = policy or RetryPolicy()
    given = {name for name, _ in options}
    defaults = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", MAX_PINGS_WITHOUT_DATA),
        ("grpc.initial_reconnect_backoff_ms", round(policy.backoff_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", round(policy.backoff_max_s * 1000)),
    ]
    return list(options) + [item for item in defaults if item[0] not in given]


def open_blocking_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]],
) -> grpc.Channel:
    """Open a grpc.Channel, over TLS when credentials are given."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


class ClientBase:
    """The constructor and the stub lookup of both clients.

    The arguments are documented on ``SessionClient``. A subclass opens
    its kind of channel in ``_open_channel``.
    """

    # Whether local verification may wait for a JWK Set fetch; an event
    # loop must not.
    _local_blocking = True

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
        local_verification: bool = False,
        local_cache_size: int = DEFAULT_CACHE_SIZE,
        connections: int = 1,
    ) -> None:
        check_text(target, "target")
        check_api_key(api_key)
        check_int(
            connections,
            "connections",
            f"an int from 1 to {MAX_CONNECTIONS}",
            1,
            MAX_CONNECTIONS,
        )
        check_int(
            local_cache_size,
            "local_cache_size",
            "an int, 0 or more (0 keeps no verified tokens)",
            0,
        )
        self._policy = RetryPolicy(
            timeout_s=timeout,
            retries=retries,
            backoff_s=retry_backoff_s,
            backoff_max_s=retry_backoff_max_s,
        )
        self._metadata = ((API_KEY_METADATA, api_key),) if api_key else ()
        channel_options = channel_options_with_defaults(options, self._policy)
        if connections > 1 and all(
            name != "grpc.use_local_subchannel_pool" for name, _ in options
        ):
            # Channels to one target share one TCP connection through gRPC's
            # global subchannel pool, unless each has a pool of its own.
            channel_options.append(("grpc.use_local_subchannel_pool", 1))
        self._channels = [
            self._open_channel(target, credentials, channel_options)
            for _ in range(connections)
        ]
        self._stubs = [
            session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
            for channel in self._channels
        ]
        # Calls take the connections in turn.
        self._turns = itertools.count()
        self._local: LocalVerifier | None = None
        if local_verification:
            self._local = LocalVerifier(
                open_blocking_channel(
                    target, credentials, channel_options_with_defaults(options)
                ),
                self._metadata,
                timeout,
                cache_size=local_cache_size,
            )
        self._closed = False
        # close() may be called from several threads at once.
        self._close_lock = threading.Lock()

    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> Any:
        raise NotImplementedError

    def wait_for_local_verification(self, timeout: float) -> bool:
        """Wait until local verification is available; return whether it is.

        It is available once the revocation stream is current, and only with
        ``local_verification=True``.
        """
        return self._local is not None and self._local.wait_until_current(timeout)

    def _verify_locally(
        self, access_token: str, anti_csrf_token: str | None, check_database: bool
    ) -> SessionFields | None:
        """Return the session of a token verified in process, or None to ask the daemon."""
        if self._local is None or check_database:
            return None
        # The request to the daemon checks its arguments as it is built, and
        # a token checked here gets the same errors.
        check_text(access_token, "access_token")
        check_text(anti_csrf_token, "anti_csrf_token", optional=True)
        claims = self._local.verify(
            access_token, anti_csrf_token, blocking=self._local_blocking
        )
        if claims is None:
            return None
        return SessionFields(
            handle=claims.session_handle,
            user_id=claims.user_id,
            access_token_payload=dict(claims.payload),
            access_token=None,
            refresh_token=None,
            anti_csrf_token=None,
        )

    def _remote_check_database(self, check_database: bool) -> bool:
        """Return the check_database flag of a verify that goes to the daemon.

        With local verification on, a token goes to the daemon when the
        verifier cannot vouch for it, for example while the revocation
        stream is down. A stateless check there would accept a session
        revoked meanwhile for as long as its token lives, so the daemon
        reads the session row too.
        """
        return check_database or self._local is not None

    def _verified_remotely(self, access_token: str, check_database: bool) -> None:
        if self._local is not None and not check_database:
            self._local.remember_verified(access_token)

    def _revoked(self, handles: Sequence[str]) -> None:
        if self._local is not None:
            self._local.note_revoked(list(handles))

    def _close_local(self) -> None:
        if self._local is not None:
            self._local.close()

    def _method(self, call: Call[Any]) -> Callable[..., Any]:
        """The stub method that sends call, on an open client."""
        if self._closed:
            raise GeneralError(
                f"the client is closed; create a new {type(self).__name__}"
            )
        stubs = self._stubs
        stub = stubs[next(self._turns) % len(stubs)] if len(stubs) > 1 else stubs[0]
        method: Callable[..., Any] = getattr(stub, call.rpc)
        return method
