"""Flask adapter: sessiond tokens in cookies for Flask apps.

    from sessiond.web import WebSettings
    from sessiond.web.flask import SessionAuth

    app = Flask(__name__)
    auth = SessionAuth(client, WebSettings(), app=app)
    app.post("/auth/refresh")(auth.refresh_endpoint)
    app.post("/auth/logout")(auth.logout_endpoint)

    @app.post("/note")
    def note() -> Response:
        session = auth.verify_session()
        ...

``init_app`` (called by the constructor when given ``app``) registers an
``after_request`` function, which writes the cookies of ``verify_session``
and ``create_new_session`` into the response, and an error handler that
turns ``SessionRejectedError`` into the 401 response. The functions read
Flask's ``request`` of the current request context.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request

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

__all__ = ["SessionAuth", "apply_cookies"]

# The flask.g attribute that stores the cookies that handlers set in this
# request, as a list of CookieUpdate.
_PENDING_COOKIES_ATTRIBUTE = "sessiond_pending_cookies"
_EXTENSION_NAME = "sessiond"


def _json_response(
    status: int, body: Any, cookies: Iterable[CookieUpdate] = ()
) -> Response:
    if body is None:
        response = Response(status=status)
    else:
        response = jsonify(body)
        response.status_code = status
    # Responses that carry tokens must not be stored by shared caches.
    response.headers["Cache-Control"] = "no-store"
    apply_cookies(response, cookies)
    return response


class SessionAuth:
    """Verify, log in, refresh and log out Flask requests with cookies.

    Args:
        client: the daemon's client, shared by all requests.
        settings: cookie and header names and attributes.
        app: the app to call ``init_app`` with, or None to call it later.
    """

    def __init__(
        self,
        client: SessionClient,
        settings: WebSettings | None = None,
        *,
        app: Flask | None = None,
    ) -> None:
        self.client = client
        self.transport = TokenTransport(settings)
        self.settings = self.transport.settings
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the after_request cookie writer and the SessionRejectedError handler."""
        app.extensions[_EXTENSION_NAME] = self
        app.after_request(self._write_pending_cookies)
        app.register_error_handler(SessionRejectedError, self.rejection_response)

    def rejection_response(self, rejection: SessionRejectedError) -> Response:
        """Turn a SessionRejectedError into its JSON response, as the registered error handler."""
        return _json_response(rejection.status, rejection.body, rejection.cookies)

    def _write_pending_cookies(self, response: Response) -> Response:
        pending: list[CookieUpdate] = g.pop(_PENDING_COOKIES_ATTRIBUTE, [])
        already_set = {
            value.split("=", 1)[0].strip()
            for value in response.headers.getlist("Set-Cookie")
        }
        # The last update of each cookie wins, as it would in a browser.
        latest = {cookie.name: cookie for cookie in pending}
        apply_cookies(
            response,
            [cookie for name, cookie in latest.items() if name not in already_set],
        )
        return response

    def _pending_cookies(self) -> list[CookieUpdate]:
        if current_app.extensions.get(_EXTENSION_NAME) is not self:
            raise RuntimeError(
                "SessionAuth.init_app was not called for this app, so new "
                "tokens would be lost; pass app= or call init_app(app)"
            )
        pending: list[CookieUpdate] = g.setdefault(_PENDING_COOKIES_ATTRIBUTE, [])
        return pending

    # -- verify ---------------------------------------------------------------

    def verify_session(
        self,
        *,
        check_database: bool = False,
        require_anti_csrf_header: bool | None = None,
    ) -> Session:
        """Verify the current request and return its session.

        A replacement access token from the daemon is set on the response.

        Args:
            check_database: also check that the session still exists, so a
                revoked session is rejected before its access token expires.
            require_anti_csrf_header: None requires the anti-CSRF header on
                methods outside SAFE_METHODS; True on every method; False
                never (the cookie is accepted).

        Raises:
            SessionRejectedError: turned into a 401 or 503 response by the
                registered error handler.
        """
        pending = self._pending_cookies()
        settings = self.settings
        anti_csrf_token = self.transport.anti_csrf_token_for(
            request.method,
            request.headers.get(settings.anti_csrf_header),
            request.cookies.get(settings.anti_csrf_cookie),
            require_anti_csrf_header,
        )
        session, cookies = self.transport.verify(
            self.client,
            access_token=request.cookies.get(settings.access_token_cookie),
            anti_csrf_token=anti_csrf_token,
            check_database=check_database,
        )
        pending.extend(cookies)
        return session

    # -- login, refresh, logout -------------------------------------------------

    def create_new_session(
        self,
        user_id: str,
        access_token_payload: dict[str, Any] | None = None,
        session_data: Any = NOT_GIVEN,
    ) -> Session:
        """Log a user in and set the three cookies on this request's response.

        The session's device is the request's User-Agent header and peer
        address (see ``device_from_request``).
        """
        pending = self._pending_cookies()
        device = device_from_request(
            request.headers.get("User-Agent"), request.remote_addr
        )
        session, cookies = self.transport.login(
            self.client, user_id, access_token_payload, session_data, device=device
        )
        pending.extend(cookies)
        return session

    def refresh_endpoint(self) -> Response:
        """Rotate the tokens, as the view of POST ``settings.refresh_path``.

        The response is 204 with new cookies, or 401 ``unauthorised``.
        """
        try:
            _, cookies = self.transport.refresh(
                self.client, request.cookies.get(self.settings.refresh_token_cookie)
            )
        except SessionRejectedError as rejection:
            return self.rejection_response(rejection)
        return _json_response(204, None, cookies)

    def logout_endpoint(self) -> Response:
        """Revoke the request's session and delete its cookies, as the view of a POST route.

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
            cookies = self.transport.logout(
                self.client,
                access_token=request.cookies.get(settings.access_token_cookie),
                anti_csrf_token=anti_csrf_token,
            )
        except SessionRejectedError as rejection:
            return self.rejection_response(rejection)
        return _json_response(204, None, cookies)

    # -- explicit cookie helpers ----------------------------------------------

    def set_session_cookies(self, response: Response, session: Session) -> None:
        """Set the cookies of a session from ``create_new_session`` or ``refresh_session``."""
        apply_cookies(response, self.transport.session_cookies(session))

    def clear_session_cookies(self, response: Response) -> None:
        """Delete the three cookies."""
        apply_cookies(response, self.transport.cleared_cookies())
