"""The gateway's settings, as ``triton-inpaint gateway`` parses them (``cli.py``); documented in
docs/gateway.md."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from triton_inpaint.api.imaging import MAX_PIXELS
from triton_inpaint.gateway.inputs.fetch import FetchPolicy
from triton_inpaint.gateway.store.blobs import S3Settings


@dataclass(frozen=True)
class GatewayConfig:
    triton_url: str = "127.0.0.1:8001"
    data_dir: Path = Path("build/gateway")
    keys: frozenset[str] = frozenset()  # empty: no key is asked for
    public_url: str | None = None  # base of image URLs; see trusted_hosts when None
    # Host headers (host[:port]) whose value may become the base of image URLs when no public_url is
    # set; any other Host gets listen_url. Loopback names of the listen port are always trusted.
    trusted_hosts: tuple[str, ...] = ()
    listen_url: str = "http://127.0.0.1:8080"
    default_model: str | None = None  # for async tasks that name none: the first served model
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout: float = 60.0  # seconds the whole request body may take to arrive
    max_pixels: int = MAX_PIXELS
    triton_timeout: float = 300.0  # seconds one Triton request may take
    concurrency_per_key: int = 4  # requests being processed at once per key, once their bodies are in
    requests_per_minute: int = 120
    uploads_per_key: int = 32  # request bodies arriving at once per key, in one gateway process
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    s3: S3Settings | None = None  # image bytes in this bucket instead of data_dir/images
    # Tasks, the image index and per-key limits in this PostgreSQL database (shared by replicas)
    # instead of data_dir/gateway.sqlite3.
    database_url: str | None = None
    workers: int = 1  # async tasks this gateway runs at once
    task_lease: float = 30.0  # seconds a worker holds a task without renewing (heartbeats: a third)

    def trusted_host_names(self) -> frozenset[str]:
        """The Host header values that result URLs may be built from, lower-case."""
        port = urllib.parse.urlsplit(self.listen_url).port
        loopback = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")} if port else set()
        return frozenset(host.lower() for host in (*self.trusted_hosts, *loopback))
