"""The code's shape as checks that fail: no function longer than one screen, no folder so full that
its modules stop saying what they hold. Read from the source, like tests/test_import_contracts.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("triton_inpaint", "gateway", "client", "export")
MAX_FUNCTION_LINES = 85  # "about 80": a function, its docstring and signature read at once
MAX_MODULES = 10  # per folder, __init__.py aside


def _sources() -> list[Path]:
    return [path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]


def test_the_checks_see_the_code():
    names = {path.relative_to(ROOT).as_posix() for path in _sources()}
    assert {"gateway/app.py", "triton_inpaint/pipelines/sd_inpaint.py", "export/cli.py"} <= names


def test_no_function_is_longer_than_a_screen():
    long = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert not long, long


def test_no_folder_holds_more_than_ten_modules():
    folders = {path.parent for path in _sources()}
    full = sorted(
        f"{folder.relative_to(ROOT)}: {count}"
        for folder in folders
        if (count := sum(1 for path in folder.glob("*.py") if path.name != "__init__.py")) > MAX_MODULES
    )
    assert not full, full
