"""Tests of the refresh token codec and the access token (JWT) codec.

The access token tests use a real KeyManager over an SQLite database in a
temporary directory. Its clock is a ManualClock set to the wall clock at
setup, because PyJWT checks exp and iat against the real time. Tokens that
must look expired or early are issued with a now_ms in the past or future.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond_server import clock
from sessiond_server.errors import TryRefreshTokenError, UnauthorisedError
from sessiond_server.keys import KeyManager
from sessiond_server.storage import Storage, open_storage
from sessiond_server.tokens import (
    MAX_CACHED_TOKEN_CHARS,
    AccessTokenCodec,
    RefreshTokenCodec,
    _unverified_header,
    hash1,
)

BASE64URL_ALPHABET = string.ascii_letters + string.digits + "-_"
ISSUER = "sessiond-test"
VALIDITY_S = 600
LEEWAY_S = 5
MAX_TOKEN_CHARS = 16 * 1024
FUZZ = settings(max_examples=200, deadline=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value).encode("utf-8"))


class ManualClock:
    """A clock in Unix milliseconds that moves only when a test sets it."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


# -- refresh tokens -----------------------------------------------------------


@pytest.fixture
def refresh_codec() -> RefreshTokenCodec:
    return RefreshTokenCodec(secrets.token_bytes(32))


def is_accepted(codec: RefreshTokenCodec, token: str) -> bool:
    """Return whether parse accepts token. Errors other than UnauthorisedError propagate."""
    try:
        codec.parse(token)
    except UnauthorisedError:
        return False
    return True


def test_refresh_round_trip_without_parent(refresh_codec: RefreshTokenCodec) -> None:
    handle = str(uuid.uuid4())

    token = refresh_codec.issue(handle, None)
    parsed = refresh_codec.parse(token)

    assert parsed.token == token
    assert parsed.session_handle == handle
    assert parsed.parent_hash1 is None


def test_refresh_round_trip_with_parent(refresh_codec: RefreshTokenCodec) -> None:
    handle = str(uuid.uuid4())
    parent = refresh_codec.issue(handle, None)

    child = refresh_codec.issue(handle, hash1(parent))
    parsed = refresh_codec.parse(child)

    assert parsed.session_handle == handle
    assert parsed.parent_hash1 == hash1(parent)
    assert parsed.hash1 == hash1(child)


def test_refresh_tokens_are_unique(refresh_codec: RefreshTokenCodec) -> None:
    handle = str(uuid.uuid4())

    assert refresh_codec.issue(handle, None) != refresh_codec.issue(handle, None)


@pytest.mark.parametrize("with_parent", [False, True], ids=["root", "child"])
def test_refresh_any_character_change_rejected(
    refresh_codec: RefreshTokenCodec, with_parent: bool
) -> None:
    handle = str(uuid.uuid4())
    parent = hash1(refresh_codec.issue(handle, None)) if with_parent else None
    token = refresh_codec.issue(handle, parent)

    accepted = []
    for position, original in enumerate(token):
        for replacement in BASE64URL_ALPHABET:
            if replacement == original:
                continue
            changed = token[:position] + replacement + token[position + 1 :]
            if is_accepted(refresh_codec, changed):
                accepted.append((position, replacement))

    assert accepted == []


@pytest.mark.parametrize("with_parent", [False, True], ids=["root", "child"])
def test_refresh_truncated_rejected(
    refresh_codec: RefreshTokenCodec, with_parent: bool
) -> None:
    handle = str(uuid.uuid4())
    parent = hash1(refresh_codec.issue(handle, None)) if with_parent else None
    token = refresh_codec.issue(handle, parent)

    accepted = [
        length
        for length in range(len(token))
        if is_accepted(refresh_codec, token[:length])
    ]

    assert accepted == []


def test_refresh_appended_text_rejected(refresh_codec: RefreshTokenCodec) -> None:
    token = refresh_codec.issue(str(uuid.uuid4()), None)

    for suffix in ("A", "=", "==", " ", "\n", ".x"):
        assert not is_accepted(refresh_codec, token + suffix), repr(suffix)


