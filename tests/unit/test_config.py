"""Tests of load_config: TOML file, SESSIOND_* variables, overrides and checks.

Every test passes ``environ=`` explicitly, so the variables of the shell that
runs pytest never reach the Config under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessiond_server.config import MAX_VALIDITY_S, Config, ConfigError, load_config

PASSWORD = "hunter2-db-password"
MYSQL_URL = f"mysql://sessiond:{PASSWORD}@127.0.0.1:3306/sessiond"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sessiond.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_source() -> None:
    assert load_config(environ={}) == Config()


def test_file_sets_every_kind(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'listen = "127.0.0.1:6000"\n'
        "access_token_validity_s = 600\n"
        "db_timeout_s = 2.5\n"
        "anti_csrf = false\n"
        'signing_algorithm = "RS256"\n',
    )

    config = load_config(path, environ={})

    assert config.listen == "127.0.0.1:6000"
    assert config.access_token_validity_s == 600
    assert config.db_timeout_s == 2.5
    assert config.anti_csrf is False
    assert config.signing_algorithm == "RS256"
    assert config.refresh_token_validity_s == Config().refresh_token_validity_s


def test_file_accepts_int_for_float(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "db_timeout_s = 3\n")

    assert load_config(path, environ={}).db_timeout_s == 3


def test_environ_sets_every_kind() -> None:
    environ = {
        "SESSIOND_LISTEN": "unix:/tmp/sessiond.sock",
        "SESSIOND_ACCESS_TOKEN_VALIDITY_S": "900",
        "SESSIOND_DB_TIMEOUT_S": "0.5",
        "SESSIOND_BLACKLISTING": "true",
        "SESSIOND_ANTI_CSRF": "off",
        "SESSIOND_LOG_LEVEL": "DEBUG",
    }

    config = load_config(environ=environ)

    assert config.listen == "unix:/tmp/sessiond.sock"
    assert config.access_token_validity_s == 900
    assert config.db_timeout_s == 0.5
    assert config.blacklisting is True
    assert config.anti_csrf is False
    assert config.log_level == "DEBUG"


def test_environ_ignores_other_variables() -> None:
    environ = {
        "PATH": "/usr/bin",
        "ACCESS_TOKEN_VALIDITY_S": "7",
        "SESSIOND_NOT_A_SETTING": "x",
    }

    assert load_config(environ=environ) == Config()


def test_environ_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "access_token_validity_s = 600\nissuer = 'file'\n")
    environ = {"SESSIOND_ACCESS_TOKEN_VALIDITY_S": "700"}

    config = load_config(path, environ=environ)

    assert config.access_token_validity_s == 700
    assert config.issuer == "file"


def test_overrides_win_over_both(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, "access_token_validity_s = 600\nissuer = 'file'\ngrpc_workers = 4\n"
    )
    environ = {
        "SESSIOND_ACCESS_TOKEN_VALIDITY_S": "700",
        "SESSIOND_ISSUER": "environ",
    }
    overrides = {"access_token_validity_s": 800, "grpc_workers": None}

    config = load_config(path, environ=environ, overrides=overrides)

    assert config.access_token_validity_s == 800
    assert config.issuer == "environ"
    assert config.grpc_workers == 4


def test_validity_range_bounds_accepted() -> None:
    low = load_config(environ={}, overrides={"access_token_validity_s": 1})
    high = load_config(
        environ={}, overrides={"access_token_validity_s": MAX_VALIDITY_S}
    )

    assert low.access_token_validity_s == 1
    assert high.access_token_validity_s == MAX_VALIDITY_S


BAD_FILE_VALUES = [
    pytest.param(
        'access_token_validity_s = "600"',
        "access_token_validity_s",
        id="string-for-int",
    ),
    pytest.param(
        "access_token_validity_s = true", "access_token_validity_s", id="true-for-int"
    ),
    pytest.param("grpc_workers = 1.5", "grpc_workers", id="float-for-int"),
    pytest.param('anti_csrf = "yes"', "anti_csrf", id="string-for-bool"),
    pytest.param("listen = 50051", "listen", id="int-for-string"),
    pytest.param(
        "access_token_validity_s = 0", "access_token_validity_s", id="validity-zero"
    ),
    pytest.param(
        f"access_token_validity_s = {MAX_VALIDITY_S + 1}",
        "access_token_validity_s",
        id="validity-above-max",
    ),
    pytest.param(
        "clock_skew_leeway_s = -1", "clock_skew_leeway_s", id="leeway-negative"
    ),
    pytest.param("token_validity = 5", "token_validity", id="unknown-setting"),
    pytest.param("[server]\nlisten = '127.0.0.1:1'", "server", id="unknown-table"),
    pytest.param('listen = "localhost"', "listen", id="listen-no-port"),
    pytest.param('listen = "127.0.0.1:65536"', "listen", id="listen-port-too-big"),
    pytest.param('listen = "unix:"', "listen", id="listen-unix-no-path"),
    pytest.param('listen = "http://127.0.0.1:80"', "listen", id="listen-url"),
    pytest.param(
        'database_url = "postgres://u@127.0.0.1/db"',
        "database_url",
        id="database-scheme",
    ),
    pytest.param(
        'database_url = "mysql://u@127.0.0.1:3306/"',
        "database_url",
        id="mysql-no-database",
    ),
    pytest.param(
        'database_url = "mysql://u@127.0.0.1:99999/db"',
        "database_url",
        id="mysql-bad-port",
    ),
    pytest.param('database_url = "sqlite:///"', "database_url", id="sqlite-no-path"),
    pytest.param(
        'database_url = "mysql://u:pw@127.0.0.1/db?ssl_mode=REQUIRED"',
        "database_url",
        id="mysql-ssl-mode",
    ),
    pytest.param(
        'database_url = "mysql://u:pw@127.0.0.1/db?ssl=true"',
        "database_url",
        id="mysql-ssl",
    ),
    pytest.param(
        'database_url = "mysql://u:pw@127.0.0.1/db?ssl_ca=/etc/ca.pem"',
        "database_url",
        id="mysql-ssl-ca",
    ),
    pytest.param(
        'database_url = "mysql://u:pw@127.0.0.1/db?charset=latin1"',
        "database_url",
        id="mysql-charset",
    ),
    pytest.param(
        'database_url = "mysql://u:pw@127.0.0.1/db?bogus=1"',
        "database_url",
        id="mysql-unknown-parameter",
    ),
    pytest.param(
        'database_url = "mysql://u@127.0.0.1/db?unix_socket="',
        "database_url",
        id="mysql-unix-socket-empty",
    ),
    pytest.param(
        'database_url = "mysql://u@127.0.0.1/db?unix_socket=/a&unix_socket=/b"',
        "database_url",
        id="mysql-unix-socket-twice",
    ),
    pytest.param(
        'signing_algorithm = "HS256"', "signing_algorithm", id="algorithm-hs256"
    ),
    pytest.param(
        'signing_algorithm = "eddsa"', "signing_algorithm", id="algorithm-case"
    ),
    pytest.param('log_level = "TRACE"', "log_level", id="log-level-unknown"),
    pytest.param('log_level = "info"', "log_level", id="log-level-case"),
    pytest.param('issuer = ""', "issuer", id="issuer-empty"),
    pytest.param(
        "refresh_grace_period_s = 301", "refresh_grace_period_s", id="grace-above-max"
    ),
    pytest.param(
        'unix_socket_mode = "0999"', "unix_socket_mode", id="socket-mode-not-octal"
    ),
    pytest.param("idle_timeout_s = -1", "idle_timeout_s", id="idle-negative"),
    pytest.param(
        f"idle_timeout_s = {MAX_VALIDITY_S + 1}", "idle_timeout_s", id="idle-above-max"
    ),
    pytest.param(
        "max_session_lifetime_s = -1",
        "max_session_lifetime_s",
        id="lifetime-negative",
    ),
    pytest.param(
        "max_sessions_per_user = -1", "max_sessions_per_user", id="cap-negative"
    ),
    pytest.param(
        "max_sessions_per_user = 2.5", "max_sessions_per_user", id="cap-not-integer"
    ),
    pytest.param(
        "verified_token_cache_size = -1",
        "verified_token_cache_size",
        id="token-cache-negative",
    ),
    pytest.param(
        'tls_cert_file = "/nonexistent/cert.pem"',
        "tls_key_file",
        id="tls-cert-without-key",
    ),
    pytest.param('api_keys = "short"', "api_keys", id="api-key-too-short"),
    pytest.param(
        'api_keys_file = "/nonexistent/sessiond-keys"',
        "api_keys_file",
        id="api-keys-file-missing",
    ),
    pytest.param("workers = 0", "workers", id="workers-zero"),
    pytest.param("workers = 65", "workers", id="workers-above-max"),
    pytest.param(
        'workers = 2\nlisten = "unix:/run/sessiond.sock"', "workers", id="workers-unix"
    ),
    pytest.param(
        'workers = 2\nlisten = "127.0.0.1:0"', "workers", id="workers-port-zero"
    ),
    pytest.param(
        'workers = 2\nmetrics_listen = "127.0.0.1:65535"',
        "metrics_listen",
        id="workers-metrics-port-past-max",
    ),
]


@pytest.mark.parametrize(("line", "setting"), BAD_FILE_VALUES)
def test_file_bad_value_rejected(tmp_path: Path, line: str, setting: str) -> None:
    path = write_toml(tmp_path, line + "\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})

    assert setting in str(raised.value)


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        ("ssl_mode", "TLS to MySQL"),
        ("ssl", "TLS to MySQL"),
        ("charset", "unix_socket"),
        ("bogus", "unix_socket"),
    ],
)
def test_mysql_url_parameter_rejected(parameter: str, expected: str) -> None:
    url = f"mysql://app:hunter2secret@127.0.0.1/db?{parameter}=1"

    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"database_url": url})

    message = str(raised.value)
    assert message.startswith("database_url:")
    assert repr(parameter) in message
    assert expected in message
    assert "hunter2secret" not in message


def test_mysql_url_unix_socket_accepted() -> None:
    url = "mysql://app:pw@127.0.0.1/db?unix_socket=/run/mysqld/mysqld.sock"

    config = load_config(environ={}, overrides={"database_url": url})

    assert config.database_url == url


BAD_ENVIRON_VALUES = [
    pytest.param("SESSIOND_ACCESS_TOKEN_VALIDITY_S", "abc", id="string-for-int"),
    pytest.param("SESSIOND_ACCESS_TOKEN_VALIDITY_S", "true", id="true-for-int"),
    pytest.param("SESSIOND_GRPC_WORKERS", "1.5", id="float-for-int"),
    pytest.param("SESSIOND_DB_TIMEOUT_S", "fast", id="string-for-float"),
    pytest.param("SESSIOND_DB_TIMEOUT_S", "nan", id="nan-for-float"),
    pytest.param("SESSIOND_BLACKLISTING", "maybe", id="string-for-bool"),
    pytest.param("SESSIOND_ACCESS_TOKEN_VALIDITY_S", "0", id="validity-zero"),
    pytest.param(
        "SESSIOND_ACCESS_TOKEN_VALIDITY_S",
        str(MAX_VALIDITY_S + 1),
        id="validity-above-max",
    ),
]


@pytest.mark.parametrize(("variable", "raw"), BAD_ENVIRON_VALUES)
def test_environ_bad_value_rejected(variable: str, raw: str) -> None:
    setting = variable.removeprefix("SESSIOND_").lower()

    with pytest.raises(ConfigError) as raised:
        load_config(environ={variable: raw})

    assert setting in str(raised.value).lower()


def test_override_unknown_setting_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"no_such_setting": 1})

    assert "no_such_setting" in str(raised.value)


def test_override_wrong_type_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"db_pool_size": "10"})

    assert "db_pool_size" in str(raised.value)


def test_invalid_toml_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "listen = \n")

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})

    assert str(path) in str(raised.value)
    assert "invalid TOML" in str(raised.value)


def test_missing_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})

    assert str(path) in str(raised.value)


def test_directory_as_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, environ={})

    assert str(tmp_path) in str(raised.value)


def test_bad_url_error_omits_password(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'database_url = "mysql://u:{PASSWORD}@127.0.0.1/"\n')

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})

    assert PASSWORD not in str(raised.value)


def test_redacted_hides_mysql_password() -> None:
    config = load_config(environ={"SESSIOND_DATABASE_URL": MYSQL_URL})

    redacted = config.redacted()

    assert PASSWORD not in str(redacted)
    assert redacted["database_url"] == "mysql://sessiond:***@127.0.0.1:3306/sessiond"
    assert redacted["listen"] == config.listen


def test_redacted_keeps_sqlite_url() -> None:
    config = load_config(environ={}, overrides={"database_url": "sqlite:///var/s.db"})

    assert config.redacted()["database_url"] == "sqlite:///var/s.db"


def test_repr_omits_database_password() -> None:
    config = load_config(environ={}, overrides={"database_url": MYSQL_URL})

    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)


def test_api_keys_file_directory_rejected(tmp_path: Path) -> None:
    # os.access reports a directory as readable, but open() then fails.
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"api_keys_file": str(tmp_path)})

    assert "api_keys_file" in str(raised.value)


def test_api_keys_file_bad_utf8_rejected(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_bytes(b"\xff\xfe not UTF-8 \xff\xfe\n")

    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"api_keys_file": str(path)})

    assert "api_keys_file" in str(raised.value)


def test_api_keys_file_read(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text("# comment\n\nkey-from-file-0123456789\n", encoding="utf-8")
    overrides = {"api_keys": "key-from-setting-0123", "api_keys_file": str(path)}

    config = load_config(environ={}, overrides=overrides)

    assert config.api_key_list() == [
        "key-from-setting-0123",
        "key-from-file-0123456789",
    ]


def test_redacted_hides_api_keys() -> None:
    api_key = "api-key-secret-0123456789"
    config = load_config(environ={"SESSIOND_API_KEYS": api_key})

    assert api_key not in str(config.redacted())
    assert api_key not in repr(config)


def test_session_limits_default_off() -> None:
    config = Config()

    assert config.idle_timeout_s == 0
    assert config.max_session_lifetime_s == 0
    assert config.max_sessions_per_user == 0


def test_session_limits_from_environ() -> None:
    config = load_config(
        environ={
            "SESSIOND_IDLE_TIMEOUT_S": "1800",
            "SESSIOND_MAX_SESSION_LIFETIME_S": "86400",
            "SESSIOND_MAX_SESSIONS_PER_USER": "5",
        }
    )

    assert config.idle_timeout_s == 1800
    assert config.max_session_lifetime_s == 86400
    assert config.max_sessions_per_user == 5


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite:///file:x?mode=memory&cache=shared"]
)
def test_in_memory_sqlite_rejected(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url: an in-memory SQLite"):
        Config(database_url=url)


def test_wrong_type_secret_hidden() -> None:
    with pytest.raises(ConfigError) as caught:
        Config(database_url=["mysql://u:hunter2@h/db"])  # type: ignore[arg-type]
    assert "database_url" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_workers_bounds_accepted() -> None:
    config = load_config(
        environ={},
        overrides={"workers": 64, "metrics_listen": "127.0.0.1:65472"},
    )

    assert config.workers == 64
    assert Config().workers == 1


def test_workers_error_names_fix() -> None:
    with pytest.raises(ConfigError) as raised:
        Config(workers=2, listen="127.0.0.1:0")

    message = str(raised.value)
    assert message.startswith("workers: ")
    assert "fixed port" in message
    assert "workers = 1" in message


def test_workers_allow_metrics_port_zero() -> None:
    config = Config(workers=4, metrics_listen="127.0.0.1:0")

    assert config.metrics_listen == "127.0.0.1:0"
