"""Issue and check access, refresh and anti-CSRF tokens.

Access token: a JWT signed with the current signing key. Besides the
caller's payload it carries sub (user id), sid (session handle), iat and exp
(whole seconds; iat rounded down, exp up), iss, rth (hash of the refresh token issued with it), prth
(hash of that refresh token's parent, while the parent is still the stored
one) and csrf (hash of the anti-CSRF token).

Refresh token: ``v1.`` then base64url of a packed body and its HMAC-SHA256
under a per-deployment secret: the session handle, a random nonce and, for a
rotated token, the SHA-256 of its parent. Storage keeps only
SHA-256(SHA-256(token)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from sessiond._cache import TokenCache

from .errors import InvalidArgumentError, TryRefreshTokenError, UnauthorisedError
from .keys import KeyManager
from .validation import RESERVED_CLAIMS, check_handle, dump_json

REFRESH_PREFIX = "v1."
_BODY_VERSION = 1
_NONCE_BYTES = 16
_MAC_BYTES = 32
_HASH_BYTES = 32
# version + handle + nonce + parent flag, then an optional parent hash.
_BODY_BYTES = 1 + 16 + _NONCE_BYTES + 1
_MAX_REFRESH_TOKEN_CHARS = 256
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "sid", "rth"]
# Longer tokens (large payloads) are checked in full on every verify, so
# the verified-token cache keeps at most its size times this many characters.
MAX_CACHED_TOKEN_CHARS = 2048


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash1(token: str) -> bytes:
    """Return SHA-256 of a refresh token, the value a child token refers to."""
    return sha256(token.encode("ascii"))


def hash_anti_csrf(token: str) -> str:
    return b64url(sha256(token.encode("utf-8")))


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token that passed its MAC check."""

    token: str
    session_handle: str
    parent_hash1: bytes | None

    @property
    def hash1(self) -> bytes:
        return hash1(self.token)


class RefreshTokenCodec:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def issue(self, session_handle: str, parent_hash1: bytes | None) -> str:
        body = (
            bytes([_BODY_VERSION])
            + uuid.UUID(session_handle).bytes
            + secrets.token_bytes(_NONCE_BYTES)
        )
        body += b"\x01" + parent_hash1 if parent_hash1 is not None else b"\x00"
        return REFRESH_PREFIX + b64url(body + self._mac(body))

    def parse(self, token: str) -> RefreshToken:
        """Check a refresh token's form and MAC.

        Raises:
            UnauthorisedError: for any token this deployment did not issue.
        """
        invalid = UnauthorisedError("refresh token is invalid; log the user in again")
        if (
            not token.startswith(REFRESH_PREFIX)
            or len(token) > _MAX_REFRESH_TOKEN_CHARS
        ):
            raise invalid
        try:
            raw = _unb64url(token[len(REFRESH_PREFIX) :])
        except (binascii.Error, ValueError):
            raise invalid from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) not in (_BODY_BYTES, _BODY_BYTES + _HASH_BYTES):
            raise invalid
        if not hmac.compare_digest(mac, self._mac(body)) or body[0] != _BODY_VERSION:
            raise invalid
        # Base64 has several spellings of the same bytes; only the canonical
        # one is accepted, so one token has exactly one hash.
        if b64url(raw) != token[len(REFRESH_PREFIX) :]:
            raise invalid
        handle = str(uuid.UUID(bytes=body[1:17]))
        has_parent = body[_BODY_BYTES - 1]
        parent = body[_BODY_BYTES:] if has_parent == 1 else None
        if (parent is None) != (len(body) == _BODY_BYTES):
            raise invalid
        return RefreshToken(token=token, session_handle=handle, parent_hash1=parent)


@dataclass(frozen=True)
class AccessClaims:
    """The checked claims of an access token."""

    session_handle: str
    user_id: str
    # The caller's claims as compact JSON text, which is what verify
    # returns, and which takes far less memory in the cache than the
    # parsed objects (about a third for a 1,400-character token).
    payload_json: str
    refresh_hash1: bytes
    parent_refresh_hash1: bytes | None
    anti_csrf_hash: str | None
    expiry_ms: int


