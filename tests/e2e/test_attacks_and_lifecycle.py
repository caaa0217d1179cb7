"""Attacks on tokens and the end of a session's life, against a real daemon on both backends.

Covered here:
- forged access tokens (alg none, HMAC under public key text, tampered
  payloads, malformed tokens, hostile kid headers) are rejected, and on
  MySQL a forged signature does not cost a database query per call;
- a revoked session is rejected by every call that reaches the database;
- a data write that races with a revoke never brings the session back;
- expired sessions are hidden from every call before the cleanup job runs;
- a wrong or missing anti-CSRF token never ends the session;
- session data and payload values keep their JSON type and exact bytes,
  and invalid or oversized input is rejected with nothing stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jwt
import pymysql
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sessiond_testing import DaemonProcess, mysql_connect

import sessiond
from sessiond.errors import from_rpc_error
from sessiond.v1 import session_pb2 as pb
from sessiond.v1 import session_pb2_grpc

ACCEPTED_REJECTIONS = ("TryRefreshTokenError", "UnauthorisedError")
WRONG_ANTI_CSRF = "00000000-0000-0000-0000-000000000000"


# -- helpers ------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def decode_segment(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """Build a JWT signed with HMAC, using SHA-512 for HS512 and SHA-256 otherwise."""
    digest = hashlib.sha512 if header["alg"] == "HS512" else hashlib.sha256
    signing_input = f"{encode_segment(header)}.{encode_segment(claims)}"
    signature = hmac.new(key, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def canonical_json(value: Any) -> str:
    """Serialise a value so that equal text means equal JSON type and value.

    Plain == is not enough, because True == 1 and 0 == 0.0 == False in Python.
    """
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def public_key_texts(jwks: dict[str, Any], jwk: dict[str, Any]) -> dict[str, bytes]:
    """Return every published or derivable form of the public key, to use as an HMAC secret."""
    public_key = jwt.PyJWK(jwk).key
    texts = {
        "JWK JSON": json.dumps(jwk, separators=(",", ":")).encode(),
        "JWK JSON, spaced": json.dumps(jwk).encode(),
        "JWK Set JSON": json.dumps(jwks, separators=(",", ":")).encode(),
        "PEM": public_key.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
        "OpenSSH": public_key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
    }
    for member in ("x", "y", "n", "e"):
        if member in jwk:
            texts[f"JWK member {member}"] = jwk[member].encode()
    return texts


def foreign_private_key(algorithm: str) -> Any:
    """Generate a key of the daemon's algorithm that the daemon has never seen."""
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def build_forgeries(token: str, jwks: dict[str, Any]) -> dict[str, str]:
    """Build forged variants of a genuine access token, most of them claiming role admin."""
    header_segment, payload_segment, signature_segment = token.split(".")
    header = decode_segment(header_segment)
    kid = header["kid"]
    admin_claims = {**decode_segment(payload_segment), "role": "admin"}
    admin_segment = encode_segment(admin_claims)
    jwk = next(key for key in jwks["keys"] if key["kid"] == kid)
    forgeries: dict[str, str] = {}

    for alg in ("none", "None", "NONE", "nOnE"):
        unsigned = (
            f"{encode_segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{admin_segment}"
        )
        forgeries[f"alg {alg}, empty signature"] = unsigned + "."
        forgeries[f"alg {alg}, two segments"] = unsigned
    forgeries["alg none, no kid"] = (
        f"{encode_segment({'alg': 'none', 'typ': 'JWT'})}.{admin_segment}."
    )

    for secret in (b"", b"secret"):
        for header_kid in (None, kid):
            hs512_header = {"alg": "HS512", "typ": "JWT"}
            if header_kid is not None:
                hs512_header["kid"] = header_kid
            name = f"HS512 keyed by {secret!r}, kid {'set' if header_kid else 'absent'}"
            forgeries[name] = hmac_signed(hs512_header, admin_claims, secret)

    forgeries["genuine header and signature, admin payload"] = (
        f"{header_segment}.{admin_segment}.{signature_segment}"
    )
    for name, text in public_key_texts(jwks, jwk).items():
        forgeries[f"HS256 keyed by {name}"] = hmac_signed(
            {"alg": "HS256", "typ": "JWT", "kid": kid}, admin_claims, text
        )
    forgeries["signed by a foreign key, same alg and kid"] = jwt.encode(
        admin_claims,
        foreign_private_key(header["alg"]),
        algorithm=header["alg"],
        headers={"kid": kid},
    )

    forgeries["four segments a.b.c.d"] = "a.b.c.d"
    forgeries["genuine token plus a fourth segment"] = f"{token}.{signature_segment}"
    forgeries["300 KB garbage"] = secrets.token_urlsafe(225_000)
    forgeries["300 KB three segments"] = (
        f"{header_segment}.{'A' * 300_000}.{signature_segment}"
    )
    forgeries["empty string"] = ""
    forgeries["not base64"] = "!!!!.@@@@.####"
    forgeries["payload not base64"] = f"{header_segment}.%%%%.{signature_segment}"
    not_utf8 = b64url(bytes([0xFF, 0xFE, 0xFD]))
    forgeries["header not UTF-8"] = f"{not_utf8}.{payload_segment}.{signature_segment}"
    forgeries["header a JSON array"] = (
        f"{encode_segment(['alg', 'kid'])}.{payload_segment}.{signature_segment}"
    )

    hostile_kids: dict[str, Any] = {
        "missing kid": None,
        "empty kid": "",
        "kid a number": 123,
        "kid a list": [kid],
        "kid an object": {"$ne": ""},
        "kid path traversal": "../../../../../../etc/passwd",
        "kid absolute path": "/dev/null",
        "kid SQL always true": "' OR '1'='1",
        "kid SQL union": "x' UNION SELECT private_key FROM sessiond_signing_keys -- ",
        "kid SQL drop": "x'; DROP TABLE sessiond_sessions; -- ",
        "kid SQL wildcard": "%",
        "kid NUL byte": kid + "\x00",
    }
    for name, hostile_kid in hostile_kids.items():
        changed = {key: value for key, value in header.items() if key != "kid"}
        if hostile_kid is not None:
            changed["kid"] = hostile_kid
        forgeries[name] = (
            f"{encode_segment(changed)}.{payload_segment}.{signature_segment}"
        )
    return forgeries


