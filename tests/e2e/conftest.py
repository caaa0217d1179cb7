"""Fixtures that start private MariaDB servers for end-to-end tests.

``private_mysql`` gives each test its own servers, for tests that stop or
restart them. ``module_private_mysql`` starts servers that every test of a
module may share, for tests that only need particular server options.
Either way every server is stopped at teardown.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from private_mysql import (
    MARIADBD,
    PrivateMysqlError,
    PrivateMysqlServer,
    install_data_folder,
    mariadbd_available,
)
from sessiond_testing import IN_CI

MysqlStarter = Callable[..., PrivateMysqlServer]


@pytest.fixture(scope="session")
def mysql_data_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An installed, never started data folder that every private server copies.

    Without mariadbd the tests are skipped, except under CI=true, where
    they fail.
    """
    if not mariadbd_available():
        message = (
            f"{MARIADBD} or mariadb-install-db is not installed; install "
            "mariadb-server or set SESSIOND_TEST_MARIADBD"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    template = tmp_path_factory.mktemp("mysql-template") / "data"
    try:
        install_data_folder(template)
    except (PrivateMysqlError, OSError) as exc:
        pytest.fail(f"cannot create a MariaDB data folder: {exc}")
    yield template
    shutil.rmtree(template, ignore_errors=True)


def _serve(
    tmp_path_factory: pytest.TempPathFactory, template: Path
) -> Iterator[MysqlStarter]:
    started: list[PrivateMysqlServer] = []

    def start(*options: str) -> PrivateMysqlServer:
        # A short folder name keeps the socket path under the 108-byte limit.
        folder = tmp_path_factory.mktemp("mysql")
        server = PrivateMysqlServer(folder, options, template=template)
        started.append(server)
        try:
            return server.start()
        except (PrivateMysqlError, OSError) as exc:
            pytest.fail(f"cannot start a private MariaDB server: {exc}")

    yield start
    failures: list[str] = []
    for server in started:
        try:
            server.stop()
        except PrivateMysqlError as exc:
            failures.append(str(exc))
        # Each data folder takes about 100 MB, mostly InnoDB log files. The
        # error log next to it stays for debugging.
        shutil.rmtree(server.data_dir, ignore_errors=True)
    if failures:
        pytest.fail("\n".join(failures))


@pytest.fixture
def private_mysql(
    tmp_path_factory: pytest.TempPathFactory, mysql_data_template: Path
) -> Iterator[MysqlStarter]:
    """Start private servers for one test: ``private_mysql("--wait-timeout=5")``."""
    yield from _serve(tmp_path_factory, mysql_data_template)


@pytest.fixture(scope="module")
def module_private_mysql(
    tmp_path_factory: pytest.TempPathFactory, mysql_data_template: Path
) -> Iterator[MysqlStarter]:
    """Start private servers that the tests of one module share."""
    yield from _serve(tmp_path_factory, mysql_data_template)
