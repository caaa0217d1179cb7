"""Throughput through one daemon process against calls spread over several processes.

Two setups spread the calls. Replicas: several daemons on the same
database, which the SDK reaches through one gRPC target that lists every
address (``ipv4:127.0.0.1:P1,127.0.0.1:P2,...``) with the round_robin load
balancing policy, which sends each call to the next replica. Without that
option gRPC uses pick_first and sends every call to the first address that
connects. Workers: one daemon with worker processes on one port, which the
SDK reaches through several connections (its connections setting), because
the kernel gives each connection to one worker. The CPU time that each
process used during a measurement shows how the calls were spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import operations
from harness import Measurement, WorkerSetup
from operations import ClientFor

REPLICA_OPERATIONS = ("create", "verify (remote)", "get data")
WORKER_OPERATIONS = ("create", "verify (remote)", "get data", "update data")
ROUND_ROBIN_OPTIONS: list[tuple[str, Any]] = [("grpc.lb_policy_name", "round_robin")]
ONE_DAEMON = "one daemon"
ALL_REPLICAS = "all replicas"


@dataclass
class ReplicaRun:
    """One daemon process against the same calls spread over several processes.

    replicas is the number of processes the calls were spread over:
    replica daemons or worker processes.
    """

    replicas: int
    concurrency: int
    rounds: int
    target: str
    operations: tuple[str, ...] = REPLICA_OPERATIONS
    # The SDK connections setting of the spread setup's client.
    connections: int = 1
    # The faster round of each operation, keyed by (ONE_DAEMON or
    # ALL_REPLICAS, operation name).
    measurements: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    # Each replica's share of the replicas' CPU time during the ALL_REPLICAS
    # measurement that was kept.
    cpu_shares: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def ratio(self, operation: str) -> float | None:
        """Return ops/s through the replicas divided by ops/s through one daemon."""
        one_daemon = self.measurements.get((ONE_DAEMON, operation))
        all_replicas = self.measurements.get((ALL_REPLICAS, operation))
        if one_daemon is None or all_replicas is None or one_daemon.ops_per_s <= 0:
            return None
        return all_replicas.ops_per_s / one_daemon.ops_per_s


def round_robin_target(addresses: Sequence[str]) -> str:
    """Return one gRPC target naming every host:port address, for round_robin."""
    if any(address.startswith("[") for address in addresses):
        return "ipv6:" + ",".join(addresses)
    return "ipv4:" + ",".join(addresses)


def replica_setups(client_for: ClientFor) -> dict[str, Callable[[], WorkerSetup]]:
    return {
        "create": lambda: operations.create(client_for, []),
        "verify (remote)": lambda: operations.verify(client_for, check_database=False),
        "get data": lambda: operations.get_data(client_for),
        "update data": lambda: operations.update_data(client_for),
    }


def cpu_shares(before: Sequence[float], after: Sequence[float]) -> tuple[float, ...]:
    used = [end - start for start, end in zip(before, after, strict=True)]
    total = sum(used)
    if total <= 0:
        return tuple(0.0 for _ in used)
    return tuple(value / total for value in used)
