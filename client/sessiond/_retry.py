"""Deadlines and retries, shared by both clients; the waiting itself is the client's.

Each call has one deadline, ``timeout`` seconds after it starts, which
covers every attempt and every wait between attempts. An idempotent call
(``Call.idempotent``) that fails with UNAVAILABLE because the daemon could
not be reached is sent again, up to ``retries`` more times, after a wait
that doubles per retry from ``retry_backoff_s`` up to
``retry_backoff_max_s``, with jitter: a random time between half of that
and all of it. A retry whose wait would end past the deadline is not made;
the call then raises at once.

UNAVAILABLE that the daemon itself reports (its database is down, with
ErrorInfo reason UNAVAILABLE) is not retried: the daemon has already
retried the database, and resending would multiply that load.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ._arguments import (
    check_int,
    check_number,
    out_of_range_error,
    with_argument_names,
)
from .errors import ConflictError, from_rpc_error

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_BACKOFF_MAX_S",
    "DEFAULT_RETRY_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "Attempts",
    "ConflictRetries",
    "RetryPolicy",
]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF_S = 0.1
DEFAULT_RETRY_BACKOFF_MAX_S = 1.0
# modify_session_data waits a random time between attempts, up to this many
# seconds after the first conflict, doubling per attempt up to the maximum.
CONFLICT_BACKOFF_FIRST_S = 0.005
CONFLICT_BACKOFF_MAX_S = 0.1
# The largest max_attempts of modify_session_data. The waits alone between
# 1000 attempts add up to about 50 s on average (an estimate: most waits are
# random times up to 100 ms), so a writer that loses that many races needs
# less contention, not more attempts. The bound rejects values such as
# 10**9 that would retry for days.
MAX_CONFLICT_ATTEMPTS = 1000
# The largest timeout, retry_backoff_s and retry_backoff_max_s: one day. gRPC
# takes the reconnect backoff in milliseconds as a C int (at most about 24.8
# days), and with grpcio 1.85 a call whose timeout is 10**10 s fails at once.
MAX_SETTING_S = 86_400
# The daemon's own status, with ErrorInfo; a transport failure has none.
STATUS_DETAILS_METADATA = "grpc-status-details-bin"


def backoff_ceiling_s(first_s: float, max_s: float, retry: int) -> float:
    """The longest wait before retry number ``retry`` (1 for the first)."""
    return float(min(max_s, first_s * 2 ** (retry - 1)))


def _reported_by_daemon(error: grpc.Call) -> bool:
    return any(
        key == STATUS_DETAILS_METADATA for key, _ in error.trailing_metadata() or ()
    )


def is_retryable(error: grpc.RpcError) -> bool:
    """True for UNAVAILABLE from the transport, or CANCELLED by a daemon shutting down.

    Either way the daemon was not reached or went away. The SDK never
    cancels a call it waits for, so a CANCELLED status comes from the daemon.
    """
    return (
        isinstance(error, grpc.Call)
        and error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        and not _reported_by_daemon(error)
    )


@dataclass(frozen=True)
class RetryPolicy:
    """The deadline and retry settings of a client, checked once at construction."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S

    def __post_init__(self) -> None:
        seconds = f"a number of seconds above 0 and at most {MAX_SETTING_S}"
        max_seconds = f"a number of seconds from retry_backoff_s to {MAX_SETTING_S}"
        check_number(self.timeout_s, "timeout", seconds)
        check_int(self.retries, "retries", "an int, 0 or more", 0)
        check_number(self.backoff_s, "retry_backoff_s", seconds)
        check_number(self.backoff_max_s, "retry_backoff_max_s", max_seconds)
        # Each comparison is False for NaN, so NaN is out of range.
        ranges = [
            ("timeout", 0 < self.timeout_s <= MAX_SETTING_S, seconds),
            ("retry_backoff_s", 0 < self.backoff_s <= MAX_SETTING_S, seconds),
            (
                "retry_backoff_max_s",
                self.backoff_s <= self.backoff_max_s <= MAX_SETTING_S,
                max_seconds,
            ),
        ]
        for name, in_range, expected in ranges:
            if not in_range:
                raise out_of_range_error(name, expected)

    def attempts(
        self, idempotent: bool, clock: Callable[[], float] = time.monotonic
    ) -> Attempts:
        """Start the deadline of one call."""
        return Attempts(self, idempotent=idempotent, clock=clock)


class Attempts:
    """The attempts of one call: the time each may take, and the wait before the next.

    The client sends each attempt with ``timeout_s()`` and, when it fails,
    waits ``wait_after(error)`` seconds before the next, or lets the
    SessionError that method raises propagate.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        idempotent: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._deadline = clock() + policy.timeout_s
        self._retries_left = policy.retries if idempotent else 0
        self._retries_made = 0

    def timeout_s(self) -> float:
        """Return what is left of the call's deadline, for the next attempt."""
        return max(0.0, self._deadline - self._clock())

    def wait_after(self, error: grpc.RpcError) -> float:
        """Return the seconds to wait before resending, or raise error as a SessionError."""
        if self._retries_left > 0 and is_retryable(error):
            policy = self._policy
            ceiling = backoff_ceiling_s(
                policy.backoff_s, policy.backoff_max_s, self._retries_made + 1
            )
            wait_s = random.uniform(ceiling / 2, ceiling)
            if wait_s < self.timeout_s():
                self._retries_left -= 1
                self._retries_made += 1
                return wait_s
        raise with_argument_names(from_rpc_error(error)) from None


class ConflictRetries:
    """The attempts of ``modify_session_data``: how long to wait after each conflict.

    After a conflict the wait is a random time of up to 5 ms, doubling per
    attempt to at most 100 ms, so that colliding writers spread out.
    """

    def __init__(self, max_attempts: int) -> None:
        check_int(
            max_attempts,
            "max_attempts",
            f"an int from 1 to {MAX_CONFLICT_ATTEMPTS}",
            1,
            MAX_CONFLICT_ATTEMPTS,
        )
        self._max_attempts = max_attempts
        self._attempt = 1

    def wait_after(self, conflict: ConflictError) -> float:
        """Return the seconds to wait before the next attempt, or raise conflict after the last."""
        if self._attempt >= self._max_attempts:
            raise conflict
        ceiling = backoff_ceiling_s(
            CONFLICT_BACKOFF_FIRST_S, CONFLICT_BACKOFF_MAX_S, self._attempt
        )
        self._attempt += 1
        return random.uniform(0, ceiling)