def test_refresh_standard_base64_rejected(refresh_codec: RefreshTokenCodec) -> None:
    # The standard alphabet decodes to the same bytes, but a token must have
    # exactly one spelling so that it has exactly one hash.
    token = next(
        candidate
        for candidate in (
            refresh_codec.issue(str(uuid.uuid4()), None) for _ in range(100)
        )
        if "-" in candidate or "_" in candidate
    )
    respelled = token.replace("-", "+").replace("_", "/")

    assert not is_accepted(refresh_codec, respelled)


def test_refresh_other_secret_rejected(refresh_codec: RefreshTokenCodec) -> None:
    other_deployment = RefreshTokenCodec(secrets.token_bytes(32))
    token = other_deployment.issue(str(uuid.uuid4()), None)

    assert not is_accepted(refresh_codec, token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("v1.", id="prefix-only"),
        pytest.param("v1.!!!!", id="not-base64"),
        pytest.param("v1." + "é" * 88, id="non-ascii"),
        pytest.param("v1." + "A" * 89, id="bad-length"),
        pytest.param("v2." + "A" * 88, id="other-version"),
        pytest.param("v1." + "A" * 10_240, id="ten-kilobytes"),
        pytest.param("x" * 10_240, id="ten-kilobytes-no-prefix"),
    ],
)
def test_refresh_garbage_rejected(refresh_codec: RefreshTokenCodec, token: str) -> None:
    with pytest.raises(UnauthorisedError):
        refresh_codec.parse(token)


FUZZ_SECRET = secrets.token_bytes(32)
latin1_text = st.binary(max_size=300).map(lambda data: data.decode("latin-1"))


@FUZZ
@given(st.text(max_size=300) | latin1_text)
def test_refresh_fuzz_only_unauthorised(text: str) -> None:
    codec = RefreshTokenCodec(FUZZ_SECRET)

    with pytest.raises(UnauthorisedError):
        codec.parse(text)
    with pytest.raises(UnauthorisedError):
        codec.parse("v1." + text)


# -- access tokens ------------------------------------------------------------


class AccessSetup:
    """A KeyManager over SQLite, and an AccessTokenCodec that uses it."""

    def __init__(self, storage: Storage, algorithm: str) -> None:
        self.storage = storage
        self.clock = ManualClock(clock.now_ms())
        self.keys = KeyManager(
            storage,
            algorithm=algorithm,
            rotation_interval_s=24 * 3600,
            verify_window_s=VALIDITY_S + LEEWAY_S,
            clock=self.clock,
        )
        self.keys.reload()
        self.codec = self.make_codec()

    def make_codec(
        self,
        *,
        issuer: str = ISSUER,
        max_token_chars: int = MAX_TOKEN_CHARS,
        cache_size: int = 0,
    ) -> AccessTokenCodec:
        return AccessTokenCodec(
            self.keys,
            issuer=issuer,
            validity_s=VALIDITY_S,
            leeway_s=LEEWAY_S,
            max_token_chars=max_token_chars,
            cache_size=cache_size,
        )

    def issue(self, *, now_ms: int | None = None, **changes: Any) -> tuple[str, int]:
        arguments: dict[str, Any] = {
            "session_handle": str(uuid.uuid4()),
            "user_id": "user-1",
            "payload": {"role": "reader"},
            "refresh_hash1": hashlib.sha256(b"refresh").digest(),
            "parent_refresh_hash1": None,
            "anti_csrf_hash": None,
            "now_ms": clock.now_ms() if now_ms is None else now_ms,
        }
        arguments.update(changes)
        return self.codec.issue(**arguments)

    def valid_claims(self) -> dict[str, Any]:
        now_s = clock.now_ms() // 1000
        return {
            "iss": ISSUER,
            "sub": "user-1",
            "sid": str(uuid.uuid4()),
            "iat": now_s,
            "exp": now_s + VALIDITY_S,
            "rth": b64url(hashlib.sha256(b"refresh").digest()),
        }


