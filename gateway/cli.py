"""``triton-inpaint gateway``: serve the HTTP API (uvicorn) in front of a Triton server."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded when the command runs, not when the CLI's parser is built
    import uvicorn

    from triton_inpaint.gateway.config import GatewayConfig


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from triton_inpaint.gateway.app import create_app

    try:
        config = _config(args)
    except OSError as exc:
        print(f"error: --keys {args.keys}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            # A WebSocket message is held to the same cap as a request body (uvicorn closes the
            # connection with 1009 on a larger frame, before it is buffered whole).
            ws_max_size=config.max_body_bytes,
        )
    )
    threading.Thread(target=_announce, args=(server, args, len(config.keys)), daemon=True).start()
    # uvicorn handles SIGINT and SIGTERM (finishes requests, stops the task worker), then raises the
    # signal again for the handler that was there before it: this one, so the exit stays clean.
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, lambda number, frame: None)
    server.run()
    print("gateway stopped", flush=True)
    return 0 if server.started else 1


def _config(args: argparse.Namespace) -> GatewayConfig:
    """The settings from the command line; OSError (the keys file) or ValueError naming the option."""
    from triton_inpaint.gateway.access.limits import load_keys
    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.inputs.fetch import FetchPolicy

    keys = load_keys(args.keys)
    s3 = _s3_settings(args)
    _check_tasks_options(args)
    return GatewayConfig(
        s3=s3,
        database_url=args.database or None,
        workers=args.workers,
        task_lease=args.task_lease,
        triton_url=args.triton,
        data_dir=args.data,
        keys=keys,
        public_url=args.public_url,
        trusted_hosts=tuple(args.trusted_host),
        listen_url=f"http://{_url_host(args.host)}:{args.port}",
        body_timeout=args.body_timeout,
        default_model=args.default_model,
        max_body_bytes=args.max_body_mb * 1024 * 1024,
        triton_timeout=args.timeout,
        concurrency_per_key=args.concurrency,
        requests_per_minute=args.rate,
        uploads_per_key=args.uploads_per_key,
        fetch=FetchPolicy(
            max_bytes=args.fetch_max_mb * 1024 * 1024,
            timeout=args.fetch_timeout,
            allowed_networks=tuple(args.allow_fetch_network),
        ),
    )


def _announce(server: uvicorn.Server, args: argparse.Namespace, keys: int) -> None:
    """One line once the gateway listens: where, in front of which Triton, with what stores."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if not server.started:
        return
    access = f"{keys} API key(s)" if keys else "no API keys (open access)"
    images = args.image_store or f"{args.data}/images"
    tasks = f"{args.data}/gateway.sqlite3"
    if args.database:
        from triton_inpaint.gateway.store.postgres import redacted

        tasks = redacted(args.database)
    print(
        f"gateway ready on http://{args.host}:{args.port} (Triton {args.triton}, {access}, images {images}, "
        f"tasks {tasks}, {args.workers} async worker(s))",
        flush=True,
    )


def _s3_settings(args: argparse.Namespace) -> object | None:
    from triton_inpaint.gateway.store.blobs import S3Settings

    if args.s3_presign < 0:
        raise ValueError(f"--s3-presign: must be 0 (off) or more seconds, got {args.s3_presign}")
    if not args.image_store:
        if args.s3_endpoint or args.s3_presign:
            raise ValueError("--s3-endpoint and --s3-presign need --image-store s3://BUCKET[/PREFIX]")
        return None
    try:
        return S3Settings.from_url(
            args.image_store,
            endpoint_url=args.s3_endpoint or None,
            region=args.s3_region or None,
            presign_seconds=args.s3_presign,
        )
    except ValueError as exc:
        raise ValueError(f"--image-store: {exc}") from None


def _check_tasks_options(args: argparse.Namespace) -> None:
    """Refuse task-store and limit options that cannot work, naming the option (exit 2, before anything
    starts)."""
    if not 1 <= args.uploads_per_key <= 100000:
        raise ValueError(f"--uploads-per-key: must be an integer in [1, 100000], got {args.uploads_per_key}")
    if args.workers < 1 or args.workers > 64:
        raise ValueError(f"--workers: must be an integer in [1, 64], got {args.workers}")
    if not 3.0 <= args.task_lease <= 3600.0:
        raise ValueError(f"--task-lease: must be in [3, 3600] seconds, got {args.task_lease:g}")
    if args.database and not args.database.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            "--database: must be a PostgreSQL URL, postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE "
            "(the password is not echoed)"
        )


