"""docs/commands.md and the commands agree: every subcommand has a row, every flag a command takes is
in its row, every flag a row's synopsis shows is one the command takes; the help shows each default
once and reads right; the user docs hold no words of how this project is run."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT
from triton_inpaint.cli import build_parser

COMMANDS_DOC = REPO_ROOT / "docs" / "commands.md"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ROW = re.compile(r"^\| `triton-inpaint ([a-z -]+?)(?: \[?-|`)(.*)$", re.M)


def _leaf_parsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield path, parser
    for action in children:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, f"{path} {name}".strip())


PARSERS = dict(_leaf_parsers(build_parser()))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")} - {
        "--help"
    }


def _rows() -> dict[str, list[str]]:
    """Each command's rows of the table (bench-gpu has two), as text."""
    rows: dict[str, list[str]] = {}
    for match in ROW.finditer(COMMANDS_DOC.read_text()):
        rows.setdefault(match[1].strip(), []).append(match[0])
    return rows


def test_every_command_has_a_row_and_every_row_a_command():
    assert set(_rows()) == set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_the_row_names_every_flag_and_only_real_ones(command):
    rows = _rows()[command]
    documented = {flag for row in rows for flag in FLAG.findall(row)}
    synopsis = {flag for row in rows for flag in FLAG.findall(row.split("` |", 1)[0])}
    flags = _flags(PARSERS[command])
    assert not flags - documented, f"{command}: flags missing from docs/commands.md"
    assert not synopsis - flags, f"{command}: docs/commands.md shows flags the command does not take"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_shows_each_default_once_and_no_flag_reads_backwards(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    text = capsys.readouterr().out
    for line in text.splitlines():
        assert line.count("(default:") <= 1, line
        assert "(default: None)" not in line, line
    for action in PARSERS[command]._actions:
        if action.nargs == 0 and action.option_strings != ["-h", "--help"]:  # on/off flags
            line = next(line for line in text.splitlines() if action.option_strings[0] in line.split()[:2])
            assert not re.search(r"\(default: (True|False|true|false)\)", line), line


USER_DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# How this project's work is organised (issue numbers, the sessions that do it) means nothing to a user.
PROCESS_WORDS = re.compile(
    r"\bissues? #?\d+|\bthe session that\b|\blent to (the|this) session\b|\bCEO\b", re.IGNORECASE
)


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_speak_of_the_product_not_of_how_it_was_built(path):
    found = [line.strip()[:120] for line in path.read_text().splitlines() if PROCESS_WORDS.search(line)]
    assert not found, found


def test_ci_runs_the_readmes_own_commands():
    """The README's two commands are the set-up a newcomer runs; CI runs the second word for word."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2 and block[0].endswith("triton-inpaint demo"), block
    assert block[1] in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for command in block:
        assert command.startswith("apt-get update"), "a fresh Debian or Ubuntu image has no package lists"
        assert "libpython3-dev" in command, "the Python backend's stub links libpython3.X.so"
