"""What an install carries and loads: the wheel's contents, and clients and the gateway without torch."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from triton_inpaint.server import BUILTIN_MODELS, builtin_repository, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "cv2", "onnxruntime", "transformers")


def _imported(stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_gateway_and_client_modules_import_no_model_stack():
    code = "import triton_inpaint.gateway.app, triton_inpaint.gateway.cli, triton_inpaint.client.cli"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = _imported(result.stderr)
    assert {"fastapi", "pydantic", "PIL"} <= imported  # the check sees real imports
    assert not imported & set(HEAVY), f"imported: {sorted(imported & set(HEAVY))}"


def test_client_cli_request_imports_no_model_stack(tmp_path):
    image = REPO_ROOT / "triton_inpaint" / "assets" / "sample.png"
    command = [
        sys.executable, "-X", "importtime", "-m", "triton_inpaint.cli", "inpaint",
        "--url", f"127.0.0.1:{free_port()}", "--model", "tiny", "--image", str(image),
        "--mask", str(image), "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path / "out.png"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]  # no Triton there: the request went out
    assert "cannot reach Triton" in result.stderr
    imported = _imported(result.stderr)
    unwanted = {*HEAVY, "fastapi", "uvicorn"}  # a client install has neither the model stack nor the gateway
    assert not imported & unwanted, f"imported: {sorted(imported & unwanted)}"


def test_gateway_process_maps_no_libtorch(tmp_path):
    from triton_inpaint.gateway.launcher import GatewayServer

    with GatewayServer(f"127.0.0.1:{free_port()}", tmp_path / "gateway") as gateway:
        maps = Path(f"/proc/{gateway.pid}/maps").read_text()
        modules = Path(f"/proc/{gateway.pid}/cmdline").read_bytes()
    assert b"gateway" in modules
    assert "libtorch" not in maps and "cv2" not in maps
    assert "libpython" in maps or "python" in maps  # the maps are the real process's


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the source: setuptools leaves build/ behind, and stale files there would
    # end up in the next wheel.
    source = tmp_path_factory.mktemp("source") / "triton-inpaint"
    skip = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source,
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (found,) = out.glob("triton_inpaint-*.whl")
    return found


def test_wheel_carries_what_serve_and_demo_need(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in BUILTIN_MODELS:
        assert f"triton_inpaint/model_repository/{model}/config.pbtxt" in names
        assert f"triton_inpaint/model_repository/{model}/1/model.py" in names
    for module in ("triton/preprocess.py", "triton/postprocess.py", "triton/denoise.py", "schema.py"):
        assert f"triton_inpaint/{module}" in names
    assert {"triton_inpaint/assets/sample.png", "triton_inpaint/assets/sample_mask.png"} <= names
    page = {"index.html", "app.js", "api.js", "controls.js", "mask-editor.js", "style.css"}
    assert {f"triton_inpaint/gateway/web/{name}" for name in page} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".onnx")]


def test_installed_wheel_finds_its_builtin_models(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "from triton_inpaint.server import builtin_repository; import triton_inpaint.demo as d; "
        "print(builtin_repository()); print(len(d.sample_bytes('sample.png')))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    repository, size = result.stdout.split()
    assert Path(repository) == target / "triton_inpaint" / "model_repository"
    assert int(size) > 0
    help_text = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "serve", "--help"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert "--repository" in help_text


def test_checkout_builtin_repository_is_the_model_repository_folder():
    assert builtin_repository() == REPO_ROOT / "model_repository"
