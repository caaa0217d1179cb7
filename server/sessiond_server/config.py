"""Daemon settings: load from a TOML file, SESSIOND_* variables and flags.

Later sources override earlier ones: built-in defaults, then the TOML file,
then environment variables (``SESSIOND_ACCESS_TOKEN_VALIDITY_S=600``), then
command-line flags. Every value is checked once, at load, and a bad one
raises ConfigError naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ENV_PREFIX = "SESSIOND_"
MIN_API_KEY_CHARS = 16
# Settings whose values never appear in messages or logs.
SECRET_SETTINGS = frozenset({"database_url", "api_keys", "key_encryption_key"})
SIGNING_ALGORITHMS = ("EdDSA", "ES256", "RS256")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Ten years: long enough for any real token lifetime, and far from the
# 64-bit millisecond limit, so no expiry computation can wrap.
MAX_VALIDITY_S = 10 * 365 * 24 * 3600
# gRPC rejects messages above its receive limit before sessiond receives them, so
# session data must leave room for the rest of the message.
MAX_SESSION_DATA_LIMIT_BYTES = 64 * 1024 * 1024
# A bound that only catches typos. With the limit on, each new session locks
# and counts all live sessions of its user, whatever the value.
MAX_SESSIONS_PER_USER_LIMIT = 1_000_000
MAX_WORKERS = 64
# Query parameters of a mysql:// database_url that the MySQL storage reads.
MYSQL_URL_PARAMETERS = ("unix_socket",)


class ConfigError(ValueError):
    """A setting is missing, has the wrong type or is out of range."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """All settings of one daemon; see the README's config reference."""

    listen: str = "127.0.0.1:50051"
    database_url: str = field(default="sqlite:///sessiond.db", repr=False)
    issuer: str = "sessiond"
    access_token_validity_s: int = 3600
    refresh_token_validity_s: int = 100 * 24 * 3600
    key_rotation_interval_s: int = 24 * 3600
    # ES256: the fewest CPU instructions for a sign plus a verify of the
    # three (README, signing_algorithm), and more JWT libraries verify it
    # than EdDSA.
    signing_algorithm: str = "ES256"
    clock_skew_leeway_s: int = 5
    refresh_grace_period_s: int = 10
    idle_timeout_s: int = 0
    max_session_lifetime_s: int = 0
    max_sessions_per_user: int = 0
    anti_csrf: bool = True
    blacklisting: bool = False
    max_session_data_bytes: int = 1024 * 1024
    max_access_token_payload_bytes: int = 16 * 1024
    verified_token_cache_size: int = 10_000
    db_pool_size: int = 10
    db_timeout_s: float = 10.0
    migrate_on_start: bool = True
    cleanup_interval_s: int = 3600
    grpc_workers: int = 32
    max_revocation_watchers: int = 64
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    api_keys: str = field(default="", repr=False)
    api_keys_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    unix_socket_mode: str = "0660"
    key_encryption_key: str = field(default="", repr=False)
    key_encryption_key_file: str = ""
    metrics_listen: str = ""
    jwks_listen: str = ""
    log_format: str = "text"
    workers: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        self._check_ranges()

    def _check_ranges(self) -> None:
        _check_range(
            "access_token_validity_s", self.access_token_validity_s, 1, MAX_VALIDITY_S
        )
        _check_range(
            "refresh_token_validity_s", self.refresh_token_validity_s, 1, MAX_VALIDITY_S
        )
        _check_range(
            "key_rotation_interval_s", self.key_rotation_interval_s, 1, MAX_VALIDITY_S
        )
        _check_range("clock_skew_leeway_s", self.clock_skew_leeway_s, 0, 300)
        _check_range("refresh_grace_period_s", self.refresh_grace_period_s, 0, 300)

        # For the next three settings, 0 turns the limit off.
        _check_range("idle_timeout_s", self.idle_timeout_s, 0, MAX_VALIDITY_S)
        _check_range(
            "max_session_lifetime_s", self.max_session_lifetime_s, 0, MAX_VALIDITY_S
        )
        _check_range(
            "max_sessions_per_user",
            self.max_sessions_per_user,
            0,
            MAX_SESSIONS_PER_USER_LIMIT,
        )

        _check_range(
            "max_session_data_bytes",
            self.max_session_data_bytes,
            2,
            MAX_SESSION_DATA_LIMIT_BYTES,
        )
        _check_range(
            "max_access_token_payload_bytes",
            self.max_access_token_payload_bytes,
            2,
            1024 * 1024,
        )
        _check_range(
            "verified_token_cache_size", self.verified_token_cache_size, 0, 10_000_000
        )
        _check_range("db_pool_size", self.db_pool_size, 1, 1000)
        _check_range("db_timeout_s", self.db_timeout_s, 0.1, 600)
        _check_range("cleanup_interval_s", self.cleanup_interval_s, 1, MAX_VALIDITY_S)
        _check_range("grpc_workers", self.grpc_workers, 1, 10000)
        _check_range("max_revocation_watchers", self.max_revocation_watchers, 0, 10000)
        _check_range("shutdown_grace_s", self.shutdown_grace_s, 0, 3600)
        if self.signing_algorithm not in SIGNING_ALGORITHMS:
            raise ConfigError(
                f"signing_algorithm: {self.signing_algorithm!r} is not supported; "
                f"use one of {', '.join(SIGNING_ALGORITHMS)}"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level: {self.log_level!r} is not a level; use one of {', '.join(LOG_LEVELS)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format: {self.log_format!r} is not a format; use one of {', '.join(LOG_FORMATS)}"
            )
        for name in ("metrics_listen", "jwks_listen"):
            if getattr(self, name):
                _check_listen(getattr(self, name), name, unix=False)
        if not self.issuer:
            raise ConfigError("issuer: must not be empty")
        _check_listen(self.listen)
        _check_database_url(self.database_url)
        self._check_workers()
        self._check_transport()

    def _check_workers(self) -> None:
        _check_range("workers", self.workers, 1, MAX_WORKERS)
        if self.workers == 1:
            return
        # Worker processes share one port through SO_REUSEPORT, which needs
        # a TCP socket and the same fixed port in every worker.
        if self.listen.startswith("unix:") or _listen_port(self.listen) == 0:
            raise ConfigError(
                f"workers: {self.workers} worker processes need a TCP listen address "
                f"with a fixed port, not {self.listen!r}; set listen to HOST:PORT "
                "such as 127.0.0.1:50051, or set workers = 1"
            )
        if self.metrics_listen:
            last_port = _listen_port(self.metrics_listen) + self.workers - 1
            if _listen_port(self.metrics_listen) != 0 and last_port > 65535:
                raise ConfigError(
                    f"metrics_listen: worker i serves metrics on the port plus i, and "
                    f"with workers = {self.workers} the last port would be {last_port}; "
                    "choose a lower port"
                )

    def _check_transport(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "tls_cert_file and tls_key_file: set both to serve TLS, or neither"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "tls_client_ca_file: mutual TLS needs tls_cert_file and tls_key_file too"
            )
        for name in (
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "api_keys_file",
            "key_encryption_key_file",
        ):
            path = getattr(self, name)
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ConfigError(
                    f"{name}: {path} does not exist, is not a regular file or is not readable"
                )
        if re.fullmatch(r"0?[0-7]{3}", self.unix_socket_mode) is None:
            raise ConfigError(
                f"unix_socket_mode: {self.unix_socket_mode!r} is not an octal file mode such as 0660"
            )
        try:
            self.key_encryption_key_bytes()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"key_encryption_key_file: {self.key_encryption_key_file} cannot be read: {exc}"
            ) from None
        try:
            keys = self.api_key_list()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"api_keys_file: {self.api_keys_file} cannot be read as UTF-8 text: {exc}"
            ) from None
        for key in keys:
            if len(key) < MIN_API_KEY_CHARS:
                raise ConfigError(
                    f"api_keys: every API key needs at least {MIN_API_KEY_CHARS} characters"
                )

    def key_encryption_key_bytes(self) -> bytes | None:
        """Return the 32-byte key-encryption key, or None when none is configured.

        The key is 64 hex digits, given inline or as the first line of a file.
        """
        text = self.key_encryption_key
        if self.key_encryption_key_file:
            with open(self.key_encryption_key_file, encoding="utf-8") as file:
                text = file.readline()
        text = text.strip()
        if not text:
            return None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(
                "key_encryption_key: must be 64 hex digits (32 bytes); "
                "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return key

    def api_key_list(self) -> list[str]:
        """Return the API keys from api_keys (comma-separated) and api_keys_file (one per line)."""
        keys = [key.strip() for key in self.api_keys.split(",") if key.strip()]
        if self.api_keys_file:
            with open(self.api_keys_file, encoding="utf-8") as file:
                for line in file:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        keys.append(line)
        return keys

    def redacted(self) -> dict[str, Any]:
        """Return the settings with the database password hidden, for logging."""
        values = dataclasses.asdict(self)
        values["database_url"] = redact_url(self.database_url)
        values["api_keys"] = "***" if self.api_keys else ""
        values["key_encryption_key"] = "***" if self.key_encryption_key else ""
        return values


def _check_type(name: str, value: Any, annotation: Any) -> None:
    types: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "float": (int, float),
        "bool": bool,
    }
    expected = types[str(annotation)]
    # bool is a subclass of int, so a number setting given as true/false must
    # be rejected explicitly.
    if (
        annotation != "bool"
        and isinstance(value, bool)
        or not isinstance(value, expected)
    ):
        shown = "(hidden)" if name in SECRET_SETTINGS else repr(value)
        raise ConfigError(
            f"{name}: expected {annotation}, got {type(value).__name__} {shown}"
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(
            f"{name}: {value} is out of range; use a value from {low} to {high}"
        )


def _check_listen(listen: str, name: str = "listen", *, unix: bool = True) -> None:
    if unix and listen.startswith("unix:"):
        if len(listen) <= len("unix:"):
            raise ConfigError(
                f"{name}: unix: needs a socket path, for example unix:/run/sessiond.sock"
            )
        return
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})", listen)
    if match is None or int(match.group(2)) > 65535:
        expected = "HOST:PORT or unix:PATH" if unix else "HOST:PORT"
        raise ConfigError(
            f"{name}: {listen!r} is not {expected}; for example 127.0.0.1:50051"
        )