def open_setup(directory: Path, algorithm: str) -> AccessSetup:
    storage = open_storage(
        f"sqlite:///{directory / 'keys.db'}", pool_size=2, timeout_s=5
    )
    storage.migrate(clock.now_ms())
    return AccessSetup(storage, algorithm)


@pytest.fixture(scope="module", params=["EdDSA", "ES256", "RS256"])
def any_algorithm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AccessSetup]:
    setup = open_setup(tmp_path_factory.mktemp(request.param), request.param)
    yield setup
    setup.storage.close()


@pytest.fixture(scope="module")
def eddsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessSetup]:
    setup = open_setup(tmp_path_factory.mktemp("eddsa"), "EdDSA")
    yield setup
    setup.storage.close()


def test_access_round_trip(any_algorithm: AccessSetup) -> None:
    handle = str(uuid.uuid4())
    refresh = hashlib.sha256(b"child").digest()
    parent = hashlib.sha256(b"parent").digest()

    token, expiry_ms = any_algorithm.issue(
        session_handle=handle,
        user_id="ümlaut-user",
        payload={"role": "admin", "big": 2**70, "nested": {"sub": 1}},
        refresh_hash1=refresh,
        parent_refresh_hash1=parent,
        anti_csrf_hash="csrf-hash",
    )
    claims = any_algorithm.codec.verify(token)

    assert claims.session_handle == handle
    assert claims.user_id == "ümlaut-user"
    assert json.loads(claims.payload_json) == {
        "role": "admin",
        "big": 2**70,
        "nested": {"sub": 1},
    }
    assert claims.refresh_hash1 == refresh
    assert claims.parent_refresh_hash1 == parent
    assert claims.anti_csrf_hash == "csrf-hash"
    assert claims.expiry_ms == expiry_ms


def test_access_optional_claims_absent(any_algorithm: AccessSetup) -> None:
    token, _ = any_algorithm.issue()

    claims = any_algorithm.codec.verify(token)

    assert claims.parent_refresh_hash1 is None
    assert claims.anti_csrf_hash is None


def test_access_header_names_key(any_algorithm: AccessSetup) -> None:
    token, _ = any_algorithm.issue()
    key = any_algorithm.keys.signing_key()

    header = jwt.get_unverified_header(token)

    assert header["kid"] == key.kid
    assert header["alg"] == key.algorithm