def _url_host(host: str) -> str:
    """The listen address as a URL host: IPv6 in brackets, the wildcard as loopback."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="serve the HTTP API (Runware-style tasks, Eden-style async tasks) in front of Triton",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--triton",
        default="127.0.0.1:8001",
        help="Triton's gRPC target: HOST:PORT, or a name resolving to several Tritons, e.g. dns:///NAME:PORT "
        "of a headless Service; requests are spread over every address, one by one, and the name is "
        "resolved again as connections close",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="file of API keys, one per line ('#' comments); $TRITON_INPAINT_API_KEYS adds comma-separated "
        "keys; with none, no key is asked for",
    )
    parser.add_argument("--data", type=Path, default=Path("build/gateway"), help="images and task database")
    parser.add_argument(
        "--public-url",
        default=None,
        help="base of image URLs, e.g. https://inpaint.example.com (default: the request's Host when it "
        "is trusted, else the listen address)",
    )
    parser.add_argument(
        "--trusted-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a Host header that image URLs may be built from when --public-url is not set (loopback "
        "names of --port always are); repeatable. Any other Host gets the listen address",
    )
    _store_options(parser)
    _limit_options(parser)
    parser.set_defaults(handler=_serve)


def _store_options(parser: argparse.ArgumentParser) -> None:
    """Where images and async tasks are kept, and how many tasks run at once."""
    parser.add_argument(
        "--image-store",
        default=os.environ.get("TRITON_INPAINT_IMAGE_STORE", ""),
        metavar="s3://BUCKET[/PREFIX]",
        help="keep image bytes in this S3-compatible bucket instead of under --data "
        "($TRITON_INPAINT_IMAGE_STORE; credentials from boto3's usual chain: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, a profile or a pod role)",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=os.environ.get("TRITON_INPAINT_S3_ENDPOINT", ""),
        help="the object store's URL for MinIO and other S3-compatible servers ($TRITON_INPAINT_S3_ENDPOINT; "
        "default: AWS)",
    )
    parser.add_argument(
        "--s3-region", default=os.environ.get("AWS_REGION", ""), help="the bucket's region ($AWS_REGION)"
    )
    parser.add_argument(
        "--s3-presign",
        type=int,
        default=0,
        metavar="SECONDS",
        help="image URLs (/images/...) redirect to presigned bucket URLs valid this long, so image bytes "
        "do not pass through the gateway; 0 serves them through the gateway",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("TRITON_INPAINT_DATABASE_URL", ""),
        metavar="postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE",
        help="keep async tasks, the image index and per-key limits in this PostgreSQL database, shared by "
        "every gateway replica, instead of in --data ($TRITON_INPAINT_DATABASE_URL; use it with "
        "--image-store so that every replica can read every image)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="async tasks this gateway runs at once (each waits on Triton; Triton batches and queues them)",
    )
    parser.add_argument(
        "--task-lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a worker renews its hold on a running async task every third of this; a task whose "
        "gateway died is taken over by another once it has run out",
    )
    parser.add_argument("--default-model", default=None, help="model for async tasks that name none")


def _limit_options(parser: argparse.ArgumentParser) -> None:
    """What one request, one key and one fetched image may take."""
    parser.add_argument("--max-body-mb", type=int, default=64, help="largest request body, MiB")
    parser.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds a request body may take to arrive (408)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one Triton request may take")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests processed at once per key (counted once a request's body has arrived)",
    )
    parser.add_argument(
        "--uploads-per-key",
        type=int,
        default=32,
        help="request bodies arriving at once per key in one gateway process: uploads stalled mid-body hold "
        "no processing slot, and this bounds how many one key can keep open (429 beyond)",
    )
    parser.add_argument("--rate", type=int, default=120, help="requests a minute per key")
    parser.add_argument("--fetch-timeout", type=float, default=15.0, help="seconds to fetch an image URL")
    parser.add_argument("--fetch-max-mb", type=int, default=20, help="largest image URL body, MiB")
    parser.add_argument(
        "--allow-fetch-network",
        type=ipaddress.ip_network,
        action="append",
        default=[],
        metavar="CIDR",
        help="a non-public network image URLs may point into (e.g. an internal image store); repeatable",
    )
