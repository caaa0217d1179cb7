"""The gRPC floor server: one empty unary method, served in a process of its own.

floors.floor_grpc_server starts this script with the daemon's worker count
and server options. It binds a free port on 127.0.0.1, prints the port
number as one line on stdout, and serves until its stdin closes or it gets
SIGTERM or SIGINT. Only the bench has the write end of that stdin open, so
the server also stops when the bench dies without ending it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
from concurrent import futures
from typing import Any

import grpc

FLOOR_METHOD = "/sessiond.bench.Floor/Empty"
STOP_GRACE_S = 1.0


def empty(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


def build_server(workers: int, options: list[tuple[str, Any]]) -> grpc.Server:
    """Build a server with no interceptor whose one method takes and returns raw bytes."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floor"),
        options=options,
    )
    service, method = FLOOR_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(empty)}
            ),
        )
    )
    return server


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        required=True,
        help="threads in the server's thread pool",
    )
    parser.add_argument(
        "--options",
        required=True,
        help='gRPC server options as a JSON list of [name, value] pairs, such as [["grpc.so_reuseport", 0]]',
    )
    return parser.parse_args(argv)


def wait_for_stop() -> None:
    """Block until stdin reaches end of file or a SIGTERM or SIGINT arrives."""
    # Python writes a byte to the wakeup pipe for each signal, so select returns.
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin, wakeup_read], [], [])
        if wakeup_read in ready or not os.read(stdin, 4096):
            return


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    options = [(str(name), value) for name, value in json.loads(args.options)]
    server = build_server(args.workers, options)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        print("floor server: binding a port on 127.0.0.1 failed", file=sys.stderr)
        return 1
    server.start()
    print(port, flush=True)
    wait_for_stop()
    server.stop(STOP_GRACE_S).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