def verify_outcome(
    client: sessiond.SessionClient,
    token: str,
    anti_csrf_token: str | None,
    *,
    check_database: bool,
) -> tuple[str, str]:
    """Verify a token and return the outcome name with all text the response carried."""
    try:
        session = client.get_session(
            token, anti_csrf_token, check_database=check_database
        )
    except sessiond.SessionError as error:
        return type(error).__name__, error.message
    text = json.dumps(session.access_token_payload) + session.user_id
    if session.access_token is not None:
        text += json.dumps(decode_segment(session.access_token.value.split(".")[1]))
    return "success", text


def call_outcome(call: Callable[..., Any], *args: Any) -> str:
    """Run a call and return "success" or the name of the SessionError it raised."""
    try:
        call(*args)
    except sessiond.SessionError as error:
        return type(error).__name__
    return "success"


def call_after_barrier(
    barrier: threading.Barrier, call: Callable[..., Any], *args: Any
) -> Any:
    """Wait at the barrier, run the call, and return its result or the name of its SessionError."""
    barrier.wait(5)
    try:
        return call(*args)
    except sessiond.SessionError as error:
        return type(error).__name__


def count_session_rows(database_url: str, handles: list[str]) -> int:
    """Count rows of sessiond_sessions with these handles, read by SQL and not through the daemon."""
    if database_url.startswith("sqlite:///"):
        marks = ", ".join("?" for _ in handles)
        query = (
            f"SELECT COUNT(*) FROM sessiond_sessions WHERE session_handle IN ({marks})"
        )
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return int(connection.execute(query, handles).fetchone()[0])
    marks = ", ".join("%s" for _ in handles)
    query = f"SELECT COUNT(*) FROM sessiond_sessions WHERE session_handle IN ({marks})"
    with contextlib.closing(mysql_connect(database_url)) as connection:
        with connection.cursor() as cursor:
            cursor.execute(query, handles)
            row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def global_com_select(connection: pymysql.Connection) -> int:
    """Return the server-wide count of SELECT statements since the server started."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
        row = cursor.fetchone()
    assert row is not None
    return int(row[1])


@contextlib.contextmanager
def raw_stub(daemon: DaemonProcess) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    """Open a generated stub without the SDK, to send request fields the SDK never sends."""
    with grpc.insecure_channel(daemon.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]


def tokens_of(session: sessiond.Session) -> tuple[str, str, str]:
    """Return the access, anti-CSRF and refresh tokens that create or refresh issued."""
    assert session.access_token is not None
    assert session.anti_csrf_token is not None
    assert session.refresh_token is not None
    return (
        session.access_token.value,
        session.anti_csrf_token.value,
        session.refresh_token.value,
    )


# -- forged access tokens -----------------------------------------------------


def test_forged_access_tokens_rejected(client: sessiond.SessionClient) -> None:
    session = client.create_new_session("user-forge", {"role": "reader"})
    access, csrf, _ = tokens_of(session)
    forgeries = build_forgeries(access, client.get_jwks())

    outcomes = {
        (name, check_database): verify_outcome(
            client, forged, csrf, check_database=check_database
        )
        for name, forged in forgeries.items()
        for check_database in (True, False)
    }

    wrong_outcome = {
        key: kind
        for key, (kind, _) in outcomes.items()
        if kind not in ACCEPTED_REJECTIONS
    }
    assert wrong_outcome == {}
    admin_seen = [key for key, (_, text) in outcomes.items() if "admin" in text]
    assert admin_seen == []

    genuine = client.get_session(access, csrf, check_database=True)
    assert genuine.handle == session.handle
    assert genuine.access_token_payload == {"role": "reader"}


@pytest.mark.mysql
def test_forged_signature_costs_no_query(
    start_daemon: Callable[..., DaemonProcess], private_mysql: Callable[..., Any]
) -> None:
    # A private server, because Com_select counts every client of a server.
    mysql_url = private_mysql("--character-set-server=utf8mb4").url
    daemon = start_daemon(mysql_url)
    with (
        daemon.client() as client,
        contextlib.closing(mysql_connect(mysql_url)) as connection,
    ):
        session = client.create_new_session("user-forge-cost", {"role": "reader"})
        access, csrf, _ = tokens_of(session)
        header_segment, _, signature_segment = access.split(".")
        admin_claims = {**decode_segment(access.split(".")[1]), "role": "admin"}
        forged = f"{header_segment}.{encode_segment(admin_claims)}.{signature_segment}"
        # The genuine token verifies, so the forgery differs from a working
        # token only in its payload.
        client.get_session(access, csrf)

        # The margin of 50 covers the daemon's own background queries: a
        # health check every 2 s and a key reload every 60 s.
        before = global_com_select(connection)
        outcomes = Counter(
            verify_outcome(client, forged, csrf, check_database=True)[0]
            for _ in range(1000)
        )
        after = global_com_select(connection)

    assert outcomes == {"UnauthorisedError": 1000}
    assert after - before < 50


# -- revoked sessions ---------------------------------------------------------


def test_revoked_session_rejected_everywhere(client: sessiond.SessionClient) -> None:
    user = "user-revoked"
    first = client.create_new_session(user, {"role": "reader"}, {"k": 1})
    second = client.create_new_session(user, {"role": "reader"}, {"k": 2})
    first_access, first_csrf, first_refresh = tokens_of(first)
    second_access, second_csrf, _ = tokens_of(second)
    child_access, child_csrf, child_refresh = tokens_of(
        client.refresh_session(first_refresh)
    )

    assert client.revoke_session(first.handle) is True

    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session(first_access, first_csrf, check_database=True)
    # The first use of a child access token promotes its refresh token, so
    # it reaches the database even without check_database.
    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session(child_access, child_csrf, check_database=False)
    # UnauthorisedError and TokenTheftDetectedError are sibling classes, so
    # these also prove that no theft is reported.
    with pytest.raises(sessiond.UnauthorisedError):
        client.refresh_session(child_refresh)
    with pytest.raises(sessiond.UnauthorisedError):
        client.refresh_session(first_refresh)
    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session_data(first.handle)
    with pytest.raises(sessiond.UnauthorisedError):
        client.update_session_data(first.handle, {"k": 9})

    assert client.get_all_session_handles_for_user(user) == [second.handle]
    still_live = client.get_session(second_access, second_csrf, check_database=True)
    assert still_live.handle == second.handle
    assert client.get_session_data(second.handle) == {"k": 2}
    assert client.revoke_session(first.handle) is False

    # The README ("How tokens work") documents verification without the
    # database check as stateless, so the revoked token verifies until it expires.
    stateless = client.get_session(first_access, first_csrf, check_database=False)
    assert stateless.handle == first.handle


# -- writes racing with revoke ------------------------------------------------


def test_update_after_revoke_no_resurrect(
    client: sessiond.SessionClient, database_url: str
) -> None:
    user = "user-write-after-revoke"
    session = client.create_new_session(user, {}, {"step": 0})
    assert client.revoke_session(session.handle) is True

    with pytest.raises(sessiond.UnauthorisedError):
        client.update_session_data(session.handle, {"step": 1})
    with pytest.raises(sessiond.UnauthorisedError):
        client.get_session_data(session.handle)
    assert client.get_all_session_handles_for_user(user) == []
    assert count_session_rows(database_url, [session.handle]) == 0


def test_concurrent_update_revoke_no_resurrect(
    client: sessiond.SessionClient, database_url: str
) -> None:
    user = "user-update-revoke-race"
    iterations = 50
    sessions: list[sessiond.Session] = []
    update_outcomes: Counter[str] = Counter()
    revoke_results: Counter[str] = Counter()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for step in range(iterations):
            session = client.create_new_session(user, {}, {"step": -1})
            sessions.append(session)
            barrier = threading.Barrier(2)
            updated = pool.submit(
                call_after_barrier,
                barrier,
                client.update_session_data,
                session.handle,
                {"step": step},
            )
            revoked = pool.submit(
                call_after_barrier, barrier, client.revoke_session, session.handle
            )
            update_result = updated.result()
            update_outcomes[
                "success" if isinstance(update_result, int) else str(update_result)
            ] += 1
            revoke_results[str(revoked.result())] += 1

    # The update may run before the revoke (success) or after it
    # (UnauthorisedError). Anything else is a fault.
    assert set(update_outcomes) <= {"success", "UnauthorisedError"}
    assert revoke_results == {"True": iterations}

    read_outcomes = Counter(
        call_outcome(client.get_session_data, session.handle) for session in sessions
    )
    assert read_outcomes == {"UnauthorisedError": iterations}
    refresh_tokens = [tokens_of(session)[2] for session in sessions]
    refresh_outcomes = Counter(
        call_outcome(client.refresh_session, token) for token in refresh_tokens
    )
    assert refresh_outcomes == {"UnauthorisedError": iterations}
    assert client.get_all_session_handles_for_user(user) == []
    handles = [session.handle for session in sessions]
    assert count_session_rows(database_url, handles) == 0


# -- expiry -------------------------------------------------------------------


def test_expired_session_hidden_before_cleanup(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    # Sessions live 3 s, access tokens an hour, and cleanup runs once a day,
    # so only the expiry filters of the reads can hide the first session.
    daemon = start_daemon(
        database_url,
        refresh_token_validity_s=3,
        access_token_validity_s=3600,
        cleanup_interval_s=86400,
    )
    user = "user-expired"
    with daemon.client() as client:
        expired = client.create_new_session(user, {}, {"k": 1})
        expired_access, expired_csrf, expired_refresh = tokens_of(expired)
        time.sleep(4.5)
        live = client.create_new_session(user, {}, {"k": 2})

        assert count_session_rows(database_url, [expired.handle]) == 1
        assert client.get_all_session_handles_for_user(user) == [live.handle]
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_data(expired.handle)
        with pytest.raises(sessiond.UnauthorisedError):
            client.update_session_data(expired.handle, {"k": 9})
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session_info(expired.handle)
        # UnauthorisedError is not TokenTheftDetectedError, so no theft is reported.
        with pytest.raises(sessiond.UnauthorisedError):
            client.refresh_session(expired_refresh)
        with pytest.raises(sessiond.UnauthorisedError):
            client.get_session(expired_access, expired_csrf, check_database=True)

        assert live.handle in client.revoke_all_sessions_for_user(user)
        assert client.get_all_session_handles_for_user(user) == []


# -- anti-CSRF ----------------------------------------------------------------


def test_bad_anti_csrf_keeps_session(client: sessiond.SessionClient) -> None:
    user = "user-csrf"
    session = client.create_new_session(user, {"r": 1}, {"k": 1})
    access, csrf, refresh = tokens_of(session)

    wrong_outcomes = Counter(
        verify_outcome(client, access, WRONG_ANTI_CSRF, check_database=True)[0]
        for _ in range(100)
    )
    assert wrong_outcomes == {"TryRefreshTokenError": 100}
    with pytest.raises(sessiond.TryRefreshTokenError):
        client.get_session(access, "", check_database=True)
    with pytest.raises(sessiond.TryRefreshTokenError):
        client.get_session(access, None, check_database=True)

    verified = client.get_session(access, csrf, check_database=True)
    assert verified.handle == session.handle
    assert client.get_all_session_handles_for_user(user) == [session.handle]
    assert client.get_session_data(session.handle) == {"k": 1}
    # A theft report would raise TokenTheftDetectedError here.
    refreshed = client.refresh_session(refresh)
    assert refreshed.handle == session.handle


# -- JSON type fidelity and input checks --------------------------------------

SESSION_DATA_VALUES: list[Any] = [
    [],
    [1, "two", {"3": [4]}],
    "plain text",
    "",
    0,
    -1.5,
    True,
    False,
    {},
    2**53 + 1,
    -(2**63) - 1,
    10**30,
    "Zoë 👋 日本語 مرحبا",
    {"名前": ["Ωmega", "🙂"], "nested": {"empty": "", "zero": 0, "false": False}},
]


def test_session_data_types_round_trip(client: sessiond.SessionClient) -> None:
    mismatches: list[tuple[str, str, str]] = []

    def check(stage: str, expected: Any, handle: str) -> None:
        got = canonical_json(client.get_session_data(handle))
        if got != canonical_json(expected):
            mismatches.append((stage, canonical_json(expected), got))

    for value in SESSION_DATA_VALUES:
        session = client.create_new_session("user-json-types", None, value)
        check("after create", value, session.handle)
        client.refresh_session(tokens_of(session)[2])
        check("after refresh", value, session.handle)
        client.update_session_data(session.handle, {"placeholder": 1})
        client.update_session_data(session.handle, value)
        check("after update", value, session.handle)

    assert mismatches == []


def test_session_data_null_round_trip(
    client: sessiond.SessionClient, daemon: DaemonProcess
) -> None:
    user = "user-json-null"
    # Session data left out is stored as {}; None is JSON null, at create
    # as at update.
    default = client.create_new_session(user)
    assert client.get_session_data(default.handle) == {}
    created_null = client.create_new_session(user, None, None)
    assert client.get_session_data(created_null.handle) is None
    assert client.get_session_data_versioned(created_null.handle).value is None
    client.refresh_session(tokens_of(created_null)[2])
    assert client.get_session_data(created_null.handle) is None

    session = client.create_new_session(user, None, {"placeholder": 1})
    client.update_session_data(session.handle, None)
    assert client.get_session_data(session.handle) is None
    client.refresh_session(tokens_of(session)[2])
    assert client.get_session_data(session.handle) is None

    with raw_stub(daemon) as stub:
        created = stub.CreateSession(
            pb.CreateSessionRequest(user_id=user, session_data_json="null"), timeout=10
        )
        handle = created.session.session_handle
        stored = stub.GetSessionData(
            pb.GetSessionDataRequest(session_handle=handle), timeout=10
        )
    assert stored.session_data_json == "null"
    assert client.get_session_data(handle) is None


def test_payload_values_round_trip(client: sessiond.SessionClient) -> None:
    # A payload must be an object, but its members may be any JSON value.
    payload = {
        "empty_list": [],
        "nested": [1, "two", {"3": [4]}],
        "empty_text": "",
        "zero": 0,
        "negative": -1.5,
        "yes": True,
        "no": False,
        "null": None,
        "empty_object": {},
        "big": 2**53 + 1,
        "unicode": "Zoë 👋 日本語",
    }
    expected = canonical_json(payload)
    session = client.create_new_session("user-json-payload", payload)
    access, csrf, refresh = tokens_of(session)
    assert canonical_json(session.access_token_payload) == expected

    verified = client.get_session(access, csrf, check_database=True)
    assert canonical_json(verified.access_token_payload) == expected
    refreshed = client.refresh_session(refresh)
    assert canonical_json(refreshed.access_token_payload) == expected
    child_access, child_csrf, _ = tokens_of(refreshed)
    promoted = client.get_session(child_access, child_csrf, check_database=True)
    assert canonical_json(promoted.access_token_payload) == expected
    info = client.get_session_info(session.handle)
    assert canonical_json(info.access_token_payload) == expected


def test_payload_non_object_rejected(client: sessiond.SessionClient) -> None:
    user = "user-payload-non-object"
    values: list[Any] = [[], "x", 0, True, False, "", -1.5, [{"role": "admin"}]]
    fields: dict[str, str] = {}
    for value in values:
        try:
            client.create_new_session(user, value)
        except sessiond.InvalidArgumentError as error:
            fields[repr(value)] = error.field
        except sessiond.SessionError as error:
            fields[repr(value)] = type(error).__name__
        else:
            fields[repr(value)] = "accepted"

    assert fields == {repr(value): "access_token_payload" for value in values}
    assert client.get_all_session_handles_for_user(user) == []


def test_payload_reserved_claims_rejected(client: sessiond.SessionClient) -> None:
    user = "user-payload-reserved"
    names = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "rth", "prth"]
    names += ["csrf", "kid"]
    fields: dict[str, str] = {}
    for name in names:
        try:
            client.create_new_session(user, {name: "forged", "role": "reader"})
        except sessiond.InvalidArgumentError as error:
            fields[name] = error.field
        except sessiond.SessionError as error:
            fields[name] = type(error).__name__
        else:
            fields[name] = "accepted"

    assert fields == {name: "access_token_payload" for name in names}
    assert client.get_all_session_handles_for_user(user) == []


def test_invalid_json_rejected_raw(
    client: sessiond.SessionClient, daemon: DaemonProcess
) -> None:
    user = "user-invalid-json"
    cases = [
        ("session_data", "{bad"),
        ("session_data", ""),
        ("session_data", "NaN"),
        ("session_data", "1e999"),
        ("session_data", '{"a":1} trailing'),
        ("access_token_payload", "{bad"),
        ("access_token_payload", "null"),
    ]
    results: dict[tuple[str, str], tuple[str, str]] = {}
    with raw_stub(daemon) as stub:
        for field, text in cases:
            request = pb.CreateSessionRequest(user_id=user, **{f"{field}_json": text})
            try:
                stub.CreateSession(request, timeout=10)
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                rejected = from_rpc_error(error)
                field_named = getattr(rejected, "field", "")
                results[(field, text)] = (error.code().name, field_named)
            else:
                results[(field, text)] = ("OK", "")

    assert results == {
        (field, text): ("INVALID_ARGUMENT", field) for field, text in cases
    }
    assert client.get_all_session_handles_for_user(user) == []


def test_session_data_limit_at_create(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, max_session_data_bytes=1000)
    user = "user-data-limit-create"
    with daemon.client() as client:
        # A JSON string of n - 2 ASCII letters is n bytes with its quotes.
        with pytest.raises(sessiond.InvalidArgumentError) as too_large:
            client.create_new_session(user, None, "a" * 999)
        assert too_large.value.field == "session_data"
        # 500 two-byte letters make 502 characters of JSON but 1002 bytes of UTF-8.
        with pytest.raises(sessiond.InvalidArgumentError) as too_many_bytes:
            client.create_new_session(user, None, "é" * 500)
        assert too_many_bytes.value.field == "session_data"
        assert client.get_all_session_handles_for_user(user) == []

        at_limit = client.create_new_session(user, None, "a" * 998)
        assert client.get_session_data(at_limit.handle) == "a" * 998


def test_session_data_limit_at_update(
    start_daemon: Callable[..., DaemonProcess], database_url: str
) -> None:
    daemon = start_daemon(database_url, max_session_data_bytes=1000)
    with daemon.client() as client:
        session = client.create_new_session("user-data-limit-update", None, {"k": 1})
        with pytest.raises(sessiond.InvalidArgumentError) as too_large:
            client.update_session_data(session.handle, {"k": "a" * 1000})
        assert too_large.value.field == "session_data"
        assert client.get_session_data(session.handle) == {"k": 1}
        assert client.get_session_info(session.handle).data_version == 1


def test_large_session_data_byte_identical(
    client: sessiond.SessionClient, daemon: DaemonProcess
) -> None:
    # 70,000 characters, with multi-byte letters, are well over the 65,535
    # bytes of a MySQL BLOB or TEXT column, the usual truncation point.
    alphabet = "sessiond é ü Ωmega 日本 👋 "
    body = (alphabet * 5000)[: 70_000 - len('{"blob":""}')]
    created_text = json.dumps({"blob": body}, ensure_ascii=False, separators=(",", ":"))
    updated_text = json.dumps(
        {"blob": body[::-1]}, ensure_ascii=False, separators=(",", ":")
    )
    assert len(created_text) == 70_000

    with raw_stub(daemon) as stub:
        created = stub.CreateSession(
            pb.CreateSessionRequest(
                user_id="user-large-data", session_data_json=created_text
            ),
            timeout=10,
        )
        handle = created.session.session_handle
        after_create = stub.GetSessionData(
            pb.GetSessionDataRequest(session_handle=handle), timeout=10
        ).session_data_json
        stub.UpdateSessionData(
            pb.UpdateSessionDataRequest(
                session_handle=handle, session_data_json=updated_text
            ),
            timeout=10,
        )
        after_update = stub.GetSessionData(
            pb.GetSessionDataRequest(session_handle=handle), timeout=10
        ).session_data_json

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    assert digest(after_create) == digest(created_text)
    assert digest(after_update) == digest(updated_text)
    assert client.get_session_data(handle) == {"blob": body[::-1]}