@pytest.mark.parametrize("fraction_ms", [0, 1, 500, 999])
def test_access_times_are_whole_seconds(
    any_algorithm: AccessSetup, fraction_ms: int
) -> None:
    now_ms = (clock.now_ms() // 1000) * 1000 + fraction_ms
    token, expiry_ms = any_algorithm.issue(now_ms=now_ms)

    claims = jwt.decode(token, options={"verify_signature": False})

    assert type(claims["iat"]) is int
    assert type(claims["exp"]) is int
    assert claims["iat"] == now_ms // 1000
    assert expiry_ms == claims["exp"] * 1000


@pytest.mark.parametrize("fraction_ms", [0, 1, 500, 999])
def test_access_token_lives_at_least_its_validity(
    any_algorithm: AccessSetup, fraction_ms: int
) -> None:
    now_ms = (clock.now_ms() // 1000) * 1000 + fraction_ms
    _, expiry_ms = any_algorithm.issue(now_ms=now_ms)

    lifetime_ms = expiry_ms - now_ms

    assert VALIDITY_S * 1000 <= lifetime_ms < VALIDITY_S * 1000 + 1000


def test_access_expired_try_refresh(eddsa: AccessSetup) -> None:
    past_ms = clock.now_ms() - (VALIDITY_S + LEEWAY_S + 60) * 1000
    token, _ = eddsa.issue(now_ms=past_ms)

    with pytest.raises(TryRefreshTokenError):
        eddsa.codec.verify(token)


def test_access_expiry_within_leeway_accepted(eddsa: AccessSetup) -> None:
    # exp lands two or three seconds in the past, inside the 5 s leeway.
    past_ms = clock.now_ms() - (VALIDITY_S + 2) * 1000
    token, _ = eddsa.issue(now_ms=past_ms)

    assert eddsa.codec.verify(token).user_id == "user-1"


def test_access_future_iat_rejected(eddsa: AccessSetup) -> None:
    future_ms = clock.now_ms() + (LEEWAY_S + 60) * 1000
    token, _ = eddsa.issue(now_ms=future_ms)

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(token)


def test_access_iat_within_leeway_accepted(eddsa: AccessSetup) -> None:
    future_ms = clock.now_ms() + 2000
    token, _ = eddsa.issue(now_ms=future_ms)

    assert eddsa.codec.verify(token).user_id == "user-1"


def test_access_unknown_kid_try_refresh(eddsa: AccessSetup) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(
        eddsa.valid_claims(),
        stranger,
        algorithm="EdDSA",
        headers={"kid": "kid-no-daemon-created"},
    )

    with pytest.raises(TryRefreshTokenError):
        eddsa.codec.verify(token)


def test_access_missing_kid_unauthorised(eddsa: AccessSetup) -> None:
    token = jwt.encode(
        eddsa.valid_claims(), ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA"
    )

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(token)


def test_access_alg_none_unauthorised(eddsa: AccessSetup) -> None:
    kid = eddsa.keys.signing_key().kid
    for alg in ("none", "None", "NONE"):
        header = b64url_json({"alg": alg, "typ": "JWT", "kid": kid})
        token = f"{header}.{b64url_json(eddsa.valid_claims())}."

        with pytest.raises(UnauthorisedError):
            eddsa.codec.verify(token)


def hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def test_access_hs256_public_pem_unauthorised(any_algorithm: AccessSetup) -> None:
    key = any_algorithm.keys.signing_key()
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    token = hs256_token(header, any_algorithm.valid_claims(), pem)

    with pytest.raises(UnauthorisedError):
        any_algorithm.codec.verify(token)


def test_access_hs256_public_jwk_unauthorised(any_algorithm: AccessSetup) -> None:
    key = any_algorithm.keys.signing_key()
    jwk_text = json.dumps(key.public_jwk()).encode("utf-8")
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    token = hs256_token(header, any_algorithm.valid_claims(), jwk_text)

    with pytest.raises(UnauthorisedError):
        any_algorithm.codec.verify(token)


def test_access_alg_mismatch_unauthorised(eddsa: AccessSetup) -> None:
    # A validly signed ES256 token that names the daemon's EdDSA key.
    kid = eddsa.keys.signing_key().kid
    token = jwt.encode(
        eddsa.valid_claims(),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": kid},
    )

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(token)


def test_access_relabelled_alg_unauthorised(eddsa: AccessSetup) -> None:
    token, _ = eddsa.issue()
    _, payload, signature = token.split(".")
    kid = eddsa.keys.signing_key().kid
    header = b64url_json({"alg": "ES256", "typ": "JWT", "kid": kid})

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(f"{header}.{payload}.{signature}")


def test_access_tampered_payload_unauthorised(eddsa: AccessSetup) -> None:
    token, _ = eddsa.issue()
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(f"{header}.{b64url_json(claims)}.{signature}")


def test_access_other_issuer_unauthorised(eddsa: AccessSetup) -> None:
    token, _ = eddsa.issue()
    other = eddsa.make_codec(issuer="another-issuer")

    with pytest.raises(UnauthorisedError):
        other.verify(token)


def test_access_overlong_rejected_before_parsing(eddsa: AccessSetup) -> None:
    token, _ = eddsa.issue()
    exact = eddsa.make_codec(max_token_chars=len(token))
    short = eddsa.make_codec(max_token_chars=len(token) - 1)

    assert exact.verify(token).user_id == "user-1"
    with pytest.raises(UnauthorisedError) as raised:
        short.verify(token)
    assert "longer than" in raised.value.message


def test_access_huge_garbage_unauthorised(eddsa: AccessSetup) -> None:
    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify("a." * 1_000_000)


@st.composite
def jwt_shaped(draw: st.DrawFn, kid: str) -> str:
    """Three dot-separated base64url segments, with a JSON header that may name kid."""
    header: dict[str, Any] = draw(
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "b64"]),
            st.one_of(
                st.sampled_from(
                    ["none", "HS256", "EdDSA", "ES256", "RS256", kid, "JWT"]
                ),
                st.integers(),
                st.none(),
                st.lists(st.text(max_size=5), max_size=2),
            ),
        )
    )
    segments = [b64url_json(header)]
    segments.append(
        draw(
            st.one_of(
                st.binary(max_size=80).map(b64url),
                st.dictionaries(st.text(max_size=5), st.integers()).map(b64url_json),
            )
        )
    )
    segments.append(draw(st.binary(max_size=80)).hex())
    return ".".join(segments)


