"""The command line as a user runs it: real processes, real server, free ports."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes
from triton_inpaint.api.commands import ExitCode
from triton_inpaint.server.process import free_port

pytestmark = pytest.mark.server
CLI = [sys.executable, "-m", "triton_inpaint.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def image_files(tmp_path):
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    image.write_bytes(png_bytes(make_image(64, 48)))
    mask.write_bytes(png_bytes(irregular_mask(64, 48)))
    return image, mask


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inpaint_writes_result_and_prints_seed(triton_server, image_files, tmp_path, protocol):
    image, mask = image_files
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    out = tmp_path / "sub" / "out.png"
    done = run_cli(
        "inpaint",
        "--url",
        url,
        "--protocol",
        protocol,
        "--model",
        MODEL,
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--prompt",
        "a hat",
        "--steps",
        "3",
        "--seed",
        "77",
        "--scheduler",
        "Euler a",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "seed 77" in done.stdout
    assert decode_rgb(out.read_bytes()).shape == (48, 64, 3)


def test_inpaint_flags_for_every_control(triton_server, image_files, tmp_path):
    image, mask = image_files
    out = tmp_path / "result.webp"
    done = run_cli(
        "inpaint",
        "--url",
        triton_server.grpc_url,
        "--model",
        MODEL,
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--prompt",
        "a hat",
        "--steps",
        "2",
        "--seed",
        "10",
        "--num-images",
        "3",
        "--mask-expand",
        "2",
        "--mask-blur",
        "3",
        "--mask-invert",
        "--mask-margin",
        "32",
        "--width",
        "64",
        "--height",
        "64",
        "--output-format",
        "WEBP",
        "--quality",
        "80",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    written = [out, tmp_path / "result-1.webp", tmp_path / "result-2.webp"]
    for path, seed in zip(written, (10, 11, 12), strict=True):
        assert f"seed {seed} -> {path}" in done.stdout
        assert path.read_bytes()[8:12] == b"WEBP"


def test_inpaint_error_is_one_clear_line(triton_server, image_files, tmp_path):
    image, mask = image_files
    out = tmp_path / "out.png"
    done = run_cli(
        "inpaint",
        "--url",
        triton_server.grpc_url,
        "--model",
        MODEL,
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--prompt",
        "x",
        "--steps",
        "0",
        "--out",
        str(out),
    )
    assert done.returncode == 2
    assert "steps: must be an integer in [1, 100], got 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_inpaint_unreachable_server(image_files, tmp_path):
    image, mask = image_files
    done = run_cli(
        "inpaint",
        "--url",
        f"127.0.0.1:{free_port()}",
        "--model",
        MODEL,
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert done.returncode == 3
    assert "cannot reach Triton" in done.stderr and "Traceback" not in done.stderr


def test_help_lists_ranges():
    done = run_cli("inpaint", "--help")
    assert done.returncode == 0
    assert "1-100" in done.stdout and "DPM++ 2M" in done.stdout


def _serve(repositories: list[Path], ports: list[int]) -> subprocess.Popen:
    args = [*CLI, "serve"]
    for repo in repositories:
        args += ["--repository", str(repo)]
    args += [
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--ready-timeout",
        "120",
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_prints_ready_and_stops_on_sigterm(tmp_path):
    from tests.conftest import BUILTIN_REPOSITORY

    ports = [free_port(), free_port(), free_port()]
    process = _serve([BUILTIN_REPOSITORY], ports)
    try:
        line = process.stdout.readline()
        assert "server ready" in line and f"HTTP 127.0.0.1:{ports[0]}" in line, process.stderr.read()
        assert "inpaint_preprocess" in line
        server_pid = int(line.split("(pid ")[1].split(")")[0])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "stopped" in process.stdout.read()
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_refuses_a_taken_port():
    from tests.conftest import BUILTIN_REPOSITORY

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _serve([BUILTIN_REPOSITORY], [free_port(), port, free_port()])
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.BAD_INPUT
    assert f"--grpc-port {port}: the port is already in use" in stderr


def test_serve_reports_why_a_model_failed_to_load(tmp_path):
    broken = tmp_path / "repo" / "broken_model"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(
        'name: "broken_model"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]\n'
        'output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]\n'
    )
    (broken / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n"
        "        raise RuntimeError('weights file missing: /models/unet.onnx')\n"
    )
    process = _serve([tmp_path / "repo"], [free_port(), free_port(), free_port()])
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == ExitCode.UNAVAILABLE
    assert "model 'broken_model' failed to load" in stderr
    assert "weights file missing: /models/unet.onnx" in stderr
