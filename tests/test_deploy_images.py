"""The container images, checked without Docker: what a build would copy exists and is not ignored, the
extras it installs exist, base images are pinned (Triton's to the release of the pinned tritonclient),
the images run as non-root, and their entrypoints are commands this package provides."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet

from triton_inpaint.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {
    "triton": ROOT / "deploy/docker/triton.Dockerfile",
    "gateway": ROOT / "deploy/docker/gateway.Dockerfile",
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in DockerfileParser(str(path)).structure if i["instruction"] == name]


def _ignored(relative: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    parts = relative.split("/")
    return any(
        fnmatch.fnmatch(relative, p)
        or fnmatch.fnmatch(parts[0], p)
        or any(fnmatch.fnmatch(x, p.lstrip("*/")) for x in parts)
        for p in patterns
    )


@pytest.mark.parametrize("image", list(IMAGES))
def test_everything_copied_exists_and_is_in_the_build_context(image):
    copies = _instructions(IMAGES[image], "COPY")
    assert copies
    for value in copies:
        *sources, _ = value.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"
            assert not _ignored(source), f"{image}: COPY {source}: excluded by .dockerignore"
    # Every package folder the wheel is built from is copied (pyproject's package-dir).
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    copied = {source for value in copies for source in value.split()[:-1]}
    assert folders <= copied, f"{image}: not copied: {sorted(folders - copied)}"


def test_the_build_context_leaves_out_environments_and_build_output():
    for path in (".venv", "build", "build/bench/repository/x/1/model.onnx", "triton_inpaint/__pycache__"):
        assert _ignored(path), path
    assert not _ignored("triton_inpaint/server/process.py")


@pytest.mark.parametrize("image", list(IMAGES))
def test_installed_extras_exist(image):
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    installs = [v for v in _instructions(IMAGES[image], "RUN") if "pip install" in v]
    named = {e for v in installs for group in re.findall(r"/src\[([a-z,]+)\]", v) for e in group.split(",")}
    assert named, f"{image}: installs no extra of this package"
    assert named <= extras, f"{image}: unknown extras {sorted(named - extras)}"
    if image == "gateway":  # the gateway image: no model stack
        assert named == {"gateway"}


def test_base_images_are_pinned_and_triton_matches_the_client():
    for image, path in IMAGES.items():
        base = DockerfileParser(str(path)).baseimage
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"{image}: {base} is not pinned"
    base = DockerfileParser(str(IMAGES["triton"])).baseimage
    year, month = map(int, re.match(r".*/tritonserver:(\d\d)\.(\d\d)-py3$", base).groups())
    client = metadata.version("tritonclient")
    # NVIDIA's release YY.MM ships Triton 2.N with N = 12 * (YY - 24) + MM + 41 (24.10 = 2.51).
    assert f"2.{12 * (year - 24) + month + 41}" == ".".join(client.split(".")[:2])
    python = re.search(r"python3\.(\d+)", " ".join(_instructions(IMAGES["triton"], "RUN"))).group(0)
    assert f"{python[6:]}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_the_python_backend_stub_the_triton_image_installs_exists_in_the_pinned_wheel():
    import pytriton

    run = " ".join(_instructions(IMAGES["triton"], "RUN"))
    relative = re.search(r'"(tritonserver/python_backend_stubs/[^"]+)"', run).group(1)
    assert (Path(pytriton.__file__).parent / relative).is_file()


@pytest.mark.parametrize("image", list(IMAGES))
def test_images_run_as_a_non_root_user(image):
    (user,) = _instructions(IMAGES[image], "USER")
    assert user not in ("root", "0")


@pytest.mark.parametrize("image", list(IMAGES))
def test_the_entrypoint_is_a_command_of_this_package(image):
    (entrypoint,) = _instructions(IMAGES[image], "ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command[0] in PYPROJECT["project"]["scripts"]
    cmd = _instructions(IMAGES[image], "CMD")
    arguments = command[1:] + (json.loads(cmd[0]) if cmd else [])
    if image == "triton":  # the chart gives the repository: parse with the one the chart renders
        arguments += ["--repository=/models"]
    args = build_parser().parse_args(arguments)  # exits (SystemExit) on an unknown subcommand or flag
    assert args.handler is not None
