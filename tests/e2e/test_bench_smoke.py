"""Smoke test of bench/run.py: its quickest run exits 0 and writes every table row."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from private_mysql import MARIADBD, mariadbd_available
from sessiond_testing import IN_CI

import sessiond
from sessiond_server.config import Config

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH = REPOSITORY / "bench" / "run.py"
BACKENDS = ("SQLite", "MariaDB")
OPERATIONS = (
    "create",
    "verify",
    "verify (check_database)",
    "refresh",
    "refresh + verify",
    "get data",
    "update data",
    "revoke",
    "merge data",
)
FLOORS = (
    "empty gRPC call (server in its own process)",
    "gRPC health check (daemon process)",
    "INSERT",
    "SELECT by primary key",
    "UPDATE by primary key",
    "SELECT ... FOR UPDATE + UPDATE in a transaction",
    "DELETE by primary key",
)
CONCURRENCIES = (1, 4)
GROWTH_SESSIONS = (300, 1000)
GROWTH_OPERATIONS = ("create", "verify (remote)", "refresh", "get data", "update data")
REPLICA_OPERATIONS = ("create", "verify (remote)", "get data")
WORKER_OPERATIONS = ("create", "verify (remote)", "get data", "update data")


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the bench once in its quickest mode; return its output folder."""
    if not mariadbd_available():
        message = (
            f"{MARIADBD} or mariadb-install-db is not installed; install mariadb-server"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    out_dir = tmp_path_factory.mktemp("bench")
    args = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--seconds",
        "0.1",
        "--concurrency",
        ",".join(str(value) for value in CONCURRENCIES),
        "--rss-creates",
        "20,50",
        "--algorithm-seconds",
        "0.02",
        "--growth-sessions",
        ",".join(str(value) for value in GROWTH_SESSIONS),
        "--cleanup-expired",
        "1200",
        "--out-dir",
        str(out_dir),
    ]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=120, check=False, cwd=REPOSITORY
    )
    assert result.returncode == 0, (
        f"bench exited with {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-3000:]}"
    )
    return out_dir


def test_bench_page_has_every_operation_row(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    for backend in BACKENDS:
        for operation in OPERATIONS:
            for concurrency in CONCURRENCIES:
                row = f"| {backend} | {operation} | {concurrency} |"
                assert row in page, f"no row starting {row!r}"


def test_bench_measures_merge_when_client_has_it(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    skipped = "| SQLite | merge data | 1 | skipped:"
    if hasattr(sessiond.SessionClient, "merge_session_data"):
        assert skipped not in page
    else:
        assert skipped in page


def test_bench_page_has_floors_algorithms_memory(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    for floor in FLOORS:
        for concurrency in CONCURRENCIES:
            assert f"| {floor} | {concurrency} |" in page
    for algorithm in ("EdDSA", "ES256", "RS256"):
        assert f"| {algorithm} |" in page
    assert f"The daemon's default is {Config().signing_algorithm}" in page
    assert "| after startup |" in page
    assert "| after 50 creates |" in page
    assert "ratios to floors measured in the same run" in page


def test_bench_writes_plot_when_matplotlib_installed(bench_output: Path) -> None:
    plot = bench_output / "benchmarks.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not plot.exists()
    else:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _section(page: str, heading: str) -> str:
    """Return the text under a level-2 heading, up to the next one."""
    start = page.index(f"## {heading}\n")
    end = page.find("\n## ", start + 1)
    return page[start:] if end == -1 else page[start:end]


def test_bench_page_has_growth_rows(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    growth = _section(page, "Table growth")
    for operation in GROWTH_OPERATIONS:
        assert f"| {operation} |" in growth, f"no growth row for {operation!r}"
    for stored in GROWTH_SESSIONS:
        for rpc in ("ListSessions", "ListSessionHandles"):
            row = f"| {stored:,} | {rpc} |"
            assert row in growth, f"no EXPLAIN row starting {row!r}"
    assert "ratio 1,000 / 300" in growth


def test_bench_page_has_cleanup_rows(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    cleanup = _section(page, "Expired-session cleanup")
    assert "1,200 expired" in cleanup
    for operation in ("create", "get data"):
        for window in ("before", "during", "after", "without"):
            row = f"| {operation} | {window} cleanup |"
            assert row in cleanup, f"no cleanup row starting {row!r}"


def test_bench_page_has_replica_rows(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    replicas = _section(page, "Replicas")
    assert "ops/s 3 replicas" in replicas
    for operation in REPLICA_OPERATIONS:
        assert f"| {operation} |" in replicas, f"no replica row for {operation!r}"


def test_bench_page_has_worker_rows(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    workers = _section(page, "Worker processes")
    assert "ops/s 2 workers" in workers
    assert "connections=4" in workers
    for operation in WORKER_OPERATIONS:
        row = next(
            (
                line
                for line in workers.splitlines()
                if line.startswith(f"| {operation} |")
            ),
            None,
        )
        assert row is not None, f"no worker row for {operation!r}"
        # Both workers used CPU, so the calls reached both of them.
        shares = row.rstrip(" |").rsplit("|", 1)[1].split(" / ")
        assert len(shares) == 2, row
        assert all(share.strip() != "0%" for share in shares), row


def _row_cells(section: str, label: str) -> list[str]:
    """Return the cells of the table row whose first cell is label."""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row for {label!r} in:\n{section}")


def test_bench_page_has_cpu_time_per_call(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    cpu = _section(page, "CPU time per call")
    empty = _row_cells(cpu, f"floor: {FLOORS[0]}")
    # The floor server and the bench client both did work for every call.
    server, client = empty[2], empty[4]
    assert float(server.replace(",", "")) > 0, empty
    assert float(client.replace(",", "")) > 0, empty
    assert empty[6] == "1.0x", empty
    database_us = 0.0
    for operation in OPERATIONS:
        cells = _row_cells(cpu, f"MariaDB: {operation}")
        database_us += float(cells[3].replace(",", ""))
        assert _row_cells(cpu, f"SQLite: {operation}")[3] == "-"
    # /proc counts 10 ms ticks, so one short measurement may read 0, but
    # the MariaDB operations together made the database server work.
    assert database_us > 0


def test_bench_page_has_targets(bench_output: Path) -> None:
    page = (bench_output / "benchmarks.md").read_text(encoding="utf-8")
    targets = _section(page, "Targets")
    for operation in ("create", "refresh", "verify", "get data", "update data"):
        cells = _row_cells(targets, operation)
        assert cells[-1].startswith(("met", "not met")), cells
