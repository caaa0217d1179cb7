"""The Starlette and Flask adapters of sessiond.web, driven by their test clients.

Each test runs against a real daemon, once per adapter and backend. The two
apps have the same routes:

- POST /login (JSON {"user_id"}): create_new_session
- GET /me: verify_session, then the user and the session data
- GET /user: verify_session alone, then the user
- POST /note (JSON {"note"}): verify_session, then merge the note into the data
- GET /strict: verify with check_database=True
- GET /cookie-names: the names of the cookies the request carried (no check)
- POST /auth/refresh, POST /auth/logout: the adapters' endpoints
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import flask
import pytest
from sessiond_testing import DaemonProcess
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import sessiond
from sessiond.web import WebSettings
from sessiond.web import flask as flask_web
from sessiond.web import starlette as starlette_web

ACCESS = "sessiond_access_token"
REFRESH = "sessiond_refresh_token"
ANTI_CSRF = "XSRF-TOKEN"
ANTI_CSRF_HEADER = "X-XSRF-TOKEN"
REFRESH_PATH = "/auth/refresh"
USER_AGENT = "web-adapter-test/1.0"
DEFAULT_ACCESS_VALIDITY_S = 3600
DEFAULT_REFRESH_VALIDITY_S = 8_640_000


# -- a uniform view of both test clients --------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    # Set-Cookie headers by cookie name: "value" and the attributes, with
    # lower-case names; flags such as httponly map to True.
    cookies: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def parse_set_cookies(values: list[str]) -> dict[str, dict[str, Any]]:
    parsed: dict[str, dict[str, Any]] = {}
    for value in values:
        first, *attributes = (part.strip() for part in value.split(";"))
        name, _, cookie_value = first.partition("=")
        entry: dict[str, Any] = {"value": cookie_value.strip('"')}
        for attribute in attributes:
            key, sep, attribute_value = attribute.partition("=")
            entry[key.strip().lower()] = attribute_value if sep else True
        assert name not in parsed, f"two Set-Cookie headers for {name}: {values}"
        parsed[name] = entry
    return parsed


class Harness(Protocol):
    # The device IP address the daemon should store for a login.
    expected_ip: str | None

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send a request with the client's cookie jar."""
        ...

    def request_with_cookies(
        self,
        method: str,
        path: str,
        cookies: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send a request that carries exactly these cookies, bypassing the jar."""
        ...


def _cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


class StarletteHarness:
    # The TestClient's peer address is "testclient", which is no IP address.
    expected_ip: str | None = None

    def __init__(self, client: sessiond.SessionClient, settings: WebSettings) -> None:
        self.app = _starlette_app(client, settings)
        # https, because httpx's cookie jar sends Secure cookies only there.
        self.base_url = "https://testserver"
        self.client = TestClient(
            self.app, base_url=self.base_url, headers={"user-agent": USER_AGENT}
        )

    def _reply(self, response: Any) -> Reply:
        body = response.json() if response.content else None
        return Reply(
            response.status_code,
            body,
            parse_set_cookies(response.headers.get_list("set-cookie")),
            {name.lower(): value for name, value in response.headers.items()},
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return self._reply(
            self.client.request(method, path, json=json, headers=headers)
        )

    def request_with_cookies(
        self,
        method: str,
        path: str,
        cookies: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        fresh = TestClient(self.app, base_url=self.base_url)
        return self._reply(
            fresh.request(
                method, path, headers={**_cookie_header(cookies), **(headers or {})}
            )
        )


class FlaskHarness:
    # Werkzeug's test client reports the peer as 127.0.0.1.
    expected_ip: str | None = "127.0.0.1"

    def __init__(self, client: sessiond.SessionClient, settings: WebSettings) -> None:
        self.app = _flask_app(client, settings)
        self.client = self.app.test_client()
        self.client.environ_base["HTTP_USER_AGENT"] = USER_AGENT

    def _reply(self, response: Any) -> Reply:
        return Reply(
            response.status_code,
            response.get_json(silent=True),
            parse_set_cookies(response.headers.getlist("Set-Cookie")),
            {name.lower(): value for name, value in response.headers.items()},
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return self._reply(
            self.client.open(path, method=method, json=json, headers=headers)
        )

    def request_with_cookies(
        self,
        method: str,
        path: str,
        cookies: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        # use_cookies=False: a client with a jar would replace the Cookie header.
        fresh = self.app.test_client(use_cookies=False)
        return self._reply(
            fresh.open(
                path,
                method=method,
                headers={**_cookie_header(cookies), **(headers or {})},
            )
        )


def _starlette_app(client: sessiond.SessionClient, settings: WebSettings) -> Starlette:
    auth = starlette_web.SessionAuth(client, settings)
    verify_with_database = auth.verifier(check_database=True)

    async def login(request: Request) -> Response:
        body = await request.json()
        session = await auth.create_new_session(
            request, body["user_id"], {"role": "tester"}, {"note": ""}
        )
        return JSONResponse({"user_id": session.user_id})

    async def me(request: Request) -> Response:
        session = await auth.verify_session(request)
        data = await run_in_threadpool(session.get_session_data)
        return JSONResponse({"user_id": session.user_id, "data": data})

    async def note(request: Request) -> Response:
        session = await auth.verify_session(request)
        body = await request.json()
        await run_in_threadpool(session.merge_session_data, {"note": body["note"]})
        return JSONResponse({"note": body["note"]})

    async def user(request: Request) -> Response:
        session = await auth.verify_session(request)
        return JSONResponse({"user_id": session.user_id})

    async def strict(request: Request) -> Response:
        session = await verify_with_database(request)
        return JSONResponse({"user_id": session.user_id})

    async def cookie_names(request: Request) -> Response:
        return JSONResponse(sorted(request.cookies))

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/me", me, methods=["GET"]),
            Route("/note", note, methods=["POST"]),
            Route("/user", user, methods=["GET"]),
            Route("/strict", strict, methods=["GET"]),
            Route("/cookie-names", cookie_names, methods=["GET"]),
            Route(settings.refresh_path, auth.refresh_endpoint, methods=["POST"]),
            Route("/auth/logout", auth.logout_endpoint, methods=["POST"]),
        ]
    )
    auth.install(app)
    return app


def _flask_app(client: sessiond.SessionClient, settings: WebSettings) -> flask.Flask:
    app = flask.Flask(__name__)
    auth = flask_web.SessionAuth(client, settings, app=app)
    app.post(settings.refresh_path)(auth.refresh_endpoint)
    app.post("/auth/logout")(auth.logout_endpoint)

    @app.post("/login")
    def login() -> Any:
        body = flask.request.get_json()
        session = auth.create_new_session(
            body["user_id"], {"role": "tester"}, {"note": ""}
        )
        return {"user_id": session.user_id}

    @app.get("/me")
    def me() -> Any:
        session = auth.verify_session()
        return {"user_id": session.user_id, "data": session.get_session_data()}

    @app.post("/note")
    def note() -> Any:
        session = auth.verify_session()
        text = flask.request.get_json()["note"]
        session.merge_session_data({"note": text})
        return {"note": text}

    @app.get("/user")
    def user() -> Any:
        session = auth.verify_session()
        return {"user_id": session.user_id}

    @app.get("/strict")
    def strict() -> Any:
        session = auth.verify_session(check_database=True)
        return {"user_id": session.user_id}

    @app.get("/cookie-names")
    def cookie_names() -> Any:
        return sorted(flask.request.cookies)

    return app


HARNESSES: dict[str, Callable[[sessiond.SessionClient, WebSettings], Harness]] = {
    "starlette": StarletteHarness,
    "flask": FlaskHarness,
}


@pytest.fixture(params=sorted(HARNESSES))
def make_app(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Harness]]:
    """Build the app of one adapter for a daemon's client; the client closes at teardown."""
    opened: list[sessiond.SessionClient] = []

    def make(daemon: DaemonProcess, **settings: Any) -> Harness:
        client = daemon.client()
        opened.append(client)
        return HARNESSES[request.param](client, WebSettings(**settings))

    yield make
    for client in opened:
        client.close()


def _login(app: Harness, user_id: str = "web-user") -> Reply:
    reply = app.request("POST", "/login", json={"user_id": user_id})
    assert reply.status == 200, reply
    return reply


def _csrf(reply: Reply) -> dict[str, str]:
    return {ANTI_CSRF_HEADER: reply.cookies[ANTI_CSRF]["value"]}


def _assert_all_deleted(reply: Reply) -> None:
    assert set(reply.cookies) == {ACCESS, REFRESH, ANTI_CSRF}
    for name, cookie in reply.cookies.items():
        assert cookie["max-age"] == "0", name
        assert cookie["value"] == "", name
    assert reply.cookies[REFRESH]["path"] == REFRESH_PATH
    assert reply.cookies[ACCESS]["path"] == "/"
    assert reply.cookies[ANTI_CSRF]["path"] == "/"


# -- tests --------------------------------------------------------------------


def test_login_sets_token_cookies(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)

    reply = _login(app)

    assert set(reply.cookies) == {ACCESS, REFRESH, ANTI_CSRF}
    access = reply.cookies[ACCESS]
    assert access["httponly"] is True
    assert access["secure"] is True
    assert access["samesite"].lower() == "lax"
    assert access["path"] == "/"
    assert DEFAULT_ACCESS_VALIDITY_S - 10 <= int(access["max-age"])
    # exp rounds up to whole seconds, so it may be one second past the validity.
    assert int(access["max-age"]) <= DEFAULT_ACCESS_VALIDITY_S + 1
    refresh = reply.cookies[REFRESH]
    assert refresh["httponly"] is True
    assert refresh["secure"] is True
    assert refresh["samesite"].lower() == "lax"
    assert refresh["path"] == REFRESH_PATH
    assert DEFAULT_REFRESH_VALIDITY_S - 10 <= int(refresh["max-age"])
    anti_csrf = reply.cookies[ANTI_CSRF]
    assert "httponly" not in anti_csrf
    assert anti_csrf["secure"] is True
    assert anti_csrf["samesite"].lower() == "lax"
    assert anti_csrf["path"] == "/"
    assert anti_csrf["max-age"] == refresh["max-age"]
    for cookie in reply.cookies.values():
        assert "domain" not in cookie

    with daemon.client() as client:
        [details] = client.list_sessions("web-user")
    assert details.access_token_payload == {"role": "tester"}
    assert details.device is not None
    assert details.device.user_agent == USER_AGENT
    assert details.device.ip_address == app.expected_ip


def test_protected_routes_work(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)

    # GET is a safe method: the anti-CSRF cookie is enough.
    me = app.request("GET", "/me")
    assert me.status == 200, me
    assert me.body == {"user_id": "web-user", "data": {"note": ""}}
    assert me.cookies == {}

    note = app.request("POST", "/note", json={"note": "hello"}, headers=_csrf(login))
    assert note.status == 200, note
    assert app.request("GET", "/me").body["data"] == {"note": "hello"}

    # The refresh cookie stays on its own path.
    names = app.request("GET", "/cookie-names")
    assert names.body == sorted([ACCESS, ANTI_CSRF])


def test_post_without_anti_csrf_header(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)

    missing = app.request("POST", "/note", json={"note": "forged"})
    wrong = app.request(
        "POST", "/note", json={"note": "forged"}, headers={ANTI_CSRF_HEADER: "x" * 43}
    )
    logout = app.request("POST", "/auth/logout")

    for reply in (missing, wrong, logout):
        assert reply.status == 401, reply
        assert reply.body == {"error": "try_refresh_token"}
        assert reply.cookies == {}
        assert reply.headers["cache-control"] == "no-store"
    # The session survived, and none of the forged writes happened.
    ok = app.request("POST", "/note", json={"note": "mine"}, headers=_csrf(login))
    assert ok.status == 200, ok
    assert app.request("GET", "/me").body["data"] == {"note": "mine"}


def test_expired_access_token(
    make_app: Callable[..., Harness],
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
) -> None:
    daemon = start_daemon(
        database_url, access_token_validity_s=2, clock_skew_leeway_s=0
    )
    app = make_app(daemon)
    login = _login(app)
    access = login.cookies[ACCESS]["value"]
    # exp rounds up to whole seconds, so it is at most 3 s from now.
    assert int(login.cookies[ACCESS]["max-age"]) <= 3

    time.sleep(3.1)

    # The expired token itself: the daemon raises TryRefreshTokenError.
    expired = app.request_with_cookies(
        "GET", "/me", {ACCESS: access, ANTI_CSRF: login.cookies[ANTI_CSRF]["value"]}
    )
    # No access cookie at all, as after the browser drops it at Max-Age.
    missing = app.request_with_cookies(
        "GET", "/me", {ANTI_CSRF: login.cookies[ANTI_CSRF]["value"]}
    )
    for reply in (expired, missing):
        assert reply.status == 401, reply
        assert reply.body == {"error": "try_refresh_token"}
        assert reply.cookies == {}

    refreshed = app.request("POST", REFRESH_PATH)
    assert refreshed.status == 204, refreshed
    me = app.request("GET", "/me")
    assert me.status == 200, me


def test_refresh_rotates_tokens(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)

    refreshed = app.request("POST", REFRESH_PATH)

    assert refreshed.status == 204, refreshed
    assert refreshed.headers["cache-control"] == "no-store"
    assert set(refreshed.cookies) == {ACCESS, REFRESH, ANTI_CSRF}
    for name in (ACCESS, REFRESH, ANTI_CSRF):
        assert refreshed.cookies[name]["value"] != login.cookies[name]["value"], name
    assert refreshed.cookies[REFRESH]["path"] == REFRESH_PATH
    assert refreshed.cookies[REFRESH]["httponly"] is True
    assert refreshed.cookies[ACCESS]["path"] == "/"
    assert "httponly" not in refreshed.cookies[ANTI_CSRF]

    # The first verify of the new access token promotes the new refresh
    # token, and the daemon sends a replacement access token.
    first = app.request("GET", "/me")
    assert first.status == 200, first
    assert set(first.cookies) == {ACCESS}
    replacement = first.cookies[ACCESS]
    assert replacement["value"] != refreshed.cookies[ACCESS]["value"]
    assert replacement["httponly"] is True
    assert replacement["path"] == "/"
    second = app.request("GET", "/me")
    assert second.status == 200, second
    assert second.cookies == {}

    # The old anti-CSRF token no longer matches; the new one does.
    stale = app.request("POST", "/note", json={"note": "x"}, headers=_csrf(login))
    assert stale.status == 401, stale
    assert stale.body == {"error": "try_refresh_token"}
    fresh = app.request("POST", "/note", json={"note": "x"}, headers=_csrf(refreshed))
    assert fresh.status == 200, fresh


def test_replayed_refresh_token_clears_cookies(
    make_app: Callable[..., Harness],
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
) -> None:
    # With no grace period, a replay of a replaced refresh token is theft.
    daemon = start_daemon(database_url, refresh_grace_period_s=0)
    app = make_app(daemon)
    login = _login(app)
    first = app.request("POST", REFRESH_PATH)
    assert first.status == 204, first
    second = app.request("POST", REFRESH_PATH)
    assert second.status == 204, second

    replay = app.request_with_cookies(
        "POST", REFRESH_PATH, {REFRESH: login.cookies[REFRESH]["value"]}
    )

    assert replay.status == 401, replay
    assert replay.body == {"error": "unauthorised"}
    _assert_all_deleted(replay)
    with daemon.client() as client:
        assert client.get_all_session_handles_for_user("web-user") == []


def test_logout_clears_cookies_and_revokes(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)

    logout = app.request("POST", "/auth/logout", headers=_csrf(login))

    assert logout.status == 204, logout
    _assert_all_deleted(logout)
    with daemon.client() as client:
        assert client.get_all_session_handles_for_user("web-user") == []
    after = app.request("GET", "/me")
    assert after.status == 401, after
    assert after.body == {"error": "try_refresh_token"}
    refresh = app.request_with_cookies(
        "POST", REFRESH_PATH, {REFRESH: login.cookies[REFRESH]["value"]}
    )
    assert refresh.status == 401, refresh
    assert refresh.body == {"error": "unauthorised"}


def test_revoked_session_clears_cookies(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)
    cookies = {name: cookie["value"] for name, cookie in login.cookies.items()}
    with daemon.client() as client:
        assert client.revoke_all_sessions_for_user("web-user") != []

    # Without the database check the access token verifies until it expires.
    stateless = app.request_with_cookies("GET", "/user", cookies)
    strict = app.request_with_cookies("GET", "/strict", cookies)
    refresh = app.request_with_cookies(
        "POST", REFRESH_PATH, {REFRESH: cookies[REFRESH]}
    )

    assert stateless.status == 200, stateless
    for reply in (strict, refresh):
        assert reply.status == 401, reply
        assert reply.body == {"error": "unauthorised"}
        _assert_all_deleted(reply)


def test_refresh_without_cookie_deletes_nothing(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    login = _login(app)
    cookies = {name: cookie["value"] for name, cookie in login.cookies.items()}
    del cookies[REFRESH]

    # As a forged cross-site POST arrives: SameSite keeps the refresh cookie back.
    reply = app.request_with_cookies("POST", REFRESH_PATH, cookies)

    assert reply.status == 401, reply
    assert reply.body == {"error": "unauthorised"}
    assert reply.cookies == {}
    assert app.request("GET", "/me").status == 200


def test_garbage_access_token_clears_cookies(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)

    reply = app.request_with_cookies("GET", "/me", {ACCESS: "not-a-token"})

    assert reply.status == 401, reply
    assert reply.body == {"error": "unauthorised"}
    _assert_all_deleted(reply)


def test_daemon_down_gives_503(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(daemon)
    _login(app)
    assert daemon.stop() == 0

    reply = app.request("GET", "/me")

    assert reply.status == 503, reply
    assert reply.body == {"error": "unavailable"}
    assert reply.cookies == {}


def test_daemon_without_anti_csrf(
    make_app: Callable[..., Harness],
    start_daemon: Callable[..., DaemonProcess],
    database_url: str,
) -> None:
    daemon = start_daemon(database_url, anti_csrf=False)
    app = make_app(daemon)

    login = _login(app)

    assert login.cookies[ANTI_CSRF]["max-age"] == "0"
    assert login.cookies[ACCESS]["max-age"] != "0"
    note = app.request("POST", "/note", json={"note": "no header needed"})
    assert note.status == 200, note


def test_insecure_cookies_for_local_http(
    make_app: Callable[..., Harness], daemon: DaemonProcess
) -> None:
    app = make_app(
        daemon, secure=False, same_site="strict", refresh_path="/auth/refresh"
    )

    reply = _login(app)

    for name, cookie in reply.cookies.items():
        assert "secure" not in cookie, name
        assert cookie["samesite"].lower() == "strict", name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"same_site": "none", "secure": False}, "same_site 'none'"),
        ({"same_site": "loose"}, "invalid same_site"),
        ({"refresh_path": "auth/refresh"}, "invalid refresh_path"),
        ({"access_token_cookie": "a b"}, "invalid access_token_cookie"),
        ({"anti_csrf_header": "X:Y"}, "invalid anti_csrf_header"),
        ({"refresh_token_cookie": ACCESS}, "different names"),
    ],
)
def test_web_settings_rejects_invalid(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WebSettings(**settings)


def test_import_needs_no_web_framework() -> None:
    code = (
        "import sys, sessiond, sessiond.web\n"
        "loaded = sorted(m for m in ('starlette', 'flask', 'werkzeug', 'httpx') "
        "if m in sys.modules)\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_middleware_fails_loudly(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        starlette_auth = starlette_web.SessionAuth(client)

        async def me(request: Request) -> Response:
            await starlette_auth.verify_session(request)
            return JSONResponse({})

        bare = Starlette(routes=[Route("/me", me)])
        with pytest.raises(RuntimeError, match="SessionCookieMiddleware"):
            TestClient(bare).get("/me")

        flask_app = flask.Flask(__name__)
        flask_auth = flask_web.SessionAuth(client)

        @flask_app.get("/me")
        def flask_me() -> Any:
            flask_auth.verify_session()
            return {}

        flask_app.testing = True
        with pytest.raises(RuntimeError, match="init_app"):
            flask_app.test_client().get("/me")
