"""Versioned schema migrations, applied in order by ``sessiond migrate``.

Each step lives in its own module with a version, a description and the
statements for each dialect. A step is applied in one transaction where the
database allows it (SQLite); MySQL commits each DDL statement on its own, so
every statement there is written to be safe to run again.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import m0001_initial, m0002_revocations


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    mysql: tuple[str, ...]
    sqlite: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.mysql if dialect == "mysql" else self.sqlite


MIGRATIONS = [
    Migration(
        m0001_initial.VERSION,
        m0001_initial.DESCRIPTION,
        m0001_initial.MYSQL,
        m0001_initial.SQLITE,
    ),
    Migration(
        m0002_revocations.VERSION,
        m0002_revocations.DESCRIPTION,
        m0002_revocations.MYSQL,
        m0002_revocations.SQLITE,
    ),
]

CREATE_VERSION_TABLE = {
    "mysql": (
        "CREATE TABLE IF NOT EXISTS sessiond_schema_migrations ("
        " version INT NOT NULL PRIMARY KEY,"
        " description VARCHAR(255) NOT NULL,"
        " applied_at_ms BIGINT NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    ),
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS sessiond_schema_migrations ("
        " version INTEGER NOT NULL PRIMARY KEY,"
        " description TEXT NOT NULL,"
        " applied_at_ms INTEGER NOT NULL"
        ")"
    ),
}

LATEST_VERSION = MIGRATIONS[-1].version
