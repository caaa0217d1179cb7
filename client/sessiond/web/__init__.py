"""Web framework support: sessiond tokens in cookies, for browsers.

``sessiond.web`` contains the framework-neutral rules and imports no web
framework. The adapters import theirs and need the ``web`` extra
(``pip install 'sessiond[web]'``):

- ``sessiond.web.starlette``: Starlette and other ASGI apps built on it.
- ``sessiond.web.flask``: Flask.
"""

from ._transport import SAFE_METHODS as SAFE_METHODS
from ._transport import TRY_REFRESH_TOKEN as TRY_REFRESH_TOKEN
from ._transport import UNAUTHORISED as UNAUTHORISED
from ._transport import UNAVAILABLE as UNAVAILABLE
from ._transport import CookieUpdate as CookieUpdate
from ._transport import SessionRejectedError as SessionRejectedError
from ._transport import TokenTransport as TokenTransport
from ._transport import WebSettings as WebSettings
from ._transport import device_from_request as device_from_request

__all__ = [
    "SAFE_METHODS",
    "TRY_REFRESH_TOKEN",
    "UNAUTHORISED",
    "UNAVAILABLE",
    "CookieUpdate",
    "SessionRejectedError",
    "TokenTransport",
    "WebSettings",
    "device_from_request",
]
