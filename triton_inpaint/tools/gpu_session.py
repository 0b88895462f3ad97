"""A GPU measurement that fits a lent GPU machine: wheels staged here, one timed run there.

The lent GPU machines have Python 3.12, a CUDA torch, numpy 2 and no network, and lack diffusers, the
tritonserver bundle and the Triton client; a CUDA torch is far too big to carry, so this package has to
run beside the machine's own. Each call to such a machine carries at most 64 MiB with the working tree,
and a session has 15 device-minutes, the machine's start included. So:

1. here, ``triton-inpaint bench-gpu --prepare build/gpu-wheels`` downloads exactly the Python 3.12
   wheels the machine lacks (and builds this package's wheel) into parts of at most 60 MiB, and prints
   the device calls to make back to back;
2. there, each call installs its part into one virtual environment that sees the machine's own
   packages (torch among them) behind the carried ones (numpy 1.26 in front of the machine's numpy 2:
   the Triton Python backend's stubs need numpy < 2, or every output tensor comes back empty);
3. the last call then runs ``bench-gpu`` (SD 1.5 at 512 px, 20 steps) and writes its report, the log
   and the machine's description under ``$OUT``.

Only the standard library is imported at module level: on the GPU machine this module runs from the
checkout (``python3 -m triton_inpaint.tools.gpu_session``) before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from triton_inpaint.api.commands import CommandError, ExitCode

PYTHON = "3.12"  # the GPU machine's interpreter
# What the GPU machine lacks, for the gpu-torch runtime's benchmark: pinned as pyproject.toml pins them
# (protobuf 4.25: tritonclient 2.51's generated code; numpy 1.26: the Python backend's stubs).
WHEELS = (
    "nvidia-pytriton==0.7.0",
    "numpy==1.26.4",
    "diffusers==0.42.1",
    "importlib-metadata==10.2.0",
    "tritonclient==2.51.0",
    "python-rapidjson==1.25",
    "protobuf==4.25.9",
)
# Linux x86-64 wheels up to glibc 2.35 (nvidia-pytriton's tag; the machines run newer).
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CALL_LIMIT = 64 * 2**20  # what one device call carries: the working tree and the call's part
PART_LIMIT = 56 * 2**20  # a part, leaving the working tree room to grow
MANIFEST = "part.json"
VENV_ENV = "TRITON_INPAINT_GPU_VENV"
DEFAULT_VENV = Path("/tmp/triton-inpaint-gpu")
DEFAULT_WORK = Path("/tmp/triton-inpaint-gpu-work")
CALL_TIMEOUT_S = 540  # the measuring call: under 9 minutes, leaving a session's budget for a rerun


def _log(message: str) -> None:
    print(f"[gpu-session] {message}", flush=True)


# -- here: download and split ---------------------------------------------------------------------


def download(folder: Path, wheels: tuple[str, ...] = WHEELS, python: str = PYTHON) -> list[Path]:
    """The wheels for ``python`` on x86-64 Linux, without their dependencies (the machine has those)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python, "--dest", str(folder), "--disable-pip-version-check", "-q",
    ]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *wheels], check=True)
    return sorted(folder.glob("*.whl"))