class AccessTokenCodec:
    def __init__(
        self,
        keys: KeyManager,
        *,
        issuer: str,
        validity_s: int,
        leeway_s: int,
        max_token_chars: int,
        cache_size: int = 0,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._validity_s = validity_s
        self._leeway_s = leeway_s
        self._max_token_chars = max_token_chars
        # token -> (its claims, the kid of the key that signed it).
        self._verified: TokenCache[tuple[AccessClaims, str]] = TokenCache(cache_size)

    def issue(
        self,
        *,
        session_handle: str,
        user_id: str,
        payload: dict[str, Any],
        refresh_hash1: bytes,
        parent_refresh_hash1: bytes | None,
        anti_csrf_hash: str | None,
        now_ms: int,
    ) -> tuple[str, int]:
        """Sign an access token; return it with its expiry in milliseconds."""
        issued_at_s = now_ms // 1000
        # Round exp up, never down: a token lives at least its validity, so a
        # 1 s token issued at x.999 is not already dead 1 ms later.
        expiry_s = -(-(now_ms + self._validity_s * 1000) // 1000)
        claims: dict[str, Any] = dict(payload)
        claims.update(
            iss=self._issuer,
            sub=user_id,
            sid=session_handle,
            iat=issued_at_s,
            exp=expiry_s,
            rth=b64url(refresh_hash1),
        )
        if parent_refresh_hash1 is not None:
            claims["prth"] = b64url(parent_refresh_hash1)
        if anti_csrf_hash is not None:
            claims["csrf"] = anti_csrf_hash
        key = self._keys.signing_key()
        token = jwt.encode(
            claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
        )
        return token, expiry_s * 1000

    def verify(self, token: str) -> AccessClaims:
        """Check signature, issuer and time claims, and return the claims.

        The algorithm comes from the key that the kid header names, never
        from the token's own alg header. A token that passed before skips
        the signature check: its claims come from the cache, and exp and
        its key are checked again on every call.

        Raises:
            TryRefreshTokenError: expired, or signed by a key this daemon does
                not know.
            UnauthorisedError: malformed, tampered or forged.
        """
        cached = self._verified.get(token)
        if cached is not None:
            self._check_still_valid(*cached)
            return cached[0]
        if len(token) > self._max_token_chars:
            raise UnauthorisedError(
                f"access token is {len(token)} characters, longer than any token sessiond issues"
            )
        if "=" in token:
            # Base64url in a JWS has no padding; allowing it would give one
            # token several spellings.
            raise UnauthorisedError("access token is malformed")
        try:
            header = _unverified_header(token)
        except jwt.InvalidTokenError:
            raise UnauthorisedError("access token is malformed") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnauthorisedError("access token has no kid header")
        key = self._keys.verification_key(kid)
        if key is None:
            raise TryRefreshTokenError(
                "access token is signed by an unknown or retired key; refresh the session"
            )
        if header.get("alg") != key.algorithm:
            raise UnauthorisedError("access token alg header does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": _REQUIRED_CLAIMS, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TryRefreshTokenError(
                "access token has expired; refresh the session"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorisedError(
                f"access token is invalid: {type(exc).__name__}"
            ) from None
        checked = _claims_from(claims)
        if len(token) <= MAX_CACHED_TOKEN_CHARS:
            self._verified.put(token, (checked, kid))
        return checked

    def _check_still_valid(self, claims: AccessClaims, kid: str) -> None:
        """Raise as jwt.decode and verify() would for a token that passed before.

        Of what verify() checks, only exp and the key's retirement change
        with time: the signature, issuer and claims were checked at first
        sight, and an iat that was not in the future then is not now.
        """
        # PyJWT's test: the token has expired when exp <= now - leeway.
        if claims.expiry_ms / 1000 <= time.time() - self._leeway_s:
            raise TryRefreshTokenError("access token has expired; refresh the session")
        if self._keys.verification_key(kid) is None:
            raise TryRefreshTokenError(
                "access token is signed by an unknown or retired key; refresh the session"
            )


_BASE64URL_TEXT = re.compile(r"[A-Za-z0-9_-]*")
_BASE64URL_VALUES = {
    character: value
    for value, character in enumerate(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
}


def _is_canonical_base64url(segment: str) -> bool:
    """Return whether segment is unpadded base64url whose unused last bits are 0."""
    remainder = len(segment) % 4
    if remainder == 1 or not _BASE64URL_TEXT.fullmatch(segment):
        return False
    if remainder == 0:
        return True
    # The last character carries 4 unused bits after 2 characters, 2 after 3.
    unused_mask = 0b1111 if remainder == 2 else 0b11
    return _BASE64URL_VALUES[segment[-1]] & unused_mask == 0


def _unverified_header(token: str) -> dict[str, Any]:
    """Return a JWS header, which names the key, before the signature is checked.

    jwt.get_unverified_header base64-decodes all three segments, checking
    each character in Python, and jwt.decode then does it all again. This
    checks the three segments' form with one regular expression each and
    decodes the header alone, so jwt.decode is the only full parse. It
    accepts what jwt.get_unverified_header accepts (checked against PyJWT
    2.15, and by tests/unit/test_tokens.py), because tokens that fail these
    checks, and headers with the rarer parameters (crit, b64, a kid that is
    not a string), go to jwt.get_unverified_header itself.

    Raises:
        jwt.InvalidTokenError: the token is malformed.
    """
    signing_input, _, signature = token.rpartition(".")
    header_segment, dot, payload = signing_input.partition(".")
    if not dot or not all(
        map(_is_canonical_base64url, (header_segment, payload, signature))
    ):
        return jwt.get_unverified_header(token)
    try:
        header = json.loads(_unb64url(header_segment))
    except (ValueError, RecursionError):
        return jwt.get_unverified_header(token)
    if (
        not isinstance(header, dict)
        or "crit" in header
        or "b64" in header
        or not isinstance(header.get("kid", ""), str)
    ):
        return jwt.get_unverified_header(token)
    return header


def _claims_from(claims: dict[str, Any]) -> AccessClaims:
    invalid = UnauthorisedError("access token claims are malformed")
    handle, user_id, exp = claims["sid"], claims["sub"], claims["exp"]
    if (
        not isinstance(handle, str)
        or not isinstance(user_id, str)
        or not isinstance(exp, int)
    ):
        raise invalid
    try:
        check_handle(handle)
        refresh_hash1 = _decode_hash(claims["rth"])
        parent = _decode_hash(claims["prth"]) if "prth" in claims else None
    except (ValueError, TypeError, InvalidArgumentError):
        raise invalid from None
    csrf = claims.get("csrf")
    if csrf is not None and not isinstance(csrf, str):
        raise invalid
    payload = {
        name: value for name, value in claims.items() if name not in RESERVED_CLAIMS
    }
    return AccessClaims(
        session_handle=handle,
        user_id=user_id,
        payload_json=dump_json(payload),
        refresh_hash1=refresh_hash1,
        parent_refresh_hash1=parent,
        anti_csrf_hash=csrf,
        expiry_ms=exp * 1000,
    )


def _decode_hash(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("hash claim is not a string")
    raw = _unb64url(value)
    if len(raw) != _HASH_BYTES:
        raise ValueError("hash claim has the wrong length")
    return raw


def new_anti_csrf_token() -> str:
    return secrets.token_urlsafe(32)
