"""The ``sessiond`` command: serve and migrate."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import fields
from typing import Any

from . import __version__, clock
from .config import Config, ConfigError, load_config
from .daemon import Daemon, StartError
from .errors import SessiondError
from .storage import open_storage

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
    for command in (serve, migrate):
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


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _serve(config: Config) -> int:
    daemon = Daemon.start(config)
    print(f"sessiond listening on {daemon.address}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        logger.info("signal received signal=%s", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(3600):
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
    configure_logging(config.log_level)
    logger.info("starting version=%s config=%s", __version__, config.redacted())
    try:
        if args.command == "migrate":
            return _migrate(config)
        return _serve(config)
    except (StartError, SessiondError) as exc:
        print(f"sessiond: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
