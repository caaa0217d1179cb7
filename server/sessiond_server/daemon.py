"""Build the daemon from a Config, serve gRPC, run background jobs, stop cleanly."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import prometheus_client
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sessiond.v1 import session_pb2

from . import clock, metrics, systemd, transport
from .config import Config
from .errors import UnavailableError
from .jwks_http import start_jwks_server
from .keys import KeyManager
from .migrations import LATEST_VERSION
from .revocations import RevocationFeed
from .revocations import retention_ms as revocation_retention_ms
from .sealing import Sealer, UnsealError
from .service import SessionServicer, add_session_service
from .sessions import REFRESH_SECRET_NAME, SessionManager
from .storage import Storage, open_storage
from .tokens import RefreshTokenCodec
from .transport import StartError
from .validation import MAX_HANDLES_PER_CALL

logger = logging.getLogger(__name__)

SERVICE_NAME = session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name
# The cleanup job deletes at most this many rows per transaction. Timed on
# sessions that bench/bulk_load.py loaded into an otherwise idle MariaDB
# 10.11 on a 2-core machine, a batch of 100 took 2 to 3 ms, and a batch of
# 1000 about 18 ms.
CLEANUP_BATCH_SIZE = 100
# The shortest pause of the cleanup job between two batches (see
# delete_in_batches).
CLEANUP_MIN_PAUSE_S = 0.01
# Every replica reloads keys this often, so one picks up a key another
# replica created (by rotation) within this bound.
KEY_RELOAD_INTERVAL_S = 60.0
HEALTH_CHECK_INTERVAL_S = 2.0
# A worker process (workers > 1) writes this line on stdout every
# HEARTBEAT_INTERVAL_S, so its supervisor can tell a frozen worker from a
# live one. The supervisor never passes the line on.
HEARTBEAT_LINE = "sessiond heartbeat"
HEARTBEAT_INTERVAL_S = 1.0


def max_message_bytes(config: Config) -> int:
    """Return the gRPC message size limit: room for the largest allowed request."""
    largest = max(
        config.max_session_data_bytes, config.max_access_token_payload_bytes * 3
    )
    return max(4 * 1024 * 1024, largest + 64 * 1024, MAX_HANDLES_PER_CALL * 64)


def delete_in_batches(
    delete_batch: Callable[[int], int],
    stop: threading.Event,
    *,
    batch_size: int = CLEANUP_BATCH_SIZE,
    min_pause_s: float = CLEANUP_MIN_PAUSE_S,
) -> int:
    """Call delete_batch(batch_size) until it deletes fewer rows or stop is set; return the total.

    After each full batch it waits on stop for as long as that batch took,
    and at least min_pause_s. So the job runs for at most half of its time,
    and its pauses grow when a busy database slows its batches down. When
    stop is set during a pause, it returns at once.
    """
    total = 0
    while not stop.is_set():
        started = time.monotonic()
        deleted = delete_batch(batch_size)
        total += deleted
        if deleted < batch_size:
            break
        stop.wait(max(min_pause_s, time.monotonic() - started))
    return total


def _interceptors(config: Config) -> list[grpc.ServerInterceptor[Any, Any]]:
    # The metrics interceptor runs first, so rejected calls are counted too.
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = [
        metrics.MetricsInterceptor()
    ]
    keys = config.api_key_list()
    if keys:
        logger.info("API keys required count=%d", len(keys))
        interceptors.append(transport.ApiKeyInterceptor(keys))
    return interceptors


def _start_http_servers(
    config: Config, keys: KeyManager, worker_index: int
) -> list[Any]:
    """Start the optional metrics and JWKS HTTP listeners; return the servers started.

    Worker i serves metrics on the configured port plus i (port 0 stays 0,
    a free port for each), and only worker 0 serves the JWK Set.
    """
    listeners = [
        ("metrics", config.metrics_listen),
        ("jwks", config.jwks_listen if worker_index == 0 else ""),
    ]
    servers: list[Any] = []
    for name, listen in listeners:
        if not listen:
            continue
        host, port = listen.rsplit(":", 1)
        if name == "metrics" and int(port) != 0:
            port = str(int(port) + worker_index)
            listen = f"{host}:{port}"
        server: Any
        try:
            if name == "metrics":
                server, _thread = prometheus_client.start_http_server(
                    int(port), addr=host.strip("[]"), registry=metrics.REGISTRY
                )
            else:
                server = start_jwks_server(host.strip("[]"), int(port), keys)
        except OSError as exc:
            for started in servers:
                started.shutdown()
            raise StartError(
                f"{name}_listen: cannot bind {listen}: {exc.strerror}"
            ) from None
        logger.info("%s listening address=%s:%d", name, host, server.server_port)
        servers.append(server)
    return servers


def open_and_migrate(config: Config) -> Storage:
    storage = open_storage(
        config.database_url,
        pool_size=config.db_pool_size,
        timeout_s=config.db_timeout_s,
    )
    try:
        if config.migrate_on_start:
            storage.migrate(clock.now_ms())
        else:
            version = storage.schema_version()
            if version < LATEST_VERSION:
                raise StartError(
                    f"database schema is at version {version}, the daemon needs {LATEST_VERSION}; "
                    "run `sessiond migrate` or set migrate_on_start = true"
                )
    except BaseException:
        storage.close()
        raise
    return storage


@dataclass
class Daemon:
    config: Config
    storage: Storage
    keys: KeyManager
    server: grpc.Server
    health: health.HealthServicer
    address: str
    _stop: threading.Event
    feed: RevocationFeed
    _serving: bool = False
    _http_servers: list[Any] = field(default_factory=list)
    # The index of this worker process when config.workers > 1, else 0.
    worker_index: int = 0

    @classmethod
    def start(cls, config: Config, worker_index: int = 0) -> Daemon:
        storage = open_and_migrate(config)
        try:
            return cls._start(config, storage, worker_index)
        except BaseException:
            storage.close()
            raise

    @classmethod
    def _start(cls, config: Config, storage: Storage, worker_index: int) -> Daemon:
        sealer = Sealer(config.key_encryption_key_bytes())
        if not sealer.enabled:
            logger.warning(
                "signing keys and the refresh token secret are stored in the clear; "
                "set key_encryption_key_file to encrypt them"
            )
        keys = KeyManager.for_config(config, storage)
        try:
            keys.reload()
            context = f"secret {REFRESH_SECRET_NAME}"
            stored = storage.get_or_create_secret(
                REFRESH_SECRET_NAME,
                sealer.seal(secrets.token_bytes(32), context),
                clock.now_ms(),
            )
            secret = sealer.open(stored, context)
        except UnsealError as exc:
            raise StartError(str(exc)) from None
        feed = RevocationFeed(
            storage,
            retention_ms=revocation_retention_ms(
                config.access_token_validity_s, config.clock_skew_leeway_s
            ),
            clock=clock.now_ms,
        )
        sessions = SessionManager(
            config,
            storage,
            keys,
            RefreshTokenCodec(secret),
            clock.now_ms,
            on_revoke=feed.wake,
        )
        limit = max_message_bytes(config)
        server = grpc.server(
            # Each revocation stream keeps a thread for as long as it is
            # open, so those threads come on top of grpc_workers.
            futures.ThreadPoolExecutor(
                max_workers=config.grpc_workers + config.max_revocation_watchers,
                thread_name_prefix="grpc",
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Off for a single process, so a port that another process
                # has bound fails the start. Worker processes share the port.
                ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
            ],
            interceptors=_interceptors(config),
        )
        add_session_service(SessionServicer(sessions, keys, config, feed), server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        feed.start()
        http_servers = _start_http_servers(config, keys, worker_index)
        try:
            address = transport.bind(server, config)
        except StartError:
            for http_server in http_servers:
                http_server.shutdown()
            feed.close()
            raise
        server.start()
        transport.set_socket_mode(config)
        daemon = cls(
            config,
            storage,
            keys,
            server,
            health_servicer,
            address,
            threading.Event(),
            feed,
            worker_index=worker_index,
        )
        daemon._http_servers = http_servers
        metrics.track_pool(storage.pool_stats)
        daemon._set_serving(True)
        daemon._start_jobs()
        logger.info("listening address=%s", address)
        systemd.notify(f"READY=1\nSTATUS=listening on {address}")
        return daemon

    def _start_jobs(self) -> None:
        jobs = [
            ("key-reload", KEY_RELOAD_INTERVAL_S, self._reload_keys),
            ("health", HEALTH_CHECK_INTERVAL_S, self._check_health),
        ]
        # One cleanup job per daemon is enough, so other workers skip it.
        if self.worker_index == 0:
            jobs.append(
                ("cleanup", float(self.config.cleanup_interval_s), self._cleanup)
            )
        # With workers > 1 this process is a worker, because the supervisor
        # never starts a Daemon.
        if self.config.workers > 1:
            jobs.append(("heartbeat", HEARTBEAT_INTERVAL_S, self._write_heartbeat))
        watchdog_s = systemd.watchdog_interval_s()
        if watchdog_s is not None:
            jobs.append(("watchdog", watchdog_s, self._ping_watchdog))
        for name, interval, job in jobs:
            threading.Thread(
                target=self._every, args=(name, interval, job), name=name, daemon=True
            ).start()

    def _every(self, name: str, interval_s: float, job: Callable[[], None]) -> None:
        while not self._stop.wait(interval_s):
            try:
                job()
            except UnavailableError as exc:
                # An unreachable database is an expected condition, and the
                # health job already reports it, so no traceback here.
                logger.warning(
                    "background job failed, database unavailable job=%s error=%s",
                    name,
                    exc,
                )
            except Exception:
                logger.exception("background job failed job=%s", name)

    def _reload_keys(self) -> None:
        self.keys.reload()

    def _check_health(self) -> None:
        """Report NOT_SERVING while the database fails a ping, and SERVING again once it passes."""
        try:
            self.storage.ping()
            serving = True
        except Exception as exc:
            serving = False
            if self._serving:
                logger.warning(
                    "database unreachable, health set to NOT_SERVING error=%s", exc
                )
        if serving and not self._serving:
            logger.info("database reachable again, health set to SERVING")
        self._set_serving(serving)

    def _set_serving(self, serving: bool) -> None:
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _ping_watchdog(self) -> None:
        systemd.notify("WATCHDOG=1")

    def _write_heartbeat(self) -> None:
        """Write HEARTBEAT_LINE to stdout, the supervisor's pipe.

        One os.write of a line shorter than PIPE_BUF reaches the pipe whole,
        so it never splits the listening line that the main thread prints.
        NOTE: a plain thread writes the line, so it shows only that this
        process runs Python code. It catches a stopped process and a C call
        that holds the GIL, but not a deadlock among the gRPC handler
        threads or a stuck gRPC poller, because this thread still runs then.
        """
        try:
            os.write(sys.stdout.fileno(), f"{HEARTBEAT_LINE}\n".encode())
        except OSError as exc:
            # The supervisor has exited. The main thread finds its stdin
            # closed within 0.5 s and stops this worker.
            logger.warning("heartbeat write failed error=%s", exc)

    def _cleanup(self) -> None:
        """Delete expired sessions, old revocation log rows and retired keys.

        Rows go in small batches with a pause after each (see
        delete_in_batches), and a stopping daemon ends the job at the next
        batch or pause.
        """

        def delete_sessions(batch_size: int) -> int:
            deleted = self.storage.delete_expired_sessions(clock.now_ms(), batch_size)
            metrics.EXPIRED_SESSIONS_DELETED.inc(deleted)
            return deleted

        started = time.monotonic()
        total = delete_in_batches(delete_sessions, self._stop)
        if total:
            logger.info(
                "expired sessions deleted count=%d duration_s=%.1f",
                total,
                time.monotonic() - started,
            )
        oldest_ms = clock.now_ms() - self.feed.retention_ms
        revocations = delete_in_batches(
            lambda batch_size: self.storage.delete_revocations(oldest_ms, batch_size),
            self._stop,
        )
        if revocations:
            logger.info("revocation log rows deleted count=%d", revocations)
        if self._stop.is_set():
            return
        retired = self.keys.delete_retired()
        if retired:
            logger.info("retired signing keys deleted count=%d", retired)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, let running ones finish within the grace period, close the pool."""
        logger.info(
            "stopping grace_s=%s",
            self.config.shutdown_grace_s if grace_s is None else grace_s,
        )
        systemd.notify("STOPPING=1")
        self._stop.set()
        self.health.enter_graceful_shutdown()
        # Revocation streams never end on their own: end them first, so the
        # grace period is left to unary calls.
        self.feed.close()
        self.server.stop(
            self.config.shutdown_grace_s if grace_s is None else grace_s
        ).wait()
        for http_server in self._http_servers:
            http_server.shutdown()
        self.storage.close()
        logger.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()
