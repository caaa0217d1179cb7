"""A Node.js service with nothing but the .proto file runs the whole flow.

tests/node/flow.mjs loads protos/sessiond/v1/session.proto at run time with
@grpc/proto-loader, calls a real daemon on each backend, reads error reasons
from the status details, and verifies access tokens with jose against the
daemon's JWKS URL.

The npm packages are installed once per test session with ``npm ci`` from the
committed package-lock.json. The lockfile pins every transitive version and
its integrity hash, and ``npm ci`` never rewrites it. The first try is
``--offline``, which makes no registry request, so a warm npm cache installs
even while the registry is unreachable. Only when the cache lacks a package
does a second ``npm ci`` fetch it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sessiond_testing import IN_CI, DaemonProcess

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
FLOW_SCRIPT = NODE_DIR / "flow.mjs"
MIN_NODE_MAJOR = 20
NPM_CI_TIMEOUT_S = 120
FLOW_TIMEOUT_S = 60
USER_ID = "node-user-ユーザー"


def _missing_tool(message: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where Node.js must be present."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _npm_ci(npm_path: str, cache_mode: str) -> subprocess.CompletedProcess[str]:
    # --ignore-scripts: no package here needs an install script (protobufjs's
    # postinstall only prints version advice), so none runs.
    return subprocess.run(
        [npm_path, "ci", cache_mode, "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/node/node_modules installed by ``npm ci``."""
    node_path = shutil.which("node")
    npm_path = shutil.which("npm")
    if node_path is None or npm_path is None:
        _missing_tool(
            "node or npm is not on PATH; install Node.js 20 or newer with npm "
            "(Debian: apt-get install nodejs npm) to run the Node.js client test"
        )

    version = subprocess.run(
        [node_path, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < MIN_NODE_MAJOR:
        _missing_tool(
            f"node {version} is too old; the Node.js client test needs "
            f"Node.js {MIN_NODE_MAJOR} or newer"
        )

    installed = _npm_ci(npm_path, "--offline")
    if installed.returncode != 0:
        # Most likely ENOTCACHED: a package is missing from the npm cache.
        installed = _npm_ci(npm_path, "--prefer-offline")
    if installed.returncode != 0:
        pytest.fail(
            f"npm ci in {NODE_DIR} failed with exit code {installed.returncode}; "
            f"check that the npm registry is reachable:\n{installed.stderr}"
        )
    return node_path


def _log_address(daemon: DaemonProcess, listener: str) -> str:
    match = re.search(rf"{listener} listening address=(\S+)", daemon.log())
    assert match is not None, f"no {listener} address in the log:\n{daemon.log()}"
    return match.group(1)


def _run_flow(node: str, address: str, jwks_url: str) -> dict[str, Any]:
    finished = subprocess.run(
        [node, str(FLOW_SCRIPT), address, jwks_url],
        capture_output=True,
        text=True,
        timeout=FLOW_TIMEOUT_S,
    )
    output = f"stdout:\n{finished.stdout}\nstderr:\n{finished.stderr}"
    lines = finished.stdout.strip().splitlines()
    try:
        results: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"flow.mjs printed no JSON results; {output}")
    assert results["failures"] == [], output
    assert finished.returncode == 0, output
    return results


def _scrape_metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def _start_flow_daemon(
    start_daemon: Callable[..., DaemonProcess], database_url: str, **settings: Any
) -> DaemonProcess:
    # With no grace period the replay in flow.mjs is theft at once. The
    # default grace period of 10 s would accept it as a retry.
    return start_daemon(
        database_url,
        refresh_grace_period_s=0,
        jwks_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        **settings,
    )


def _jwks_url(daemon: DaemonProcess) -> str:
    return f"http://{_log_address(daemon, 'jwks')}/.well-known/jwks.json"


def test_nodejs_flow_with_proto_only(
    node: str,
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
) -> None:
    daemon = _start_flow_daemon(start_daemon, database_url)

    results = _run_flow(node, daemon.address, _jwks_url(daemon))

    assert results["ok"] is True
    assert results["user_id"] == USER_ID
    assert results["jwt_alg"] == "ES256"
    assert all(results["checks"].values())
    theft = results["theft"]
    assert theft["code"] == "UNAUTHENTICATED"
    assert theft["reason"] == "TOKEN_THEFT_DETECTED"
    assert theft["domain"] == "sessiond"
    assert theft["metadata"] == {
        "session_handle": results["session_handle"],
        "user_id": USER_ID,
    }

    # The Python client sees what the Node.js client did: theft detection
    # revoked one session and RevokeSession the other.
    with daemon.client() as client:
        assert client.get_all_session_handles_for_user(USER_ID) == []

    # jose fetched the keys over HTTP, and no gRPC GetJwks call was made.
    assert '"GET /.well-known/jwks.json HTTP/1.1" 200' in daemon.log()
    metrics = _scrape_metrics(_log_address(daemon, "metrics"))
    assert 'method="GetJwks"' not in metrics
    # flow.mjs makes two rejected refreshes: the replay and the refresh after it.
    refresh_rejected = (
        'sessiond_grpc_calls_total{code="UNAUTHENTICATED",method="RefreshSession"} 2.0'
    )
    assert refresh_rejected in metrics


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_nodejs_jose_other_algorithms(
    node: str,
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    algorithm: str,
) -> None:
    # The JWK format does not depend on the backend, so SQLite is enough here.
    daemon = _start_flow_daemon(
        start_daemon,
        f"sqlite:///{tmp_path / 'keys.db'}",
        signing_algorithm=algorithm,
    )

    results = _run_flow(node, daemon.address, _jwks_url(daemon))

    assert results["ok"] is True
    assert results["jwt_alg"] == algorithm
