"""``triton-inpaint serve``: run the bundled tritonserver in the foreground until SIGINT/SIGTERM.

Models whose process dies are reloaded by the server's supervisor; a server that dies is started
again on the same ports (up to ``--restarts`` times), so the service comes back without an operator.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from triton_inpaint.api.sizes import BUDGET_ENV, parse_size
from triton_inpaint.server.gpu_pool import cuda_pool_args
from triton_inpaint.server.plans import serving_refusal
from triton_inpaint.server.process import (
    ADMIN_HEADER,
    ADMIN_SECRET_ENV,
    LOOPBACK,
    ServerError,
    TritonServer,
    new_admin_secret,
    ready_models,
    repository_location,
    with_builtin,
)


def admin_secret(path: Path | None) -> str:
    """The admin header's value: the file's first line, else ``$TRITON_INPAINT_ADMIN_SECRET``, else a
    random one that only this process knows (its supervisor is then the only model controller)."""
    if path is not None:
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"--admin-secret-file {path}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"--admin-secret-file {path}: the file is empty")
        return secret
    return os.environ.get(ADMIN_SECRET_ENV, "").strip() or new_admin_secret()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    if args.memory_budget is not None:
        try:
            parse_size(args.memory_budget)
        except ValueError as exc:
            print(f"error: --memory-budget {exc}", file=sys.stderr)
            return 2
        os.environ[BUDGET_ENV] = args.memory_budget  # the denoise models read it when they load
    if not 0 <= args.grpc_max_connection_age <= 24 * 3600:
        print(
            f"error: --grpc-max-connection-age must be between 0 and 86400 seconds, got "
            f"{args.grpc_max_connection_age:g}",
            file=sys.stderr,
        )
        return 2
    try:
        secret = admin_secret(args.admin_secret_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    repositories = with_builtin(args.repository)
    stale = serving_refusal(repositories, log=lambda line: print(line, file=sys.stderr))
    if stale is not None:  # a model whose plan TensorRT would refuse, or that covers other shapes
        print(f"error: {stale}", file=sys.stderr)
        return 2
    # A repository with GPU models gets Triton's CUDA memory pool sized from each GPU's memory.
    extra_args = [*args.triton_arg, *cuda_pool_args(repositories, args.triton_arg)]
    restarts = 0
    while True:
        server = TritonServer(
            repositories=repositories,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            grpc_address=args.grpc_address,
            http_address=args.http_address,
            metrics_address=args.metrics_address,
            binary=args.tritonserver,
            backend_directory=args.backend_directory,
            extra_args=extra_args,
            admin_secret=secret,
            grpc_max_connection_age=args.grpc_max_connection_age or None,
            log=_log,
        )
        server.start(timeout=args.ready_timeout)  # a ServerError ends the command with its exit code
        models = ", ".join(ready_models(server.http_url))
        print(
            f"triton-inpaint: server ready (pid {server.pid}): HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics {server.metrics_url}; models: {models}",
            flush=True,
        )
        while not stop.wait(0.5) and server.process.poll() is None:
            pass
        if stop.is_set():
            break
        reason = server.failure_reason()
        server.stop()  # reaps what is left of it: stubs, shared memory
        if restarts >= args.restarts:
            raise ServerError(f"tritonserver stopped unexpectedly: {reason}")
        restarts += 1
        _log(f"triton-inpaint: tritonserver stopped unexpectedly; restart {restarts} of {args.restarts}")
        time.sleep(1.0)
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
        type=repository_location,
        action="append",
        required=True,
        help="model repository: a folder, or s3://, gs://, as:// as Triton reads them (credentials from "
        "the environment); repeat for several (hand-written and exported)",
    )
    _address_options(parser)
    _server_options(parser)
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for all models")
    parser.add_argument(
        "--restarts", type=int, default=5, help="times to start tritonserver again after it dies"
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        metavar="PATH",
        help="a tritonserver binary of the same release (2.51) to run instead of the bundled CPU one, "
        "e.g. /opt/tritonserver/bin/tritonserver in NVIDIA's container",
    )
    parser.add_argument(
        "--backend-directory",
        type=Path,
        default=None,
        metavar="DIR",
        help="the backends of --tritonserver (its Python backend's stub built for this Python); default: "
        "the bundled Python backend",
    )
    parser.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more tritonserver argument, e.g. --triton-arg=--backend-config=python,"
        "shm-default-byte-size=16777216; repeatable",
    )
    parser.set_defaults(handler=_serve)


def _address_options(parser: argparse.ArgumentParser) -> None:
    """Where Triton listens."""
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--grpc-address",
        default=LOOPBACK,
        help="address gRPC listens on; 0.0.0.0 lets other machines (the gateway's) reach Triton: it has no "
        "API keys or limits of its own, so allow only the gateway there (a firewall or NetworkPolicy)",
    )
    parser.add_argument(
        "--http-address",
        default=LOOPBACK,
        help="address HTTP listens on; keep it on loopback: Triton 2.51's HTTP frontend aborts the whole "
        "server on one malformed request (a huge declared tensor shape)",
    )
    parser.add_argument(
        "--metrics-address", default=LOOPBACK, help="address Prometheus metrics are served on"
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    """What Triton admits, how long it keeps connections, and who may control its models."""
    parser.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help=f"memory each checkpoint's networks may use for their work at once, e.g. 12GiB (also "
        f"${BUDGET_ENV}); a request estimated to need more is refused before any work, naming the largest "
        "size that fits, and one that fits waits until the requests in flight leave it room. Default: 90%% "
        "of the memory still free once every model is loaded (the GPU's on GPU runtimes)",
    )
    parser.add_argument(
        "--grpc-max-connection-age",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="close each gRPC connection after this long (calls in flight finish first): clients that "
        "spread requests over every address of a name (a headless Service) resolve it again and find "
        "servers added since. 0: connections last",
    )
    parser.add_argument(
        "--admin-secret-file",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"a file whose first line is the value of the '{ADMIN_HEADER}' header that Triton's model "
        f"control, shared-memory, trace and logging APIs require (also ${ADMIN_SECRET_ENV}); default: a "
        "random value only this process knows. Inference, health, metadata and statistics need no header",
    )
