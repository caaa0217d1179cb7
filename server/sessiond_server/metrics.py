"""Prometheus metrics, served over HTTP when metrics_listen is set.

One registry per process, so code anywhere in the daemon records into the
same counters; nothing is exported unless the daemon starts the HTTP
listener. Labels never carry tokens, user ids or session data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS = Counter(
    "sessiond_grpc_calls",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
CALL_SECONDS = Histogram(
    "sessiond_grpc_call_duration_seconds",
    "Time spent handling a gRPC call, by method.",
    ["method"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
    ),
    registry=REGISTRY,
)
SESSION_EVENTS = Counter(
    "sessiond_session_events",
    "Session lifecycle events: created, refreshed, revoked, theft_detected.",
    ["event"],
    registry=REGISTRY,
)
DATABASE_RETRIES = Counter(
    "sessiond_database_retries",
    "Database transactions run again after a deadlock, lock wait timeout or lost connection.",
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "sessiond_database_errors",
    "Database calls that failed, by kind.",
    ["kind"],
    registry=REGISTRY,
)
KEY_ROTATIONS = Counter(
    "sessiond_signing_key_rotations",
    "Signing keys this daemon created.",
    registry=REGISTRY,
)
EXPIRED_SESSIONS_DELETED = Counter(
    "sessiond_expired_sessions_deleted",
    "Expired sessions deleted by the cleanup job.",
    registry=REGISTRY,
)
POOL_CONNECTIONS = Gauge(
    "sessiond_database_pool_connections",
    "Database pool connections by state (in_use, idle).",
    ["state"],
    registry=REGISTRY,
)


def track_pool(stats: Callable[[], tuple[int, int]]) -> None:
    """Report pool use at scrape time from stats(), which returns (in use, size)."""
    POOL_CONNECTIONS.labels("in_use").set_function(lambda: stats()[0])
    POOL_CONNECTIONS.labels("idle").set_function(lambda: stats()[1] - stats()[0])


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Count unary calls by method and status code, and time them.

    The wrapped handler of each method, with its metric children, is built
    on the method's first call and reused: building it, and looking up
    labels, on every call cost a daemon about 15 us of CPU per call.
    """

    def __init__(self) -> None:
        # Method path to (the handler it wrapped, the wrapped handler).
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: Any
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _observed_handler(details.method.rsplit("/", 1)[-1], handler)
        with self._lock:
            self._wrapped[details.method] = (handler, wrapped)
        return wrapped


def _observed_handler(method: str, handler: Any) -> Any:
    """Return a unary handler that runs handler and records its call in CALLS and CALL_SECONDS."""
    behaviour = handler.unary_unary
    succeeded = CALLS.labels(method, grpc.StatusCode.OK.name)
    duration = CALL_SECONDS.labels(method)

    def observed(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = False
        try:
            return behaviour(request, context)
        except BaseException:
            failed = True
            raise
        finally:
            code = context.code()  # type: ignore[attr-defined]
            if code is None and not failed:
                succeeded.inc()
            else:
                CALLS.labels(method, (code or grpc.StatusCode.UNKNOWN).name).inc()
            duration.observe(time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(
        observed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
