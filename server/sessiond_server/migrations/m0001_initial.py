"""Sessions, signing keys, secrets and the lock row for key rotation.

Text that callers send (user ids, payloads, session data, device details) is
stored as UTF-8 bytes in binary columns: the server's character set and
collation can then neither alter it nor make two different user ids compare
equal (for example "bob" and "bob " under a PAD SPACE collation).

A session is live while both expires_at_ms (refresh validity, capped by the
maximum session lifetime) and idle_expires_at_ms (idle timeout) are in the
future.
"""

VERSION = 1
DESCRIPTION = "create sessions, signing keys, secrets and locks"

MYSQL = (
    "CREATE TABLE IF NOT EXISTS sessiond_sessions ("
    " session_handle CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,"
    " user_id VARBINARY(255) NOT NULL,"
    " refresh_token_hash2 BINARY(32) NOT NULL,"
    " previous_refresh_token_hash2 BINARY(32) NULL,"
    " refresh_token_changed_at_ms BIGINT NOT NULL,"
    " access_token_payload LONGBLOB NOT NULL,"
    " session_data LONGBLOB NOT NULL,"
    " data_version BIGINT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " last_refreshed_at_ms BIGINT NOT NULL,"
    " idle_expires_at_ms BIGINT NOT NULL,"
    " device_user_agent VARBINARY(512) NOT NULL,"
    " device_ip_address VARBINARY(64) NOT NULL,"
    " device_label VARBINARY(255) NOT NULL,"
    " KEY sessiond_sessions_user (user_id, expires_at_ms),"
    " KEY sessiond_sessions_expiry (expires_at_ms),"
    " KEY sessiond_sessions_idle_expiry (idle_expires_at_ms)"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sessiond_signing_keys ("
    " kid VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,"
    " algorithm VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
    " private_key BLOB NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " signs_until_ms BIGINT NOT NULL,"
    " KEY sessiond_signing_keys_until (signs_until_ms)"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sessiond_secrets ("
    " name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,"
    " value VARBINARY(1024) NOT NULL,"
    " created_at_ms BIGINT NOT NULL"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sessiond_locks ("
    " name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "INSERT IGNORE INTO sessiond_locks (name) VALUES ('signing_keys')",
)

SQLITE = (
    "CREATE TABLE IF NOT EXISTS sessiond_sessions ("
    " session_handle TEXT NOT NULL PRIMARY KEY,"
    " user_id BLOB NOT NULL,"
    " refresh_token_hash2 BLOB NOT NULL,"
    " previous_refresh_token_hash2 BLOB NULL,"
    " refresh_token_changed_at_ms INTEGER NOT NULL,"
    " access_token_payload BLOB NOT NULL,"
    " session_data BLOB NOT NULL,"
    " data_version INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " last_refreshed_at_ms INTEGER NOT NULL,"
    " idle_expires_at_ms INTEGER NOT NULL,"
    " device_user_agent BLOB NOT NULL,"
    " device_ip_address BLOB NOT NULL,"
    " device_label BLOB NOT NULL"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS sessiond_sessions_user ON sessiond_sessions (user_id, expires_at_ms)",
    "CREATE INDEX IF NOT EXISTS sessiond_sessions_expiry ON sessiond_sessions (expires_at_ms)",
    "CREATE INDEX IF NOT EXISTS sessiond_sessions_idle_expiry ON sessiond_sessions (idle_expires_at_ms)",
    "CREATE TABLE IF NOT EXISTS sessiond_signing_keys ("
    " kid TEXT NOT NULL PRIMARY KEY,"
    " algorithm TEXT NOT NULL,"
    " private_key BLOB NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " signs_until_ms INTEGER NOT NULL"
    ")",
    "CREATE INDEX IF NOT EXISTS sessiond_signing_keys_until ON sessiond_signing_keys (signs_until_ms)",
    "CREATE TABLE IF NOT EXISTS sessiond_secrets ("
    " name TEXT NOT NULL PRIMARY KEY,"
    " value BLOB NOT NULL,"
    " created_at_ms INTEGER NOT NULL"
    ")",
    "CREATE TABLE IF NOT EXISTS sessiond_locks (name TEXT NOT NULL PRIMARY KEY)",
    "INSERT OR IGNORE INTO sessiond_locks (name) VALUES ('signing_keys')",
)
