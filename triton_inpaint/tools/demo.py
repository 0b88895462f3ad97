"""``triton-inpaint demo``: the README's first command, end to end on the embedded default.

Builds the tiny checkpoint, exports it to a model repository, starts tritonserver and the HTTP gateway
on free ports, inpaints the bundled sample through the gateway, writes the result and stops both.
With ``--serve`` it also exports the detectors (for the page's automatic masks) and keeps both servers
running, printing the web page's address, until it is interrupted.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import warnings
from importlib import resources
from pathlib import Path


def sample_bytes(name: str) -> bytes:
    return resources.files("triton_inpaint.assets").joinpath(name).read_bytes()


def _step(number: int, total: int, message: str) -> float:
    print(f"[{number}/{total}] {message}", flush=True)
    return time.monotonic()


def run_demo(
    workdir: Path,
    seed: int,
    steps: int,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    quiet: bool = False,
) -> Path:
    from triton_inpaint.client import GatewayClient
    from triton_inpaint.client.cli import write_whole
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.gateway.launcher import GatewayServer
    from triton_inpaint.server.process import TritonServer, builtin_repository, free_port

    checkpoint = workdir / "tiny-sd15-inpaint"
    repository = workdir / "repository"
    result_path = workdir / "result.png"
    total = 6 if serve else 5
    started = _step(
        1, total, f"building the tiny SD 1.5 inpainting checkpoint (random weights) in {checkpoint}"
    )
    write_tiny_checkpoint("sd15-inpaint", checkpoint, seed=0)
    _step(2, total, f"exporting it to ONNX Triton models in {repository}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export_checkpoint(
            checkpoint,
            "tiny",
            repository,
            ExportOptions(quiet=quiet),
            log=lambda m: print(f"      {m}", flush=True),
        )
    for check in checks:
        print(f"      {check.submodel:<13} max |onnx - torch| = {check.max_abs_diff:.1e}")
    repositories = [builtin_repository(), repository]
    if serve:
        repositories.extend(_detectors(workdir, total))
    _step(total - 2, total, "starting tritonserver (CPU) on free ports")
    server = TritonServer(repositories, free_port(), free_port(), free_port())
    with server:
        print(f"      ready: pid {server.pid}, gRPC {server.grpc_url}, HTTP {server.http_url}", flush=True)
        _step(total - 1, total, "starting the HTTP gateway in front of it")
        gateway = GatewayServer(server.grpc_url, workdir / "gateway", "--host", host, port=port)
        with gateway, GatewayClient(gateway.url) as client:
            print(f"      ready: pid {gateway.pid}, {gateway.url}", flush=True)
            _step(total, total, "inpainting the bundled sample through the gateway (POST /v1 imageInference)")
            request_started = time.monotonic()
            result = client.inpaint(
                "tiny",
                sample_bytes("sample.png"),
                sample_bytes("sample_mask.png"),
                "a small red house with a blue door",
                steps=steps,
                seed=seed,
                scheduler="DPM++ 2M",
            )
            elapsed = time.monotonic() - request_started
            write_whole(result_path, result.image)
            print(f"done in {time.monotonic() - started:.1f} s (request {elapsed:.2f} s, seed {result.seed})")
            noise = "the tiny model has random weights: the masked area is filled with noise"
            print(f"result: {result_path}  ({noise})")
            if serve:
                page = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{gateway.port}/"
                print(f"web page: {page}  (serving until Ctrl+C)", flush=True)
                _wait_for_interrupt(gateway, server)
                print("stopping the gateway and tritonserver", flush=True)
    return result_path


def _detectors(workdir: Path, total: int) -> list[Path]:
    """The detector models for the page's automatic masks, or none (with why) when they cannot be
    exported here, e.g. without access to the package index for MediaPipe's wheel."""
    from triton_inpaint.export.masking.detectors import export_detectors

    detectors = workdir / "detectors"
    _step(3, total, f"exporting the detectors (face, eyes, hands, person...) to {detectors}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_detectors(detectors / "repository", detectors / "cache", log=lambda m: print(f"      {m}"))
    except Exception as exc:  # noqa: BLE001 - the page works without them; say why they are missing
        print(f"      skipped: {exc}; the page's automatic masks are off", flush=True)
        return []
    return [detectors / "repository"]


def _wait_for_interrupt(*processes: object) -> None:
    """Block until SIGINT or SIGTERM, or until a server process exits on its own."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(1.0):
        for process in processes:
            popen = getattr(process, "process", None)
            if popen is not None and popen.poll() is not None:
                print(f"a server exited (pid {popen.pid}, code {popen.returncode})", flush=True)
                return


def _demo(args: argparse.Namespace) -> int:
    where = {"host": args.host, "port": args.port}
    run_demo(args.workdir, args.seed, args.steps, serve=args.serve, quiet=args.quiet, **where)
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build, export, serve and inpaint the bundled sample with the tiny model, end to end",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"), help="where to write everything")
    parser.add_argument("--seed", type=int, default=1234, help="request seed")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also export the detectors, then keep Triton and the gateway running and print the web page's "
        "address, until Ctrl+C",
    )
    parser.add_argument("--host", default="127.0.0.1", help="with --serve: the gateway's listen address")
    parser.add_argument(
        "--port", type=int, default=None, help="with --serve: the gateway's port (default: a free one)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)"
    )
    parser.set_defaults(handler=_demo)
