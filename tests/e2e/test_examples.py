from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sessiond_testing import DaemonProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_change_session_data_example(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "change_session_data.py"), daemon.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cart: ['book', 'pen']" in result.stdout
    assert "stored: {'cart': ['book', 'pen']}" in result.stdout
    assert "logged out: the session data is gone" in result.stdout
