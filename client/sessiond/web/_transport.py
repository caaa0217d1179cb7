"""Framework-neutral transport of sessiond tokens between a web app and a browser.

The adapters in ``sessiond.web.starlette`` and ``sessiond.web.flask`` read
the request's cookies and headers, call the functions here, and turn the
results into their own responses. Nothing here imports a web framework.

Where each token travels (cookie names are those of ``WebSettings``):

- The access token is an HttpOnly cookie with Path=/, sent with every
  request. Its Max-Age ends when the token expires, so the browser stops
  sending it at that moment.
- The refresh token is an HttpOnly cookie whose Path is the refresh
  endpoint, so the browser sends it there and nowhere else.
- The anti-CSRF token is a cookie that scripts can read (not HttpOnly),
  which the front end copies into a request header on state-changing
  requests. A cookie instead of a response header, because pages loaded by
  navigation cannot read their own response headers, while a cookie
  survives reloads and is shared by tabs with no storage code in the front
  end. Only scripts of the app's own site can read the cookie, and that is
  what a forged cross-site form or link cannot do.

The default anti-CSRF names, cookie ``XSRF-TOKEN`` and header
``X-XSRF-TOKEN``, are the defaults of Angular's HttpClient (documented at
angular.dev, HttpClientXsrfModule), which then sends the header on
mutating requests with no code.

The front end acts on three responses, each with a JSON body. 401
``{"error": "try_refresh_token"}`` means call the refresh endpoint and
retry, 401 ``{"error": "unauthorised"}`` means log in again, and 503
``{"error": "unavailable"}`` means retry later.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._calls import NOT_GIVEN
from .._client import SessionClient
from .._session import DeviceInfo, Session, Token
from ..errors import (
    SessionError,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
    UnavailableError,
)

__all__ = [
    "SAFE_METHODS",
    "TRY_REFRESH_TOKEN",
    "UNAUTHORISED",
    "UNAVAILABLE",
    "CookieUpdate",
    "apply_cookies",
    "SessionRejectedError",
    "TokenTransport",
    "WebSettings",
    "device_from_request",
]

logger = logging.getLogger(__name__)

# The "error" values of the JSON body of rejected requests.
TRY_REFRESH_TOKEN = "try_refresh_token"
UNAUTHORISED = "unauthorised"
UNAVAILABLE = "unavailable"

# The methods that RFC 9110 defines as safe, which must not change state.
# Requests with these methods are verified with the anti-CSRF cookie when the
# header is missing, so that pages load by plain navigation.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# The daemon rejects a longer user agent (DeviceInfo).
MAX_USER_AGENT_BYTES = 512

# A cookie name or header name is an RFC 7230 token.
_TOKEN_PATTERN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAME_SITE_VALUES = ("lax", "strict", "none")


@dataclass(frozen=True)
class WebSettings:
    """Cookie and header names and cookie attributes.

    ``secure`` sets the Secure attribute on every cookie. Keep it on in
    production. Turn it off only for plain-http testing on a host that
    browsers do not treat as a secure context, because a browser neither
    stores nor sends Secure cookies over plain http there.
    ``same_site`` applies to all three cookies; ``"none"`` needs ``secure``.
    ``refresh_path`` is the Path of the refresh token cookie and must be
    the path where the app serves its refresh endpoint. ``domain`` is the
    Domain attribute, or None for a host-only cookie.
    """

    access_token_cookie: str = "sessiond_access_token"
    refresh_token_cookie: str = "sessiond_refresh_token"
    anti_csrf_cookie: str = "XSRF-TOKEN"
    anti_csrf_header: str = "X-XSRF-TOKEN"
    refresh_path: str = "/auth/refresh"
    secure: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    domain: str | None = None

    def __post_init__(self) -> None:
        names = {
            "access_token_cookie": self.access_token_cookie,
            "refresh_token_cookie": self.refresh_token_cookie,
            "anti_csrf_cookie": self.anti_csrf_cookie,
            "anti_csrf_header": self.anti_csrf_header,
        }
        for setting, name in names.items():
            if not _TOKEN_PATTERN.fullmatch(name):
                raise ValueError(
                    f"invalid {setting} {name!r}: use letters, digits and "
                    "!#$%&'*+-.^_`|~ only"
                )
        cookies = [
            self.access_token_cookie,
            self.refresh_token_cookie,
            self.anti_csrf_cookie,
        ]
        if len(set(cookies)) != len(cookies):
            raise ValueError(
                f"invalid cookie names {cookies}: the three cookies need different names"
            )
        if not self.refresh_path.startswith("/") or ";" in self.refresh_path:
            raise ValueError(
                f"invalid refresh_path {self.refresh_path!r}: use an absolute "
                "URL path such as /auth/refresh"
            )
        if self.same_site not in _SAME_SITE_VALUES:
            raise ValueError(
                f"invalid same_site {self.same_site!r}: use 'lax', 'strict' or 'none'"
            )
        if self.same_site == "none" and not self.secure:
            raise ValueError(
                "invalid same_site 'none' with secure=False: browsers reject "
                "SameSite=None cookies without Secure"
            )


@dataclass(frozen=True)
class CookieUpdate:
    """A cookie for the response to set, or to delete when ``max_age`` is 0.

    ``max_age`` is in seconds. ``same_site`` is lower case, as Starlette
    expects, and Flask accepts that too.
    """

    name: str
    value: str = field(repr=False)
    max_age: int
    path: str
    domain: str | None
    secure: bool
    http_only: bool
    same_site: Literal["lax", "strict", "none"]

    @property
    def deletes(self) -> bool:
        return self.max_age == 0


class SessionRejectedError(Exception):
    """A request without a usable session, and the response to send to the front end.

    The adapters raise it from ``verify_session`` and turn it into a
    response with ``status``, the JSON body ``{"error": error}`` and the
    cookie updates in ``cookies``.
    """

    def __init__(
        self, status: int, error: str, cookies: tuple[CookieUpdate, ...] = ()
    ) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error
        self.cookies = cookies

    @property
    def body(self) -> dict[str, str]:
        return {"error": self.error}


def _max_age_s(token: Token, now_s: float) -> int:
    """Return the seconds until the token expires, at least 1.

    NOTE: the expiry comes from the daemon's clock and ``now_s`` from this
    host's, so the two clocks must agree to within a few seconds.
    """
    return max(1, math.ceil(token.expiry_ms / 1000 - now_s))


def device_from_request(user_agent: str | None, client_host: str | None) -> DeviceInfo:
    """Build the DeviceInfo of a login from the User-Agent header and the peer address.

    The user agent is cut to the daemon's 512-byte limit. A peer address
    that is not an IP address, such as a test client's ``testclient``, is
    left out, because the daemon rejects it. Behind a reverse proxy the peer
    is the proxy, unless the framework is set up to trust its forwarding
    headers.
    """
    agent = None
    if user_agent:
        encoded = user_agent.encode("utf-8", errors="replace")
        agent = encoded[:MAX_USER_AGENT_BYTES].decode("utf-8", errors="ignore")
    address = None
    if client_host:
        try:
            address = str(ipaddress.ip_address(client_host))
        except ValueError:
            address = None
    return DeviceInfo(user_agent=agent, ip_address=address)


class TokenTransport:
    """The cookie and header rules of ``WebSettings``, and the daemon calls behind them.

    The methods that call the daemon block, so async adapters run them in a
    worker thread.
    """

    def __init__(
        self,
        settings: WebSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or WebSettings()
        self._clock = clock

    # -- cookies --------------------------------------------------------------

    def _cookie(
        self, name: str, value: str, max_age: int, *, path: str, http_only: bool
    ) -> CookieUpdate:
        return CookieUpdate(
            name=name,
            value=value,
            max_age=max_age,
            path=path,
            domain=self.settings.domain,
            secure=self.settings.secure,
            http_only=http_only,
            same_site=self.settings.same_site,
        )

    def _access_cookie(self, token: Token) -> CookieUpdate:
        return self._cookie(
            self.settings.access_token_cookie,
            token.value,
            _max_age_s(token, self._clock()),
            path="/",
            http_only=True,
        )

    def session_cookies(self, session: Session) -> tuple[CookieUpdate, ...]:
        """Return the cookies that store the tokens of a login or refresh.

        When the daemon runs with ``anti_csrf = false`` the session has no
        anti-CSRF token, and the anti-CSRF cookie is deleted instead.

        Raises:
            ValueError: the session lacks an access or refresh token, as
                sessions from ``get_session`` do.
        """
        access = session.access_token
        refresh = session.refresh_token
        if access is None or refresh is None:
            raise ValueError(
                "the session has no access or refresh token; pass the session "
                "that create_new_session or refresh_session returned"
            )
        now_s = self._clock()
        cookies = [
            self._access_cookie(access),
            self._cookie(
                self.settings.refresh_token_cookie,
                refresh.value,
                _max_age_s(refresh, now_s),
                path=self.settings.refresh_path,
                http_only=True,
            ),
        ]
        anti_csrf = session.anti_csrf_token
        if anti_csrf is None:
            cookies.append(self._deleted_anti_csrf_cookie())
        else:
            cookies.append(
                self._cookie(
                    self.settings.anti_csrf_cookie,
                    anti_csrf.value,
                    _max_age_s(anti_csrf, now_s),
                    path="/",
                    http_only=False,
                )
            )
        return tuple(cookies)

    def replacement_cookies(self, session: Session) -> tuple[CookieUpdate, ...]:
        """Return the access cookie to set when a verify returned a new access token."""
        if session.access_token is None:
            return ()
        return (self._access_cookie(session.access_token),)

    def _deleted_anti_csrf_cookie(self) -> CookieUpdate:
        return self._cookie(
            self.settings.anti_csrf_cookie, "", 0, path="/", http_only=False
        )

    def cleared_cookies(self) -> tuple[CookieUpdate, ...]:
        """Return deletions of all three cookies, with the paths they were set with."""
        return (
            self._cookie(
                self.settings.access_token_cookie, "", 0, path="/", http_only=True
            ),
            self._cookie(
                self.settings.refresh_token_cookie,
                "",
                0,
                path=self.settings.refresh_path,
                http_only=True,
            ),
            self._deleted_anti_csrf_cookie(),
        )

    # -- errors ---------------------------------------------------------------

    def rejection(self, error: SessionError) -> SessionRejectedError | None:
        """Map a client error to the response the front end acts on, or None to re-raise.

        TryRefreshTokenError keeps the cookies, so that neither an expired
        token nor a forged request without the anti-CSRF header ends the
        session. UnauthorisedError and TokenTheftDetectedError delete them.
        UnavailableError gives 503, and other errors are not mapped. The
        daemon's error messages contain no tokens, so they are logged.
        """
        if isinstance(error, TryRefreshTokenError):
            logger.debug("request needs a token refresh: %s", error.message)
            return SessionRejectedError(401, TRY_REFRESH_TOKEN)
        if isinstance(error, TokenTheftDetectedError):
            logger.warning(
                "token theft detected, session revoked and cookies deleted "
                "handle=%s user_id=%s",
                error.session_handle,
                error.user_id,
            )
            return SessionRejectedError(401, UNAUTHORISED, self.cleared_cookies())
        if isinstance(error, UnauthorisedError):
            logger.info("request unauthorised, cookies deleted: %s", error.message)
            return SessionRejectedError(401, UNAUTHORISED, self.cleared_cookies())
        if isinstance(error, UnavailableError):
            logger.warning("sessiond is unavailable: %s", error.message)
            return SessionRejectedError(503, UNAVAILABLE)
        return None

    # -- requests -------------------------------------------------------------

    def anti_csrf_token_for(
        self,
        method: str,
        header_value: str | None,
        cookie_value: str | None,
        require_header: bool | None,
    ) -> str | None:
        """Pick the anti-CSRF token to verify a request with.

        With ``require_header`` None, unsafe methods such as POST need the
        header, and safe methods (SAFE_METHODS) fall back to the cookie,
        which the browser sends on navigations too. Handlers of safe methods
        must therefore not change state. True always needs the header, and
        False always accepts the cookie.
        """
        if require_header is None:
            require_header = method.upper() not in SAFE_METHODS
        if header_value:
            return header_value
        if require_header:
            return None
        return cookie_value or None

    def verify(
        self,
        client: SessionClient,
        *,
        access_token: str | None,
        anti_csrf_token: str | None,
        check_database: bool = False,
    ) -> tuple[Session, tuple[CookieUpdate, ...]]:
        """Verify a request's access token and return the session and the cookies to set.

        A missing access token gives 401 try_refresh_token, because the
        refresh cookie is not sent to this path, so only the refresh
        endpoint can find out whether the user is still logged in.

        Raises:
            SessionRejectedError: the request has no usable session.
        """
        if not access_token:
            raise SessionRejectedError(401, TRY_REFRESH_TOKEN)
        try:
            session = client.get_session(
                access_token, anti_csrf_token, check_database=check_database
            )
        except SessionError as error:
            rejection = self.rejection(error)
            if rejection is None:
                raise
            raise rejection from None
        return session, self.replacement_cookies(session)

    def refresh(
        self, client: SessionClient, refresh_token: str | None
    ) -> tuple[Session, tuple[CookieUpdate, ...]]:
        """Rotate the refresh token and return the new session and its cookies.

        A missing refresh token gives 401 unauthorised but deletes no
        cookie. A forged cross-site POST arrives without the SameSite
        refresh cookie, and deleting the others would log the user out.

        Raises:
            SessionRejectedError: the user must log in again.
        """
        if not refresh_token:
            raise SessionRejectedError(401, UNAUTHORISED)
        try:
            session = client.refresh_session(refresh_token)
        except SessionError as error:
            rejection = self.rejection(error)
            if rejection is None:
                raise
            raise rejection from None
        return session, self.session_cookies(session)

    def login(
        self,
        client: SessionClient,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = NOT_GIVEN,
        *,
        device: DeviceInfo | None = None,
    ) -> tuple[Session, tuple[CookieUpdate, ...]]:
        """Create a session and return it with the cookies that store its tokens."""
        session = client.create_new_session(
            user_id, access_token_payload, session_data, device=device
        )
        return session, self.session_cookies(session)

    def logout(
        self,
        client: SessionClient,
        *,
        access_token: str | None,
        anti_csrf_token: str | None,
    ) -> tuple[CookieUpdate, ...]:
        """Verify the request, revoke its session, and return the cookie deletions.

        The request must pass verification like any state-changing request,
        so that a forged one cannot log the user out.

        Raises:
            SessionRejectedError: the request has no usable session.
        """
        session, _ = self.verify(
            client, access_token=access_token, anti_csrf_token=anti_csrf_token
        )
        session.revoke()
        return self.cleared_cookies()


def apply_cookies(response: Any, cookies: Iterable[CookieUpdate]) -> None:
    """Add a Set-Cookie header to the response for each cookie update.

    Flask's and Starlette's responses both take these keyword arguments.
    """
    for cookie in cookies:
        if cookie.deletes:
            response.delete_cookie(
                cookie.name,
                path=cookie.path,
                domain=cookie.domain,
                secure=cookie.secure,
                httponly=cookie.http_only,
                samesite=cookie.same_site,
            )
        else:
            response.set_cookie(
                cookie.name,
                cookie.value,
                max_age=cookie.max_age,
                path=cookie.path,
                domain=cookie.domain,
                secure=cookie.secure,
                httponly=cookie.http_only,
                samesite=cookie.same_site,
            )
