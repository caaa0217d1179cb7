"""sessiond daemon: the server side of the session service."""

__version__ = "0.1.0"
