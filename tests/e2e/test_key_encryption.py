"""Private signing keys and the refresh secret encrypted at rest with a key-encryption key."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sessiond_testing import DaemonProcess

KEK = "11" * 32
OTHER_KEK = "22" * 32


def _stored_values(db_path: Path) -> list[bytes]:
    with sqlite3.connect(db_path) as connection:
        keys = [
            bytes(row[0])
            for row in connection.execute(
                "SELECT private_key FROM sessiond_signing_keys"
            )
        ]
        secrets = [
            bytes(row[0])
            for row in connection.execute("SELECT value FROM sessiond_secrets")
        ]
    return keys + secrets


def test_keys_sealed_at_rest(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    db_path = tmp_path / "sealed.db"
    kek_file = tmp_path / "kek"
    kek_file.write_text(KEK + "\n")
    daemon = start_daemon(f"sqlite:///{db_path}", key_encryption_key_file=kek_file)
    with daemon.client() as client:
        session = client.create_new_session("user-kek")
        assert session.refresh_token is not None
    assert daemon.stop() == 0
    stored = _stored_values(db_path)
    assert len(stored) == 2
    for value in stored:
        assert value.startswith(b"sdkek1:")
        assert b"PRIVATE KEY" not in value
    assert "stored in the clear" not in daemon.log()

    # A restart with the same key reads both back: old tokens still work.
    again = start_daemon(f"sqlite:///{db_path}", key_encryption_key=KEK)
    with again.client() as client:
        refreshed = client.refresh_session(session.refresh_token.value)
        assert refreshed.handle == session.handle


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "set key_encryption_key"),
        ({"key_encryption_key": OTHER_KEK}, "does not decrypt"),
    ],
)
def test_sealed_keys_need_right_kek(
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    settings: dict[str, str],
    message: str,
) -> None:
    db_path = tmp_path / "sealed.db"
    start_daemon(f"sqlite:///{db_path}", key_encryption_key=KEK).stop()
    daemon = DaemonProcess(f"sqlite:///{db_path}", tmp_path / "restart.log", **settings)
    with pytest.raises(RuntimeError, match=message):
        daemon.start()
    assert daemon.process is not None
    assert daemon.process.returncode == 1


def test_clear_keys_warned(daemon: DaemonProcess) -> None:
    assert "stored in the clear" in daemon.log()
