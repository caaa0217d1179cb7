"""The ``sessiond`` command: serve, migrate, check-config and keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading
from dataclasses import fields, replace
from typing import Any

from . import __version__, clock, workers
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
    # Set by the supervisor on the worker processes it starts (workers > 1).
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    return parser


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object per line."""

    def __init__(self, worker_index: int | None = None) -> None:
        super().__init__()
        self.worker_index = worker_index

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.worker_index is not None:
            entry["worker"] = self.worker_index
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str, log_format: str = "text", worker_index: int | None = None
) -> None:
    """Send every log record to stderr, one line each, where journald collects it.

    A worker process (worker_index set) tags each line with its index, because
    all workers write to the supervisor's stderr.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker_index))
    else:
        worker = "" if worker_index is None else f"worker={worker_index} "
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s level=%(levelname)s logger=%(name)s {worker}%(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _serve(config: Config, argv: list[str], worker_index: int | None) -> int:
    """Serve until SIGTERM or SIGINT, or supervise worker processes when workers > 1.

    argv is the command line after the program name, which the supervisor
    passes on to its workers. worker_index is set in a worker process.
    """
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
    if config.workers > 1 and worker_index is None:
        return workers.supervise(config, argv, stopping)
    supervisor_pid = os.getppid()
    daemon = Daemon.start(config, worker_index or 0)
    print(f"sessiond listening on {daemon.address}", flush=True)
    exit_code = 0
    # Short waits, because the kernel may deliver SIGTERM to one of gRPC's
    # threads. Python then runs the handler only once the main thread wakes,
    # and a long wait would leave the signal pending until it ended.
    while not stopping.wait(0.5):
        if worker_index is not None and _supervisor_exited():
            logger.error(
                "supervisor exited, stopping worker index=%d supervisor_pid=%d",
                worker_index,
                supervisor_pid,
            )
            exit_code = 1
            break
    daemon.stop()
    return exit_code


def _supervisor_exited() -> bool:
    """Return whether a worker's stdin is at end of file.

    The supervisor has the only write end of that pipe and never writes,
    so end of file means it exited, even by SIGKILL, and the worker must not
    go on serving unsupervised.
    """
    readable, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(readable)


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
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    overrides = {
        setting.name: getattr(args, setting.name) for setting in fields(Config)
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"sessiond: invalid configuration: {exc}", file=sys.stderr)
        return 2
    worker_index: int | None = getattr(args, "worker_index", None)
    if worker_index is not None and not 0 <= worker_index < config.workers:
        print(
            f"sessiond: invalid --worker-index {worker_index}: the supervisor sets it "
            f"from 0 to workers - 1 ({config.workers - 1}); do not pass it yourself",
            file=sys.stderr,
        )
        return 2
    configure_logging(config.log_level, config.log_format, worker_index)
    try:
        if args.command == "migrate":
            return _migrate(config)
        if args.command == "check-config":
            return _check_config(config)
        if args.command == "keys":
            return _keys(config, args.action)
        return _serve(config, argv, worker_index)
    except (StartError, SessiondError, UnsealError) as exc:
        print(f"sessiond: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
