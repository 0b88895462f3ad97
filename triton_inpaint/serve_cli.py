"""``triton-inpaint serve``: run the bundled tritonserver in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from triton_inpaint.server import ServerError, TritonServer, ready_models


def _serve(args: argparse.Namespace) -> int:
    server = TritonServer(
        repositories=args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start(timeout=args.ready_timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    models = ", ".join(ready_models(server.http_url))
    print(
        f"triton-inpaint: server ready (pid {server.pid}): HTTP {server.http_url}, gRPC {server.grpc_url}, "
        f"metrics 127.0.0.1:{server.metrics_port}; models: {models}",
        flush=True,
    )
    while not stop.wait(0.5):
        if server.process.poll() is not None:
            print(f"error: tritonserver stopped unexpectedly: {server.failure_reason()}", file=sys.stderr)
            return 1
    print("triton-inpaint: stopping", file=sys.stderr, flush=True)
    server.stop()
    print("triton-inpaint: stopped", flush=True)
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the bundled tritonserver (CPU) on model repositories",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--repository",
        type=Path,
        action="append",
        required=True,
        help="model repository; repeat for several (hand-written and exported)",
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for all models")
    parser.set_defaults(handler=_serve)
