"""Put in place everything the test suite needs beyond the package's own install, before any test
runs: the hosted API's Python SDK in an environment of its own and its JavaScript SDK's node_modules,
both from the pins in tests/sdk/, and a check of the system programs the tests start. The README's
test command runs it (``python -m tests.prepare``); the tests never install anything themselves, and
say to run this when something is missing. Running it again only redoes what changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SDK = REPO_ROOT / "tests" / "sdk"
RUNWARE_SDK_ENV = REPO_ROOT / "build" / "sdk-envs" / "runware-sdk"
RUNWARE_SDK_REQUIREMENTS = SDK / "runware-sdk-requirements.txt"
JS_SDK = SDK / "js"
PREPARE_COMMAND = ".venv/bin/python -m tests.prepare"


@dataclass(frozen=True)
class Prepared:
    """One environment: where it lives, the file that says what it was built from, and that file's source."""

    name: str
    stamp: Path
    source: Path

    def ready(self) -> bool:
        return self.stamp.is_file() and self.stamp.read_text() == self.source.read_text()

    def missing(self) -> str:
        return f"{self.name} is not prepared (or its pins changed): run `{PREPARE_COMMAND}` first"


RUNWARE_SDK = Prepared(
    "runware-sdk's environment", RUNWARE_SDK_ENV / "installed.txt", RUNWARE_SDK_REQUIREMENTS
)
JS_SDK_MODULES = Prepared(
    "@runware/sdk-js's node_modules",
    JS_SDK / "node_modules" / ".installed-lock",
    JS_SDK / "package-lock.json",
)
# The programs the tests start, and the Debian package that brings each (the README installs them).
SYSTEM_PROGRAMS = {
    "node": "nodejs",
    "npm": "npm",
    "chromium": "chromium",
}
POSTGRES_BIN = Path("/usr/lib/postgresql")


def runware_sdk_python() -> Path:
    return RUNWARE_SDK_ENV / "bin" / "python"


def prepare_runware_sdk() -> None:
    """runware-sdk installs a top-level ``runware`` module, as the WebSocket SDK of the test extras does,
    so it gets a virtual environment of its own."""
    if RUNWARE_SDK.ready():
        print(f"ok    {RUNWARE_SDK.name} ({RUNWARE_SDK_ENV.relative_to(REPO_ROOT)})")
        return
    print(f"make  {RUNWARE_SDK.name} from {RUNWARE_SDK_REQUIREMENTS.relative_to(REPO_ROOT)}", flush=True)
    shutil.rmtree(RUNWARE_SDK_ENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(RUNWARE_SDK_ENV)], check=True)
    python = str(runware_sdk_python())
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(RUNWARE_SDK_REQUIREMENTS)], check=True)
    RUNWARE_SDK.stamp.write_text(RUNWARE_SDK.source.read_text())


def prepare_js_sdk() -> None:
    """``npm ci`` from the lock file, with no install scripts run."""
    if JS_SDK_MODULES.ready():
        print(f"ok    {JS_SDK_MODULES.name} ({JS_SDK.relative_to(REPO_ROOT)})")
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is missing: install Debian's nodejs and npm (the README's test command does)")
    print(f"make  {JS_SDK_MODULES.name} (npm ci in {JS_SDK.relative_to(REPO_ROOT)})", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=JS_SDK, check=True)
    JS_SDK_MODULES.stamp.write_text(JS_SDK_MODULES.source.read_text())


def missing_programs() -> list[str]:
    """The Debian packages whose programs are not on this machine."""
    missing = [package for program, package in SYSTEM_PROGRAMS.items() if shutil.which(program) is None]
    if not any(POSTGRES_BIN.glob("*/bin/postgres")):  # where gateway/store/local_postgres.py looks
        missing.append("postgresql")
    return missing


def main() -> int:
    missing = missing_programs()
    if missing:
        print(f"missing system packages: {' '.join(missing)} (apt-get install -y {' '.join(missing)})")
        return 1
    print("ok    system programs: " + ", ".join([*SYSTEM_PROGRAMS, "postgresql"]))
    prepare_runware_sdk()
    prepare_js_sdk()
    return 0


if __name__ == "__main__":
    sys.exit(main())
