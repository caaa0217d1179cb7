"""A demo web app on sessiond: log in with a user name, keep a counter and a note, log out.

DEMO ONLY: the login form accepts any user name and checks no password.
A real app authenticates the user before it calls create_new_session.

The app uses the Flask adapter, sessiond.web.flask. The pages are static,
and static/app.js calls the JSON API below. When a call gets the response
401 {"error": "try_refresh_token"}, the script refreshes the tokens and
retries:

    GET  /login, POST /login   the login form; a session is created on POST
    GET  /                     the page with the counter and the note
    GET  /api/state            the user, counter and note
    POST /api/counter          add one to the counter
    POST /api/note             store a note (JSON {"note": "..."})
    POST /auth/refresh         rotate the tokens
    POST /auth/logout          revoke the session and delete the cookies

The access token lifetime is the daemon's access_token_validity_s.

Usage:
    sessiond serve --access-token-validity-s 30 &
    python examples/webapp/app.py --daemon 127.0.0.1:50051 --port 8000
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from flask import Flask, redirect, render_template, request, url_for
from werkzeug.serving import make_server

import sessiond
from sessiond.web import WebSettings
from sessiond.web.flask import SessionAuth

MAX_NOTE_CHARS = 200
INITIAL_DATA = {"counter": 0, "note": ""}


def create_app(client: sessiond.SessionClient, settings: WebSettings) -> Flask:
    """Build the demo app on a client of a running daemon."""
    app = Flask(__name__)
    auth = SessionAuth(client, settings, app=app)
    app.post(settings.refresh_path)(auth.refresh_endpoint)
    app.post("/auth/logout")(auth.logout_endpoint)

    def page(template: str, status: int = 200, **context: Any) -> Any:
        return render_template(template, settings=settings, **context), status

    @app.get("/login")
    def login_form() -> Any:
        return page("login.html", error=None)

    @app.post("/login")
    def login() -> Any:
        user_id = request.form.get("user_id", "").strip()
        if not user_id:
            return page("login.html", 400, error="Enter a user name.")
        try:
            auth.create_new_session(user_id, {}, INITIAL_DATA)
        except sessiond.InvalidArgumentError as exc:
            return page("login.html", 400, error=f"Invalid user name: {exc.message}")
        # 303: the browser follows with a GET, so a reload does not post again.
        return redirect(url_for("index"), code=303)

    @app.get("/")
    def index() -> Any:
        # The page contains no user data; the script fetches it from /api/state.
        return page("index.html")

    @app.get("/api/state")
    def state() -> Any:
        session = auth.verify_session()
        data = session.get_session_data()
        return {"user_id": session.user_id, **INITIAL_DATA, **data}

    @app.post("/api/counter")
    def increment() -> Any:
        session = auth.verify_session()
        written = session.modify_session_data(
            lambda data: {**data, "counter": data.get("counter", 0) + 1}
        )
        return {"counter": written.value["counter"]}

    @app.post("/api/note")
    def save_note() -> Any:
        session = auth.verify_session()
        body = request.get_json(silent=True)
        note = body.get("note") if isinstance(body, dict) else None
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            message = f"invalid note: send a JSON object whose note is text of at most {MAX_NOTE_CHARS} characters"
            return {"error": message}, 400
        written = session.merge_session_data({"note": note})
        return {"note": written.value["note"]}

    return app


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--daemon", default="127.0.0.1:50051", help="the daemon's HOST:PORT"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to serve on (default loopback)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the port to serve on, or 0 for a free one",
    )
    parser.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="set cookies without the Secure attribute, for plain http on a "
        "host that the browser does not treat as a secure context (Chromium "
        "156 keeps Secure cookies from http://127.0.0.1)",
    )
    args = parser.parse_args(argv)

    settings = WebSettings(secure=not args.insecure_cookies)
    signal.signal(signal.SIGTERM, _stop)
    with sessiond.SessionClient(args.daemon) as client:
        server = make_server(
            args.host, args.port, create_app(client, settings), threaded=True
        )
        print(
            f"webapp listening on http://{args.host}:{server.server_port}", flush=True
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
