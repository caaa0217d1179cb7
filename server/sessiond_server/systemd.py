"""systemd service notifications (sd_notify) over the NOTIFY_SOCKET datagram socket.

Implemented with the standard library: the protocol is one datagram of
newline-separated KEY=VALUE lines, described in the sd_notify(3) man page.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# The variables through which systemd lets a process notify it. A child
# process without them cannot send READY=1 or watchdog pings in its
# parent's name.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify(state: str) -> bool:
    """Send state (such as READY=1) to systemd; return False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # A leading @ names a socket in the abstract namespace.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        logger.warning("systemd notification failed state=%s error=%s", state, exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Return how often to send WATCHDOG=1, half of WATCHDOG_USEC, or None when unset."""
    raw = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not raw or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(raw) / 1_000_000 / 2
    except ValueError:
        logger.warning("WATCHDOG_USEC is not an integer value=%s", raw)
        return None


def environment_without_notify(environ: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of environ without NOTIFY_VARIABLES, for child processes."""
    return {
        name: value for name, value in environ.items() if name not in NOTIFY_VARIABLES
    }