@FUZZ
@given(data=st.data())
def test_access_fuzz_text(eddsa: AccessSetup, data: st.DataObject) -> None:
    text = data.draw(st.text(max_size=400) | latin1_text)

    with pytest.raises((UnauthorisedError, TryRefreshTokenError)):
        eddsa.codec.verify(text)


@FUZZ
@given(data=st.data())
def test_access_fuzz_jwt_shaped(eddsa: AccessSetup, data: st.DataObject) -> None:
    token = data.draw(jwt_shaped(eddsa.keys.signing_key().kid))

    with pytest.raises((UnauthorisedError, TryRefreshTokenError)):
        eddsa.codec.verify(token)


@pytest.mark.parametrize("padding", ["=", "==", "=="])
def test_access_padded_signature_rejected(eddsa: AccessSetup, padding: str) -> None:
    token, _ = eddsa.issue()
    eddsa.codec.verify(token)
    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(token + padding)


# -- the header read before the signature check ---------------------------------


def pyjwt_header_outcome(token: str) -> Any:
    """Return PyJWT's header for token, or the name of the error it raises."""
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        return type(exc).__name__


def header_outcome(token: str) -> Any:
    try:
        return _unverified_header(token)
    except jwt.InvalidTokenError as exc:
        return type(exc).__name__


def odd_tokens(token: str) -> dict[str, str]:
    """Return variants of a valid token that PyJWT's header parser rejects or treats specially."""
    header, payload, signature = token.split(".")
    kid_header = json.loads(base64.urlsafe_b64decode(header + "=="))
    return {
        "valid": token,
        "two segments": f"{header}.{payload}",
        "one segment": header,
        "four segments": f"{token}.{signature}",
        "empty": "",
        "dots only": "..",
        "empty signature": f"{header}.{payload}.",
        "bad character in payload": f"{header}.{payload[:-1]}*.{signature}",
        "bad character in signature": f"{header}.{payload}.{signature[:-1]}/",
        "non-ASCII in payload": f"{header}.{payload}\u00e9.{signature}",
        "payload length 1 mod 4": f"{header}.{payload}{'A' * (5 - len(payload) % 4)}.{signature}",
        "non-canonical payload end": f"{header}.{payload[:-1]}{noncanonical_end(payload)}.{signature}",
        "non-canonical signature end": f"{header}.{payload}.{signature[:-1]}{noncanonical_end(signature)}",
        "header not JSON": f"{b64url(b'not json')}.{payload}.{signature}",
        "header a list": f"{b64url_json([1, 2])}.{payload}.{signature}",
        "kid a number": f"{b64url_json({**kid_header, 'kid': 7})}.{payload}.{signature}",
        "crit header": f"{b64url_json({**kid_header, 'crit': ['exp']})}.{payload}.{signature}",
        "b64 false": f"{b64url_json({**kid_header, 'b64': False})}.{payload}.{signature}",
        "no kid": f"{b64url_json({'alg': 'EdDSA'})}.{payload}.{signature}",
        "UTF-16 header": f"{b64url(json.dumps(kid_header).encode('utf-16'))}.{payload}.{signature}",
    }


def noncanonical_end(segment: str) -> str:
    """Return a last character for segment that sets bits base64url leaves unused."""
    if len(segment) % 4 == 0:
        pytest.skip("segment length leaves no unused bits")
    last = BASE64URL_ALPHABET.index(segment[-1])
    return BASE64URL_ALPHABET[last | 1]


def test_header_read_matches_pyjwt(eddsa: AccessSetup) -> None:
    token, _ = eddsa.issue()
    for name, variant in odd_tokens(token).items():
        expected = pyjwt_header_outcome(variant)

        assert header_outcome(variant) == expected, name