def build_own_wheel(folder: Path, source: Path) -> Path:
    """This package's wheel from the checkout at ``source`` (pure Python: one wheel for every Python)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "source"
        skip = (
            ".venv",
            ".git",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "node_modules",
        )
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*skip))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(folder), str(copy)],
            check=True,
        )  # fmt: skip
    (wheel,) = folder.glob("triton_inpaint-*.whl")
    return wheel


def split(files: list[Path], limit: int = PART_LIMIT) -> list[list[Path]]:
    """Files into as few parts of at most ``limit`` bytes as first-fit by size finds."""
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for path in sorted(files, key=lambda item: item.stat().st_size, reverse=True):
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{path.name} is {size / 2**20:.1f} MiB, more than a part may carry")
        for index, used in enumerate(sizes):
            if used + size <= limit:
                parts[index].append(path)
                sizes[index] += size
                break
        else:
            parts.append([path])
            sizes.append(size)
    return parts


def working_tree_bytes(source: Path) -> int:
    """What a device call sends besides its carried paths: tracked and untracked-not-ignored files."""
    git = shutil.which("git")
    if git is None:
        raise CommandError(
            "--prepare needs git: it sizes the working tree the device calls send", ExitCode.NOT_INSTALLED
        )
    done = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source, capture_output=True
    )
    if done.returncode != 0:
        raise CommandError(f"--prepare runs from a git checkout of triton-inpaint; {source} is not one")
    listed = done.stdout
    files = (source / name for name in listed.decode().split("\0") if name)
    return sum(path.stat().st_size for path in files if path.is_file())


def device_calls(out: Path, parts: int, root: Path) -> list[dict[str, object]]:
    """The device tool's ``run`` calls, back to back: each installs its part, the last also measures."""
    calls = []
    for number in range(1, parts + 1):
        part = (out / f"part-{number}").resolve()
        if part.is_relative_to(root):  # carried paths are relative to the checkout
            part = part.relative_to(root)
        command = f"python3 -m triton_inpaint.tools.gpu_session install {shlex.quote(str(part))}"
        if number == parts:
            command += ' && python3 -m triton_inpaint.tools.gpu_session run --out "$OUT"'
        calls.append(
            {
                "carry": [str(part)],
                "command": command,
                "timeout_s": CALL_TIMEOUT_S if number == parts else 300,
            }
        )
    return calls


def prepare(out: Path, source: Path, python: str = PYTHON) -> list[dict[str, object]]:
    """Write ``out/part-N`` folders (each with a manifest) of the wheels for ``python`` and return the
    device calls."""
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        folder = Path(scratch)
        _log(f"downloading {len(WHEELS)} wheels for Python {python}: {', '.join(WHEELS)}")
        files = download(folder, python=python)
        files.append(build_own_wheel(folder, source))
        parts = split(files)
        tree = working_tree_bytes(source)
        largest = max(sum(path.stat().st_size for path in members) for members in parts)
        if tree + largest > CALL_LIMIT:
            raise ValueError(
                f"the working tree ({tree / 2**20:.1f} MiB) and the largest part ({largest / 2**20:.1f} MiB) "
                f"exceed the {CALL_LIMIT / 2**20:.0f} MiB a device call carries"
            )
        for number, members in enumerate(parts, start=1):
            part = out / f"part-{number}"
            part.mkdir(parents=True)
            for path in members:
                shutil.move(str(path), part / path.name)
            manifest = {"part": number, "of": len(parts), "wheels": sorted(path.name for path in members)}
            (part / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            size = sum(path.stat().st_size for path in part.iterdir())
            _log(f"part-{number}: {size / 2**20:.1f} MiB: {', '.join(manifest['wheels'])}")
        _log(f"the working tree sent with each call: {tree / 2**20:.1f} MiB")
    return device_calls(out, len(parts), source.resolve())


# -- there: install and run -----------------------------------------------------------------------


def venv_site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def create_venv(venv: Path) -> Path:
    """A virtual environment that sees this interpreter's packages behind its own.

    ``venv --system-site-packages`` would see the *base* interpreter's packages, and the machine's
    torch lives in a virtual environment of its own; a ``.pth`` file naming that one's site-packages
    adds them after the venv's (which is how the carried numpy 1.26 stays in front of numpy 2).
    """
    site_packages = venv_site_packages(venv)
    if not (venv / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    machine = [path for path in site.getsitepackages() if Path(path).is_dir()]
    # addsitedir, not bare paths: the machine's own .pth files (path hooks of its packages) apply too.
    lines = [f"import site; site.addsitedir({path!r})" for path in machine]
    (site_packages / "_machine_packages.pth").write_text("\n".join(lines) + "\n")
    return site_packages


def install(part: Path, venv: Path) -> dict[str, object]:
    """Install one part's wheels into ``venv`` (created on the first part) and record it."""
    manifest = json.loads((part / MANIFEST).read_text())
    site_packages = create_venv(venv)
    wheels = [str(part / name) for name in manifest["wheels"]]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
         "--disable-pip-version-check", "--target", str(site_packages), *wheels],
        check=True,
    )  # fmt: skip
    installed = venv / "parts.json"
    done = json.loads(installed.read_text()) if installed.exists() else {}
    done[str(manifest["part"])] = manifest
    installed.write_text(json.dumps(done, indent=2) + "\n")
    _log(
        f"installed part {manifest['part']} of {manifest['of']} into {venv}: {', '.join(manifest['wheels'])}"
    )
    return manifest


