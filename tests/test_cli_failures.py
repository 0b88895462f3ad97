"""Every failure a ``triton-inpaint`` command expects ends in one line that says what failed and what to
do, with the exit code docs/commands.md gives it, and never a traceback. Each case runs the real
command in a fresh interpreter; those that need a server use the session's Triton."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL, REPO_ROOT
from tests.helpers import irregular_mask, make_image, png_bytes
from triton_inpaint.api.commands import TRACEBACK_ENV, ExitCode
from triton_inpaint.cli import main as cli_main
from triton_inpaint.server.process import free_port

CLI = [sys.executable, "-m", "triton_inpaint.cli"]
COMMANDS_DOC = REPO_ROOT / "docs" / "commands.md"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def _assert_one_clear_line(done: subprocess.CompletedProcess, code: ExitCode, *words: str) -> None:
    """The exit code, no traceback, and one error line (after argparse's usage, if any) naming the cause."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == done.stderr.strip().splitlines()[-1], done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-failures")
    image, mask, text = root / "in.png", root / "mask.png", root / "notes.txt"
    image.write_bytes(png_bytes(make_image(64, 48)))
    mask.write_bytes(png_bytes(irregular_mask(64, 48)))
    text.write_text("not an image\n")
    # A repository whose one model is a TensorRT plan model: ``export tensorrt`` gets as far as
    # looking for TensorRT, which this machine lacks.
    plan = root / "trt-repository" / "unet"
    (plan / "1").mkdir(parents=True)
    (plan / "config.pbtxt").write_text('name: "unet"\nplatform: "tensorrt_plan"\n')
    (plan / "1" / "model.onnx").write_bytes(b"")
    (plan / "trt_profile.json").write_text("{}")
    return {"image": image, "mask": mask, "text": text, "root": root, "trt": plan.parent}


def _inpaint(target: list[str], files: dict[str, Path], *more: str, model: str = MODEL) -> list[str]:
    out = str(files["root"] / "o.png")
    return ["inpaint", *target, "--model", model, "--image", str(files["image"]), "--mask",
            str(files["mask"]), "--prompt", "a red brick wall", "--out", out, *more]  # fmt: skip


# (case, argv given the files, exit code, words the error line holds). No server is needed.
OFFLINE = [
    ("unknown flag", lambda f: ["models", "--stepz", "3"], ExitCode.BAD_INPUT, ["--stepz"]),
    ("image file missing", lambda f: _inpaint(["--url", "127.0.0.1:1"], {**f, "image": f["root"] / "no.png"}),
     ExitCode.BAD_INPUT, ["--image", "No such file"]),
    ("serve, repository missing", lambda f: ["serve", "--repository", str(f["root"] / "none")],
     ExitCode.BAD_INPUT, ["--repository", "no such folder"]),
    ("export, not a checkpoint", lambda f: ["export", "onnx", "--checkpoint", str(f["root"]), "--name", "x",
     "--repository", str(f["root"] / "r")], ExitCode.BAD_INPUT, ["--checkpoint", "model_index.json"]),
    ("registry missing", lambda f: ["export", "registry", "--registry", str(f["root"] / "none.toml"),
     "--repository", str(f["root"] / "r")], ExitCode.BAD_INPUT, ["none.toml"]),
    ("autoscale-sim, bench file not JSON", lambda f: ["autoscale-sim", "--out", str(f["root"] / "as"),
     "--bench", str(f["text"]), "--model", "x"], ExitCode.BAD_INPUT, ["--bench", "not a bench.json"]),
    ("Triton unreachable over gRPC", lambda f: ["models", "--url", f"127.0.0.1:{free_port()}"],
     ExitCode.UNAVAILABLE, ["cannot reach Triton"]),
    ("Triton unreachable over HTTP", lambda f: ["models", "--url", f"127.0.0.1:{free_port()}", "--protocol",
     "http"], ExitCode.UNAVAILABLE, ["cannot reach Triton"]),
    ("gateway unreachable", lambda f: _inpaint(["--gateway", f"http://127.0.0.1:{free_port()}"], f),
     ExitCode.UNAVAILABLE, ["cannot reach the gateway"]),
    ("mask, Triton unreachable", lambda f: ["mask", "--url", f"127.0.0.1:{free_port()}", "--detector", "face",
     "--image", str(f["image"]), "--out", str(f["root"] / "m.png")], ExitCode.UNAVAILABLE, ["cannot reach"]),
    ("TensorRT not installed", lambda f: ["export", "tensorrt", "--repository", str(f["trt"])],
     ExitCode.NOT_INSTALLED, ["TensorRT"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "words"), [case[1:] for case in OFFLINE], ids=[c[0] for c in OFFLINE]
)
def test_an_expected_failure_is_one_line_with_its_exit_code(files, argv, code, words):
    _assert_one_clear_line(_run(*argv(files)), code, *words)


def test_a_refused_request_and_a_model_not_served(triton_server, files):
    url = ["--url", triton_server.grpc_url]
    refused = _run(*_inpaint(url, files, "--steps", "0"))
    _assert_one_clear_line(refused, ExitCode.BAD_INPUT, "refused", "steps: must be an integer in [1, 100]")
    missing = _run(*_inpaint(url, files, model="no-such-model"))
    _assert_one_clear_line(missing, ExitCode.NOT_SERVED, "'no-such-model' is not served", "served models")
    not_an_image = _run(*_inpaint(url, {**files, "image": files["text"]}))
    _assert_one_clear_line(not_an_image, ExitCode.BAD_INPUT, "image")


def test_a_bug_is_one_line_unless_the_traceback_is_asked_for(monkeypatch, capsys):
    from triton_inpaint.client import cli as client_cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(client_cli, "_models", broken)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert cli_main(["models"]) == ExitCode.BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and TRACEBACK_ENV in err
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(KeyError, match="a bug"):
        cli_main(["models"])


def test_ctrl_c_ends_with_130(monkeypatch):
    from triton_inpaint.client import cli as client_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(client_cli, "_models", interrupted)
    assert cli_main(["models"]) == ExitCode.INTERRUPTED


def test_the_docs_list_every_exit_code_and_each_failure_here_is_one_of_them():
    text = COMMANDS_DOC.read_text()
    section = text[text.index("## Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, flags=re.M)}
    assert documented == {int(code) for code in ExitCode}
    covered = {code for *_, code, _ in OFFLINE} | {ExitCode.NOT_SERVED, ExitCode.BUG, ExitCode.INTERRUPTED}
    assert covered == set(ExitCode) - {ExitCode.OK}