@FUZZ
@given(data=st.data())
def test_header_read_matches_pyjwt_fuzz(
    eddsa: AccessSetup, data: st.DataObject
) -> None:
    token, _ = eddsa.issue()
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from(BASE64URL_ALPHABET + ".=+/ \u00e9"))
    variant = token[:position] + replacement + token[position + 1 :]

    assert header_outcome(variant) == pyjwt_header_outcome(variant)


def test_access_malformed_unknown_kid_unauthorised(eddsa: AccessSetup) -> None:
    # A malformed token is rejected as malformed before its kid is looked up.
    header = b64url_json({"alg": "EdDSA", "kid": "kid-no-daemon-created"})
    token = f"{header}.not*base64.{b64url(b'signature')}"

    with pytest.raises(UnauthorisedError):
        eddsa.codec.verify(token)


# -- verified-token cache -----------------------------------------------------


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each jwt.decode call (the signature check) and let it run."""
    calls: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return calls


def test_cached_verify_skips_signature_check(
    eddsa: AccessSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = eddsa.make_codec(cache_size=10)
    token, _ = eddsa.issue()
    decodes = count_decodes(monkeypatch)

    first = codec.verify(token)
    second = codec.verify(token)

    assert second == first
    assert decodes == [token]


@pytest.mark.parametrize(
    ("cache_size", "payload"),
    [
        pytest.param(0, {"role": "reader"}, id="cache-off"),
        pytest.param(10, {"blob": "x" * MAX_CACHED_TOKEN_CHARS}, id="token-too-long"),
    ],
)
def test_uncached_token_checked_every_time(
    eddsa: AccessSetup,
    monkeypatch: pytest.MonkeyPatch,
    cache_size: int,
    payload: dict[str, Any],
) -> None:
    codec = eddsa.make_codec(cache_size=cache_size)
    token, _ = eddsa.issue(payload=payload)
    decodes = count_decodes(monkeypatch)

    codec.verify(token)
    codec.verify(token)

    assert decodes == [token, token]


def test_cache_forgets_oldest_beyond_size(
    eddsa: AccessSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = eddsa.make_codec(cache_size=2)
    tokens = [eddsa.issue()[0] for _ in range(3)]
    for token in tokens:
        codec.verify(token)
    decodes = count_decodes(monkeypatch)

    for token in reversed(tokens):
        codec.verify(token)

    # The first token was evicted by the third, so only it is checked again.
    assert decodes == [tokens[0]]


def test_cached_token_expires(eddsa: AccessSetup) -> None:
    codec = eddsa.make_codec(cache_size=10)
    # exp lands 1.1 to 2.1 s before the leeway runs out.
    issued_ms = clock.now_ms() - (VALIDITY_S + LEEWAY_S) * 1000 + 1100
    token, expiry_ms = eddsa.issue(now_ms=issued_ms)
    codec.verify(token)

    while time.time() <= expiry_ms / 1000 + LEEWAY_S:
        time.sleep(0.05)

    with pytest.raises(TryRefreshTokenError, match="expired"):
        codec.verify(token)


def test_cached_token_fails_once_its_key_retires(tmp_path: Path) -> None:
    setup = open_setup(tmp_path, "EdDSA")
    try:
        codec = setup.make_codec(cache_size=10)
        token, _ = setup.issue()
        codec.verify(token)

        # A year on, the key has long stopped signing and left its verify window.
        setup.clock.now_ms += 365 * 24 * 3600 * 1000

        with pytest.raises(TryRefreshTokenError, match="retired key"):
            codec.verify(token)
    finally:
        setup.storage.close()


def test_cache_does_not_accept_a_changed_token(eddsa: AccessSetup) -> None:
    codec = eddsa.make_codec(cache_size=10)
    token, _ = eddsa.issue()
    codec.verify(token)
    signing_input, _, signature = token.rpartition(".")
    changed = (
        signing_input + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    )

    with pytest.raises(UnauthorisedError):
        codec.verify(changed)
