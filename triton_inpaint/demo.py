"""``triton-inpaint demo``: the README's first command, end to end on the embedded default.

Builds the tiny checkpoint, exports it to a model repository, starts tritonserver and the HTTP gateway
on free ports, inpaints the bundled sample through the gateway, writes the result and stops both.
"""

from __future__ import annotations

import argparse
import time
import warnings
from importlib import resources
from pathlib import Path


def sample_bytes(name: str) -> bytes:
    return resources.files("triton_inpaint.assets").joinpath(name).read_bytes()


def _step(number: int, total: int, message: str) -> float:
    print(f"[{number}/{total}] {message}", flush=True)
    return time.monotonic()


def run_demo(workdir: Path, seed: int, steps: int) -> Path:
    from triton_inpaint.client import GatewayClient
    from triton_inpaint.export.repository import export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.gateway.launcher import GatewayServer
    from triton_inpaint.server import TritonServer, builtin_repository, free_port

    checkpoint = workdir / "tiny-sd15-inpaint"
    repository = workdir / "repository"
    result_path = workdir / "result.png"
    started = _step(1, 5, f"building the tiny SD 1.5 inpainting checkpoint (random weights) in {checkpoint}")
    write_tiny_checkpoint("sd15-inpaint", checkpoint, seed=0)
    _step(2, 5, f"exporting it to ONNX Triton models in {repository}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export_checkpoint(
            checkpoint, "tiny", repository, log=lambda m: print(f"      {m}", flush=True)
        )
    for check in checks:
        print(f"      {check.submodel:<13} max |onnx - torch| = {check.max_abs_diff:.1e}")
    _step(3, 5, "starting tritonserver (CPU) on free ports")
    server = TritonServer([builtin_repository(), repository], free_port(), free_port(), free_port())
    with server:
        print(f"      ready: pid {server.pid}, gRPC {server.grpc_url}, HTTP {server.http_url}", flush=True)
        _step(4, 5, "starting the HTTP gateway in front of it")
        gateway = GatewayServer(server.grpc_url, workdir / "gateway")
        with gateway, GatewayClient(gateway.url) as client:
            print(f"      ready: pid {gateway.pid}, {gateway.url}", flush=True)
            _step(5, 5, "inpainting the bundled sample through the gateway (POST /v1 imageInference)")
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
    tmp = result_path.with_name(result_path.name + ".part")
    tmp.write_bytes(result.image)
    tmp.replace(result_path)
    print(f"done in {time.monotonic() - started:.1f} s (request {elapsed:.2f} s, seed {result.seed})")
    print(f"result: {result_path}  (the tiny model has random weights: the masked area is filled with noise)")
    return result_path


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.workdir, args.seed, args.steps)
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
    parser.set_defaults(handler=_demo)