def _listen_port(listen: str) -> int:
    """Return the port of a HOST:PORT address that _check_listen accepted."""
    return int(listen.rsplit(":", 1)[1])


def _check_database_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if ":memory:" in url or "mode=memory" in url:
            raise ConfigError(
                "database_url: an in-memory SQLite database is not supported, because each "
                "pooled connection would see its own empty database; use a file path"
            )
        if not parts.path or parts.path == "/":
            raise ConfigError(
                "database_url: sqlite URL needs a file path, for example sqlite:///var/lib/sessiond/db"
            )
        return
    if parts.scheme == "mysql":
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(
                "database_url: mysql URL needs a host and a database name, "
                "for example mysql://user:password@127.0.0.1:3306/sessiond"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError(f"database_url: {exc}") from None
        _check_mysql_url_parameters(parts.query)
        return
    raise ConfigError(
        f"database_url: scheme {parts.scheme!r} is not supported; use sqlite:///PATH or mysql://..."
    )


def _check_mysql_url_parameters(query: str) -> None:
    """Reject query parameters of a mysql:// URL that the storage would ignore.

    Only parameter names appear in messages, because a value may be secret.
    """
    supported = ", ".join(MYSQL_URL_PARAMETERS)
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower().startswith(("ssl", "tls")):
            raise ConfigError(
                f"database_url: query parameter {name!r} is not supported, because "
                "sessiond does not support TLS to MySQL yet; connect over a Unix "
                "socket or a trusted network, and remove the parameter"
            )
        if name not in MYSQL_URL_PARAMETERS:
            raise ConfigError(
                f"database_url: query parameter {name!r} is not supported; "
                f"the supported parameters are: {supported}"
            )
        if name in seen:
            raise ConfigError(f"database_url: query parameter {name!r} is given twice")
        if not value:
            raise ConfigError(f"database_url: query parameter {name!r} needs a value")
        seen.add(name)


def redact_url(url: str) -> str:
    """Return url with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _parse_env_value(name: str, raw: str, annotation: str) -> Any:
    if annotation == "str":
        return raw
    if annotation == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {raw!r} is not a boolean; use true or false")
    try:
        return int(raw) if annotation == "int" else float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None


def setting_names() -> list[str]:
    return [f.name for f in fields(Config)]


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from defaults, a TOML file, the environment and overrides.

    Raises:
        ConfigError: a file that cannot be read, an unknown setting or a bad
            value, with the setting named.
    """
    types = {f.name: str(f.type) for f in fields(Config)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(
                f"config file {path}: cannot be read: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        for name, value in document.items():
            if name not in types:
                raise ConfigError(f"{name}: unknown setting in {path}")
            values[name] = value
    for key, raw in (os.environ if environ is None else environ).items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in types:
            values[name] = _parse_env_value(key, raw, types[name])
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"{name}: unknown setting")
        if value is not None:
            values[name] = value
    return Config(**values)
