"""What an install carries and loads: the wheel's contents, and clients and the gateway without torch."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from triton_inpaint.server.process import BUILTIN_MODELS, builtin_repository, free_port

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
    for module in (
        "triton/preprocess.py",
        "triton/postprocess.py",
        "triton/denoise.py",
        "api/schema.py",
        "pipelines/sd_inpaint.py",
        "server/process.py",
    ):
        assert f"triton_inpaint/{module}" in names
    assert {"triton_inpaint/assets/sample.png", "triton_inpaint/assets/sample_mask.png"} <= names
    page = {"index.html", "app.js", "api.js", "controls.js", "mask-editor.js", "style.css"}
    assert {f"triton_inpaint/gateway/page/web/{name}" for name in page} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".onnx")]


def test_installed_wheel_finds_its_builtin_models(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "from triton_inpaint.server.process import builtin_repository; "
        "import triton_inpaint.tools.demo as d; "
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


# -- the GPU machines' Python: 3.12 with numpy 2 and their own torch -------------------------------------


def _python_312() -> str | None:
    """A working Python 3.12 interpreter on this machine (pyenv's, or on PATH), if there is one."""
    candidates = [str(path) for path in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    candidates += [found for found in [shutil.which("python3.12")] if found]
    for candidate in candidates:  # a pyenv shim on PATH fails when no 3.12 is selected
        done = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == "(3, 12)":
            return candidate
    return None


def test_wheel_metadata_accepts_the_gpu_machines_python_numpy_and_torch(wheel):
    """Python 3.11-3.13, numpy 1.26 or 2.x for the client, the machines' torch 2.11 for the server part;
    the test group keeps the exact versions CI tests (torch 2.13.0 is the CPU build on the machine)."""
    from email.parser import Parser

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    archive = zipfile.ZipFile(wheel)
    (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(archive.read(metadata_name).decode())
    python = SpecifierSet(metadata["Requires-Python"])
    assert all(version in python for version in ("3.11.7", "3.12.3", "3.13.0")) and "3.10.13" not in python

    def requirement(name: str, extra: str | None) -> Requirement:
        """The requirement on ``name`` of the core install (None) or of one extra."""
        for line in metadata.get_all("Requires-Dist"):
            found = Requirement(line)
            in_extra = found.marker is not None and "extra" in str(found.marker)
            if found.name != name or in_extra != (extra is not None):
                continue
            if extra is None or found.marker.evaluate({"extra": extra}):
                return found
        raise AssertionError(f"no requirement on {name} for {extra or 'the core install'}")

    assert {"1.26.4", "2.5.2"} <= set(requirement("numpy", None).specifier.filter(["1.26.4", "2.5.2"]))
    assert "2.11.0" in requirement("torch", "server").specifier
    assert requirement("torch", "test").specifier == SpecifierSet("==2.13.0")
    assert requirement("numpy", "test").specifier == SpecifierSet("==1.26.4")


def test_client_on_python_312_with_numpy_2_inpaints_through_a_real_triton(wheel, triton_server, tmp_path):
    """The wheel installed (with its dependencies from the package index) into a Python 3.12 with
    numpy 2, as on the GPU machines, and a request through the suite's Triton from there. Without a
    Python 3.12 on this machine, this interpreter with numpy 2 stands in."""
    interpreter = _python_312() or sys.executable
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel), "numpy>=2"],
        check=True, timeout=600,
    )  # fmt: skip
    code = f"""
import sys, numpy
from triton_inpaint.client import InpaintClient
from triton_inpaint.api.imaging import decode_image, encode_image, encode_mask
assert numpy.__version__.startswith("2."), numpy.__version__
image = (numpy.arange(64 * 64 * 3) % 251).astype(numpy.uint8).reshape(64, 64, 3)
mask = numpy.zeros((64, 64), numpy.uint8)
mask[16:48, 16:48] = 255
with InpaintClient({triton_server.grpc_url!r}) as client:
    result = client.inpaint("tiny", encode_image(image), encode_mask(mask), "a cat", steps=2, seed=3)
out = decode_image(result.image)
assert out.shape == image.shape and (out[mask == 0] == image[mask == 0]).all()
assert result.seed == 3
print(f"python {{sys.version.split()[0]}}, numpy {{numpy.__version__}}: served {{out.shape}}")
"""
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    print(done.stdout.strip())
    if _python_312():
        assert "python 3.12" in done.stdout
