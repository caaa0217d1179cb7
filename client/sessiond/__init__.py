"""sessiond client: log users in, verify, refresh and revoke sessions, keep session data.

import sessiond

with sessiond.SessionClient("127.0.0.1:50051") as client:
    session = client.create_new_session("user-1", {"role": "reader"}, {"cart": []})

async with sessiond.AsyncSessionClient("127.0.0.1:50051") as client:
    session = await client.create_new_session("user-1")
"""

from ._aio import AsyncSessionClient as AsyncSessionClient
from ._client import SessionClient as SessionClient
from ._module import close as close
from ._module import create_new_session as create_new_session
from ._module import (
    get_all_session_handles_for_user as get_all_session_handles_for_user,
)
from ._module import get_jwks as get_jwks
from ._module import get_session as get_session
from ._module import get_session_data as get_session_data
from ._module import get_session_data_versioned as get_session_data_versioned
from ._module import get_session_info as get_session_info
from ._module import init as init
from ._module import list_sessions as list_sessions
from ._module import merge_session_data as merge_session_data
from ._module import modify_session_data as modify_session_data
from ._module import refresh_session as refresh_session
from ._module import regenerate_access_token as regenerate_access_token
from ._module import revoke_all_sessions_for_user as revoke_all_sessions_for_user
from ._module import revoke_session as revoke_session
from ._module import revoke_sessions as revoke_sessions
from ._module import update_access_token_payload as update_access_token_payload
from ._module import update_session_data as update_session_data
from ._retry import DEFAULT_RETRIES as DEFAULT_RETRIES
from ._retry import DEFAULT_RETRY_BACKOFF_MAX_S as DEFAULT_RETRY_BACKOFF_MAX_S
from ._retry import DEFAULT_RETRY_BACKOFF_S as DEFAULT_RETRY_BACKOFF_S
from ._retry import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from ._session import AsyncSession as AsyncSession
from ._session import DeviceInfo as DeviceInfo
from ._session import Session as Session
from ._session import SessionData as SessionData
from ._session import SessionDetails as SessionDetails
from ._session import SessionInfo as SessionInfo
from ._session import Token as Token
from .errors import ConflictError as ConflictError
from .errors import GeneralError as GeneralError
from .errors import InvalidArgumentError as InvalidArgumentError
from .errors import SessionError as SessionError
from .errors import TokenTheftDetectedError as TokenTheftDetectedError
from .errors import TryRefreshTokenError as TryRefreshTokenError
from .errors import UnauthorisedError as UnauthorisedError
from .errors import UnavailableError as UnavailableError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_BACKOFF_MAX_S",
    "DEFAULT_RETRY_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "AsyncSession",
    "AsyncSessionClient",
    "ConflictError",
    "DeviceInfo",
    "GeneralError",
    "InvalidArgumentError",
    "Session",
    "SessionClient",
    "SessionData",
    "SessionDetails",
    "SessionError",
    "SessionInfo",
    "Token",
    "TokenTheftDetectedError",
    "TryRefreshTokenError",
    "UnauthorisedError",
    "UnavailableError",
    "close",
    "create_new_session",
    "get_all_session_handles_for_user",
    "get_jwks",
    "get_session",
    "get_session_data",
    "get_session_data_versioned",
    "get_session_info",
    "init",
    "list_sessions",
    "merge_session_data",
    "modify_session_data",
    "refresh_session",
    "regenerate_access_token",
    "revoke_all_sessions_for_user",
    "revoke_session",
    "revoke_sessions",
    "update_access_token_payload",
    "update_session_data",
]
