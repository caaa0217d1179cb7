"""The revocation log: one row per session ended by a revoke or a theft detection.

Daemons poll it and stream new rows to subscribers, so that SDKs verifying
access tokens locally reject a revoked session's tokens without a database
query per request. seq orders the rows. On MySQL, AUTO_INCREMENT values are
taken at INSERT and become visible at COMMIT, so a reader can see seq 11
before seq 10; the reader in revocations.py waits for such gaps to fill.
Rows are deleted once no access token they concern can still be valid.
"""

VERSION = 2
DESCRIPTION = "create the revocation log"

MYSQL = (
    "CREATE TABLE IF NOT EXISTS sessiond_revocations ("
    " seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " session_handle CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
    " user_id VARBINARY(255) NOT NULL,"
    " reason VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
    " revoked_at_ms BIGINT NOT NULL,"
    " KEY sessiond_revocations_time (revoked_at_ms)"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
)

SQLITE = (
    # AUTOINCREMENT keeps seq from being reused after the newest rows are
    # deleted, so a subscriber's resume point never names a different row.
    "CREATE TABLE IF NOT EXISTS sessiond_revocations ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " session_handle TEXT NOT NULL,"
    " user_id BLOB NOT NULL,"
    " reason TEXT NOT NULL,"
    " revoked_at_ms INTEGER NOT NULL"
    ")",
    "CREATE INDEX IF NOT EXISTS sessiond_revocations_time ON sessiond_revocations (revoked_at_ms)",
)
