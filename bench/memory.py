"""Resident set size of a daemon process as sessions are created."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from operations import SESSION_DATA, USER_PAYLOAD, ClientFor

# Upper bound on --rss-creates, so a mistyped count cannot run for hours.
MAX_CREATES = 1_000_000


@dataclass(frozen=True)
class RssSample:
    creates: int
    rss_kib: int
    elapsed_s: float


def read_rss_kib(pid: int) -> int:
    """Return VmRSS of process pid from /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line; is the process alive?")


def create_sessions(
    client_for: ClientFor, count: int, concurrency: int, timeout_s: float
) -> None:
    """Create count sessions from concurrency threads; raise TimeoutError past timeout_s."""
    if not 0 <= count <= MAX_CREATES:
        raise ValueError(f"count {count} is out of range 0 to {MAX_CREATES}")
    deadline = time.monotonic() + timeout_s
    errors: list[BaseException] = []

    def work(index: int, quota: int) -> None:
        client = client_for(index)
        try:
            for number in range(quota):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"creating {count} sessions took longer than {timeout_s:.0f} s"
                    )
                client.create_new_session(
                    f"rss-user-{index}-{number}", USER_PAYLOAD, SESSION_DATA
                )
        except BaseException as exc:
            errors.append(exc)

    quotas = [count // concurrency] * concurrency
    for index in range(count % concurrency):
        quotas[index] += 1
    threads = [
        threading.Thread(target=work, args=(index, quota))
        for index, quota in enumerate(quotas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def sample_rss(
    pid: int,
    client_for: ClientFor,
    checkpoints: list[int],
    *,
    concurrency: int,
    timeout_s: float,
) -> list[RssSample]:
    """Return RSS after startup (0 creates) and after each cumulative create count in checkpoints."""
    samples = [RssSample(0, read_rss_kib(pid), 0.0)]
    done = 0
    started = time.monotonic()
    for target in sorted(checkpoints):
        remaining = timeout_s - (time.monotonic() - started)
        create_sessions(client_for, target - done, concurrency, remaining)
        done = target
        samples.append(RssSample(done, read_rss_kib(pid), time.monotonic() - started))
    return samples