def missing_parts(venv: Path) -> list[int]:
    """Parts not installed yet (all of them when none is): a machine given back between the calls
    comes back bare, and its first call must be made again."""
    installed = venv / "parts.json"
    if not installed.exists():
        return [1]
    done = json.loads(installed.read_text())
    total = max(manifest["of"] for manifest in done.values())
    return [number for number in range(1, total + 1) if str(number) not in done]


def _describe_machine(out: Path, python: Path, env: dict[str, str]) -> None:
    for name, command in {
        "nvidia-smi.txt": ["nvidia-smi"],
        "packages.txt": [str(python), "-c", "import importlib.metadata as m; "
                         "print('\\n'.join(sorted(f'{d.name}=={d.version}' for d in m.distributions())))"],
    }.items():  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
            (out / name).write_text(done.stdout + done.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            (out / name).write_text(f"{command[0]}: {exc}\n")


def run(out: Path, venv: Path, work: Path, bench_args: list[str]) -> int:
    """``bench-gpu`` from the installed package, with its log, under ``out``."""
    missing = missing_parts(venv)
    if missing:
        _log(f"parts {missing} are not installed in {venv}: make their device calls again, back to back")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python3"
    # The venv's bin first: tritonserver's Python stubs take their packages from the first python3.
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    _describe_machine(out, python, env)
    command = [str(python), "-m", "triton_inpaint.cli", "bench-gpu", "--out", str(out), "--work", str(work),
               *bench_args]  # fmt: skip
    _log(f"running {shlex.join(command)}")
    started = time.monotonic()
    with (out / "bench-gpu.log").open("w") as log:
        # From outside the checkout, so that the installed package is the one imported.
        process = subprocess.Popen(
            command,
            cwd=tempfile.gettempdir(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = process.wait()
    _log(f"bench-gpu exited {code} after {time.monotonic() - started:.0f} s; report and log in {out}")
    return code


# -- the command line -----------------------------------------------------------------------------


def print_calls(calls: list[dict[str, object]]) -> None:
    print("\nMake these device calls back to back (a machine idle for 30 s is given back):")
    for number, call in enumerate(calls, start=1):
        print(f"  {number}. run(carry={json.dumps(call['carry'])}, timeout_s={call['timeout_s']},")
        print(f"         command={json.dumps(call['command'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m triton_inpaint.tools.gpu_session", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="stage", required=True)
    prepare_parser = commands.add_parser(
        "prepare", help="here: download the wheels into parts, print the calls"
    )
    prepare_parser.add_argument("--out", type=Path, default=Path("build/gpu-wheels"))
    prepare_parser.add_argument(
        "--python", default=PYTHON, help="the GPU machine's Python (another one rehearses the session here)"
    )
    install_parser = commands.add_parser("install", help="there: install one part into the environment")
    install_parser.add_argument("part", type=Path)
    run_parser = commands.add_parser("run", help="there: run bench-gpu from the environment")
    run_parser.add_argument(
        "--out", type=Path, required=True, help="the report's folder ($OUT on the device)"
    )
    run_parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    run_parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="more bench-gpu arguments, after --")
    args = parser.parse_args(argv)
    venv = Path(os.environ.get(VENV_ENV, DEFAULT_VENV))
    if args.stage == "prepare":
        print_calls(prepare(args.out, Path.cwd(), args.python))
        return 0
    if args.stage == "install":
        install(args.part, venv)
        return 0
    extra = [arg for arg in args.bench_args if arg != "--"]
    return run(args.out, venv, args.work, extra)


if __name__ == "__main__":
    sys.exit(main())
