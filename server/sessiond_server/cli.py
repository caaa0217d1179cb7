"""The ``sessiond`` command: serve, migrate, check-config and keys."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import fields, replace
from typing import Any

from . import __version__, clock
from .config import Config, ConfigError, load_config
from .daemon import Daemon, open_and_migrate
from .errors import SessiondError
from .keys import KeyManager
from .sealing import UnsealError
from .storage import open_storage
from .transport import StartError

logger = logging.getLogger("sessiond_server")

_BOOLEAN = {"true": True, "false": False}


def _setting_type(annotation: str) -> Any:
    if annotation == "bool":

        def parse(text: str) -> bool:
            if text.lower() not in _BOOLEAN:
                raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
            return _BOOLEAN[text.lower()]

        return parse
    return {"int": int, "float": float, "str": str}[annotation]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond", description="Session-management daemon."
    )
    parser.add_argument(
        "--version", action="version", version=f"sessiond {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC daemon")
    migrate = commands.add_parser(
        "migrate", help="apply database schema migrations and exit"
    )
    check = commands.add_parser(
        "check-config", help="validate the settings, print them and exit"
    )
    keys = commands.add_parser("keys", help="list or rotate the signing keys")
    keys.add_argument(
        "action",
        choices=("list", "rotate"),
        help="list: key ids, ages and states; rotate: sign with a new key from now on (running daemons switch within 1 s)",
    )
    for command in (serve, migrate, check, keys):
        command.add_argument("--config", metavar="FILE", help="TOML config file")
        for setting in fields(Config):
            command.add_argument(
                "--" + setting.name.replace("_", "-"),
                dest=setting.name,
                type=_setting_type(str(setting.type)),
                metavar="VALUE",
                help=f"overrides the {setting.name} setting",
            )
    return parser


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every log record to stderr, one line each, where journald collects it."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _serve(config: Config) -> int:
    logger.info("starting version=%s config=%s", __version__, config.redacted())
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        logger.info("signal received signal=%s", signal.Signals(signum).name)
        stopping.set()

    # Handlers go in before the daemon starts, so a SIGTERM that arrives
    # while it connects and binds still ends in a graceful stop. NOTE: one
    # that arrives while Python is still importing ends the process at once.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon = Daemon.start(config)
    print(f"sessiond listening on {daemon.address}", flush=True)
    # Short waits, because the kernel may deliver SIGTERM to one of gRPC's
    # threads. Python then runs the handler only once the main thread wakes,
    # and a long wait would leave the signal pending until it ended.
    while not stopping.wait(0.5):
        pass
    daemon.stop()
    return 0


def _migrate(config: Config) -> int:
    storage = open_storage(
        config.database_url, pool_size=1, timeout_s=config.db_timeout_s
    )
    try:
        applied = storage.migrate(clock.now_ms())
        version = storage.schema_version()
    finally:
        storage.close()
    print(f"schema at version {version}; applied {applied or 'nothing'}")
    return 0


def _check_config(config: Config) -> int:
    print("configuration is valid")
    for name, value in config.redacted().items():
        print(f"{name} = {value!r}")
    return 0


def _keys(config: Config, action: str) -> int:
    storage = open_and_migrate(replace(config, db_pool_size=1))
    try:
        keys = KeyManager.for_config(config, storage)
        if action == "rotate":
            key = keys.rotate()
            print(f"signing with new key kid={key.kid} algorithm={key.algorithm}")
            return 0
        keys.reload()
        now = clock.now_ms()
        for key in keys.loaded():
            state = "signing" if key.signs_until_ms > now else "verifying only"
            age_s = (now - key.created_at_ms) // 1000
            print(
                f"kid={key.kid} algorithm={key.algorithm} age_s={age_s} state={state}"
            )
    finally:
        storage.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        setting.name: getattr(args, setting.name) for setting in fields(Config)
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"sessiond: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        if args.command == "migrate":
            return _migrate(config)
        if args.command == "check-config":
            return _check_config(config)
        if args.command == "keys":
            return _keys(config, args.action)
        return _serve(config)
    except (StartError, SessiondError, UnsealError) as exc:
        print(f"sessiond: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
