"""What a test run may not touch: the working tree's changes against git, as a comparable snapshot."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path


def tree_changes(root: Path) -> dict[str, str] | None:
    """Every path ``git status`` reports (modified, deleted or untracked and not ignored) with a hash of
    its content, so a test that rewrites an already-modified file is caught too; None outside a git
    checkout (an unpacked sdist has nothing to compare against)."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    listed = subprocess.run(
        [git, "status", "--porcelain=v1", "-z", "--untracked-files=all"],
        cwd=root, capture_output=True, check=True, timeout=120,
    ).stdout.decode()  # fmt: skip
    changes: dict[str, str] = {}
    for entry in filter(None, listed.split("\0")):
        status, path = entry[:2], entry[3:]
        file = root / path
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "absent"
        changes[path] = f"{status} {digest}"
    return changes
