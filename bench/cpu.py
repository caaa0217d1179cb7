"""CPU time that each process spends during a measurement, read from /proc.

Ops/s on a shared 2-core machine moves with whatever else runs, but the CPU
time a process spends per call moves much less. It also shows where a call's
cost lies: in the daemon, in the database server, or in the bench's own
client threads, and how that compares with an empty gRPC call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Names of the processes whose CPU time the bench reads. The bench process
# itself is CLIENT: its threads make the calls.
CLIENT = "bench client"
DAEMON = "daemon"
DATABASE = "database"
FLOOR_SERVER = "floor server"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """Return the user plus system CPU seconds of process pid, all its threads included.

    Raises:
        OSError: the process has exited or /proc is not mounted.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # The command name in parentheses may contain spaces, so split after it.
    fields = text[text.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of the line, and fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """CPU seconds of named processes, and of this one as CLIENT, between start() and stop()."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        if CLIENT in pids:
            raise ValueError(f"{CLIENT!r} names the bench process; use another name")
        self._pids = dict(pids)
        self._started: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        readings = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        readings[CLIENT] = own_cpu_s()
        return readings

    def start(self) -> None:
        self._started = self._read()

    def stop(self) -> dict[str, float]:
        """Return the CPU seconds each process spent since start()."""
        if not self._started:
            raise RuntimeError("CpuMeter.stop() called before start()")
        ended = self._read()
        return {name: ended[name] - self._started[name] for name in ended}
