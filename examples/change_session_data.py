"""Log in, change the session data the way a web handler would, then log out.

Run it against a daemon: python examples/change_session_data.py 127.0.0.1:50051
"""

from __future__ import annotations

import sys

import sessiond


def add_to_cart(
    client: sessiond.SessionClient, access_token: str, anti_csrf_token: str, item: str
) -> list[str]:
    """A request handler: verify the caller, then change its cart in the session data.

    modify_session_data writes with the version it read and retries when
    another request wrote in between, so concurrent requests lose no items.
    """
    session = client.get_session(access_token, anti_csrf_token)
    written = session.modify_session_data(
        lambda data: {**data, "cart": [*data["cart"], item]}
    )
    cart: list[str] = written.value["cart"]
    return cart


def main(target: str) -> int:
    with sessiond.SessionClient(target) as client:
        login = client.create_new_session(
            "example-user", {"role": "shopper"}, {"cart": []}
        )
        assert login.access_token is not None and login.anti_csrf_token is not None
        add_to_cart(
            client, login.access_token.value, login.anti_csrf_token.value, "book"
        )
        cart = add_to_cart(
            client, login.access_token.value, login.anti_csrf_token.value, "pen"
        )
        print(f"cart: {cart}")
        print(f"stored: {client.get_session_data(login.handle)}")
        login.revoke()
        try:
            client.get_session_data(login.handle)
        except sessiond.UnauthorisedError:
            print("logged out: the session data is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
