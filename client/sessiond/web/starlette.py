"""Starlette adapter: sessiond tokens in cookies for Starlette apps.

    from sessiond.web import WebSettings
    from sessiond.web.starlette import SessionAuth

    auth = SessionAuth(client, WebSettings())

    async def note(request: Request) -> Response:
        session = await auth.verify_session(request)
        ...

    app = Starlette(routes=[
        Route("/auth/refresh", auth.refresh_endpoint, methods=["POST"]),
        Route("/auth/logout", auth.logout_endpoint, methods=["POST"]),
        Route("/note", note, methods=["GET", "POST"]),
    ])
    auth.install(app)

``install`` adds ``SessionCookieMiddleware``, which writes the cookies of
``verify_session`` and ``create_new_session`` into the response, and an
exception handler that turns ``SessionRejectedError`` into the 401 response.
The client's calls block, so they run in Starlette's thread pool.
FastAPI's Request is Starlette's, so a verifier also works as a FastAPI
dependency: ``session: Session = Depends(auth.verifier())``.
NOTE: the tests cover Starlette alone, not FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._calls import NOT_GIVEN
from .._client import SessionClient
from .._session import Session
from ._transport import (
    CookieUpdate,
    SessionRejectedError,
    TokenTransport,
    WebSettings,
    apply_cookies,
    device_from_request,
)

__all__ = [
    "PENDING_COOKIES_KEY",
    "SessionAuth",
    "SessionCookieMiddleware",
    "apply_cookies",
]

# The scope key under which SessionCookieMiddleware stores the cookies that
# handlers set in this request, as a list of CookieUpdate.
PENDING_COOKIES_KEY = "sessiond.pending_cookies"


def _set_cookie_header(cookie: CookieUpdate) -> bytes:
    """Format one cookie update as a Set-Cookie header value, as Response does."""
    response = Response()
    apply_cookies(response, [cookie])
    return next(value for name, value in response.raw_headers if name == b"set-cookie")


def _cookie_name(set_cookie_value: bytes) -> str:
    return set_cookie_value.split(b"=", 1)[0].strip().decode("latin-1")


class SessionCookieMiddleware:
    """ASGI middleware that writes the cookies that handlers set into the response.

    A cookie that the response already sets, by name, is left as the
    handler set it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: list[CookieUpdate] = []
        scope[PENDING_COOKIES_KEY] = pending

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                headers = list(message.get("headers", []))
                already_set = {
                    _cookie_name(value)
                    for header_name, value in headers
                    if header_name.lower() == b"set-cookie"
                }
                # The last update of each cookie wins, as it would in a browser.
                latest = {cookie.name: cookie for cookie in pending}
                for name, cookie in latest.items():
                    if name not in already_set:
                        headers.append((b"set-cookie", _set_cookie_header(cookie)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookies)


def _pending_cookies(request: Request) -> list[CookieUpdate]:
    pending = request.scope.get(PENDING_COOKIES_KEY)
    if pending is None:
        raise RuntimeError(
            "SessionCookieMiddleware is not installed, so new tokens would be "
            "lost; call SessionAuth.install(app) or add the middleware"
        )
    assert isinstance(pending, list)
    return pending


def _json_response(
    status: int, body: Any, cookies: Iterable[CookieUpdate] = ()
) -> Response:
    response: Response
    if body is None:
        response = Response(status_code=status)
    else:
        response = JSONResponse(body, status_code=status)
    # Responses that carry tokens must not be stored by shared caches.
    response.headers["Cache-Control"] = "no-store"
    apply_cookies(response, cookies)
    return response


class SessionAuth:
    """Verify, log in, refresh and log out Starlette requests with cookies.

    Args:
        client: the daemon's client, shared by all requests.
        settings: cookie and header names and attributes.
    """

    def __init__(
        self, client: SessionClient, settings: WebSettings | None = None
    ) -> None:
        self.client = client
        self.transport = TokenTransport(settings)
        self.settings = self.transport.settings

    def install(self, app: Starlette) -> None:
        """Add the cookie middleware and the SessionRejectedError handler to an app."""
        app.add_middleware(SessionCookieMiddleware)
        app.add_exception_handler(SessionRejectedError, self.rejection_response)

    async def rejection_response(self, request: Request, exc: Exception) -> Response:
        """Turn a SessionRejectedError into its JSON response, as the installed exception handler."""
        if not isinstance(exc, SessionRejectedError):
            raise exc
        return _json_response(exc.status, exc.body, exc.cookies)

    # -- verify ---------------------------------------------------------------

    def verifier(
        self,
        *,
        check_database: bool = False,
        require_anti_csrf_header: bool | None = None,
    ) -> Callable[[Request], Awaitable[Session]]:
        """Return an async function that verifies a request and returns its session.

        The options are fixed here, not per call, so that FastAPI, which
        reads a dependency's parameters from the query string, cannot let
        a request turn the anti-CSRF check off.

        Args:
            check_database: also check that the session still exists, so a
                revoked session is rejected before its access token expires.
            require_anti_csrf_header: None requires the anti-CSRF header on
                methods outside SAFE_METHODS; True on every method; False
                never (the cookie is accepted).

        The returned function raises SessionRejectedError, which the
        installed exception handler turns into a 401 or 503 response. A
        replacement access token from the daemon is set on the response.
        """

        async def verify_session(request: Request) -> Session:
            pending = _pending_cookies(request)
            settings = self.settings
            anti_csrf_token = self.transport.anti_csrf_token_for(
                request.method,
                request.headers.get(settings.anti_csrf_header),
                request.cookies.get(settings.anti_csrf_cookie),
                require_anti_csrf_header,
            )
            session, cookies = await run_in_threadpool(
                self.transport.verify,
                self.client,
                access_token=request.cookies.get(settings.access_token_cookie),
                anti_csrf_token=anti_csrf_token,
                check_database=check_database,
            )
            pending.extend(cookies)
            return session

        return verify_session

    async def verify_session(self, request: Request) -> Session:
        """Verify a request with the default options of ``verifier`` and return its session."""
        return await self.verifier()(request)

    # -- login, refresh, logout -------------------------------------------------

    async def create_new_session(
        self,
        request: Request,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = NOT_GIVEN,
    ) -> Session:
        """Log a user in and set the three cookies on this request's response.

        The session's device is the request's User-Agent header and peer
        address (see ``device_from_request``).
        """
        pending = _pending_cookies(request)
        device = device_from_request(
            request.headers.get("user-agent"),
            request.client.host if request.client is not None else None,
        )
        session, cookies = await run_in_threadpool(
            self.transport.login,
            self.client,
            user_id,
            access_token_payload,
            session_data,
            device=device,
        )
        pending.extend(cookies)
        return session

    async def refresh_endpoint(self, request: Request) -> Response:
        """Rotate the tokens, as the endpoint of POST ``settings.refresh_path``.

        The response is 204 with new cookies, or 401 ``unauthorised``.
        """
        try:
            _, cookies = await run_in_threadpool(
                self.transport.refresh,
                self.client,
                request.cookies.get(self.settings.refresh_token_cookie),
            )
        except SessionRejectedError as rejection:
            return _json_response(rejection.status, rejection.body, rejection.cookies)
        return _json_response(204, None, cookies)

    async def logout_endpoint(self, request: Request) -> Response:
        """Revoke the request's session and delete its cookies, as the endpoint of a POST route.

        The request needs the anti-CSRF header whatever its method, so that
        a forged request cannot log the user out. The response is 204, or
        401 as for ``verify_session``.
        """
        settings = self.settings
        anti_csrf_token = self.transport.anti_csrf_token_for(
            request.method,
            request.headers.get(settings.anti_csrf_header),
            request.cookies.get(settings.anti_csrf_cookie),
            True,
        )
        try:
            cookies = await run_in_threadpool(
                self.transport.logout,
                self.client,
                access_token=request.cookies.get(settings.access_token_cookie),
                anti_csrf_token=anti_csrf_token,
            )
        except SessionRejectedError as rejection:
            return _json_response(rejection.status, rejection.body, rejection.cookies)
        return _json_response(204, None, cookies)

    # -- explicit cookie helpers ----------------------------------------------

    def set_session_cookies(self, response: Response, session: Session) -> None:
        """Set the cookies of a session from ``create_new_session`` or ``refresh_session``."""
        apply_cookies(response, self.transport.session_cookies(session))

    def clear_session_cookies(self, response: Response) -> None:
        """Delete the three cookies."""
        apply_cookies(response, self.transport.cleared_cookies())
