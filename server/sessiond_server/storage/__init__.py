"""Storage backends, chosen by the scheme of the database URL."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import (
    NO_IDLE_DEADLINE_MS,
    Revocation,
    RevocationReason,
    Rotation,
    RotationResult,
    SessionListing,
    SessionRecord,
    SigningKeyRecord,
    Storage,
    capped_expiry,
)

__all__ = [
    "NO_IDLE_DEADLINE_MS",
    "Revocation",
    "RevocationReason",
    "Rotation",
    "RotationResult",
    "SessionListing",
    "SessionRecord",
    "SigningKeyRecord",
    "Storage",
    "capped_expiry",
    "open_storage",
]


def open_storage(url: str, *, pool_size: int, timeout_s: float) -> Storage:
    """Open the storage the URL names: sqlite:///PATH or mysql://..."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStorage

        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy
        # spells them.
        return SqliteStorage(
            unquote(url[len("sqlite:///") :]), pool_size=pool_size, timeout_s=timeout_s
        )
    if scheme == "mysql":
        from .mysql import MysqlStorage

        return MysqlStorage(url, pool_size=pool_size, timeout_s=timeout_s)
    raise ValueError(f"unsupported database URL scheme {scheme!r}")
