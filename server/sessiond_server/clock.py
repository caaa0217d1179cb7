"""Wall-clock time in the units sessiond stores."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Return milliseconds since the Unix epoch as a Python int (no 32-bit wrap)."""
    return time.time_ns() // 1_000_000
