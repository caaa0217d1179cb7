"""Headless Chromium uses the example web app through a whole session.

tests/browser/webapp.mjs drives Debian's Chromium (/usr/bin/chromium) with
playwright-core, which downloads no browser of its own. It logs in through
the example app's form and changes the session data. Then it waits for the
2-second access token to expire and acts again, which the page completes
after a refresh and without a new login. Last it reloads and logs out. It
checks the cookies after each step.

Playwright over Selenium: it needs only an npm package with a committed
lockfile, as tests/node does, and no chromedriver whose version must match
the browser's. It also reports cookie attributes and every response, which
the checks read.

When /usr/bin/chromium is missing, the fixture installs Debian's chromium
package under CI=true as root (apt-get update, then apt-get install), and
fails if that fails. Elsewhere it skips the test with the install command in the message.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sessiond_testing import IN_CI, DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
BROWSER_SCRIPT = BROWSER_DIR / "webapp.mjs"
WEBAPP = ROOT / "examples" / "webapp" / "app.py"
CHROMIUM = Path(os.environ.get("SESSIOND_TEST_CHROMIUM", "/usr/bin/chromium"))
MIN_NODE_MAJOR = 20
APT_UPDATE_TIMEOUT_S = 300
APT_INSTALL_TIMEOUT_S = 900
NPM_CI_TIMEOUT_S = 120
WEBAPP_START_TIMEOUT_S = 30
BROWSER_RUN_TIMEOUT_S = 90
USER_ID = "browser-user"


def _missing(message: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where everything must be present."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _apt_get(*args: str, timeout_s: int) -> None:
    command = ["apt-get", *args]
    try:
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} timed out after {timeout_s} s")
    if finished.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed with exit code {finished.returncode}:\n"
            f"{finished.stderr[-3000:]}"
        )


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed here under CI=true as root when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    how = "apt-get install chromium (Debian), or set SESSIOND_TEST_CHROMIUM"
    if not IN_CI:
        pytest.skip(f"{CHROMIUM} is missing; install it with {how}")
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing and CI does not run as root; {how}")
    started = time.monotonic()
    _apt_get("update", "-qq", timeout_s=APT_UPDATE_TIMEOUT_S)
    _apt_get(
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "chromium",
        timeout_s=APT_INSTALL_TIMEOUT_S,
    )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium, but {CHROMIUM} is still missing")
    print(f"installed chromium in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return CHROMIUM


def _npm_ci(npm_path: str, cache_mode: str) -> subprocess.CompletedProcess[str]:
    # --ignore-scripts: playwright-core has no install script, and none is needed.
    return subprocess.run(
        [npm_path, "ci", cache_mode, "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/browser/node_modules installed by ``npm ci``.

    The first ``npm ci`` is ``--offline``, so a warm npm cache installs with
    no registry request. Only when the cache lacks a package does a second
    one fetch it.
    """
    node_path = shutil.which("node")
    npm_path = shutil.which("npm")
    if node_path is None or npm_path is None:
        _missing(
            "node or npm is not on PATH; install Node.js 20 or newer with npm "
            "(Debian: apt-get install nodejs npm) to run the browser test"
        )
    version = subprocess.run(
        [node_path, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        _missing(f"node {version} is too old; the browser test needs Node.js 20+")
    installed = _npm_ci(npm_path, "--offline")
    if installed.returncode != 0:
        installed = _npm_ci(npm_path, "--prefer-offline")
    if installed.returncode != 0:
        pytest.fail(
            f"npm ci in {BROWSER_DIR} failed with exit code {installed.returncode}; "
            f"check that the npm registry is reachable:\n{installed.stderr}"
        )
    return node_path


class WebappProcess:
    """examples/webapp/app.py as a child process on a free loopback port."""

    def __init__(self, daemon_address: str, log_path: Path) -> None:
        self.log_path = log_path
        log = open(log_path, "w")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(WEBAPP),
                "--daemon",
                daemon_address,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        self.url = self._read_url()

    def _read_url(self) -> str:
        assert self.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout

        def forward_lines() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=forward_lines, daemon=True).start()
        deadline = time.monotonic() + WEBAPP_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("webapp listening on "):
                return line.removeprefix("webapp listening on ").strip()
        self.stop()
        raise RuntimeError(f"the example web app did not start; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def webapp(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> Iterator[tuple[DaemonProcess, WebappProcess]]:
    """The example app on a SQLite daemon whose access tokens last 2 s."""
    daemon = start_daemon(
        f"sqlite:///{tmp_path / 'sessiond.db'}",
        access_token_validity_s=2,
        clock_skew_leeway_s=0,
    )
    app = WebappProcess(daemon.address, tmp_path / "webapp.log")
    yield daemon, app
    app.stop()


# The install can take minutes on a machine without Chromium; the browser
# run itself takes about 10 s.
@pytest.mark.timeout(APT_UPDATE_TIMEOUT_S + APT_INSTALL_TIMEOUT_S + 300)
def test_browser_session_through_example_app(
    chromium: Path,
    node: str,
    webapp: tuple[DaemonProcess, WebappProcess],
    tmp_path: Path,
) -> None:
    daemon, app = webapp
    profile = tmp_path / "chromium-profile"
    profile.mkdir()

    finished = subprocess.run(
        [node, str(BROWSER_SCRIPT), app.url, str(chromium), str(profile), USER_ID],
        capture_output=True,
        text=True,
        timeout=BROWSER_RUN_TIMEOUT_S,
    )

    output = (
        f"stdout:\n{finished.stdout}\nstderr:\n{finished.stderr}\n"
        f"web app log:\n{app.log()}"
    )
    lines = finished.stdout.strip().splitlines()
    try:
        results: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"webapp.mjs printed no JSON results; {output}")
    assert results["failures"] == [], output
    assert finished.returncode == 0, output
    assert results["ok"] is True
    assert all(results["checks"].values())
    # The browser's logout revoked the session in the daemon.
    with daemon.client() as client:
        assert client.get_all_session_handles_for_user(USER_ID) == []
