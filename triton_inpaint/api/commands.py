"""What every ``triton-inpaint`` command shares: one exit code per kind of failure, so a script can
tell "fix the input" from "try again later" from "install something", one line for the person, and
help that shows each default once."""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum
from typing import Any

TRACEBACK_ENV = "TRITON_INPAINT_TRACEBACK"


class ExitCode(IntEnum):
    """The exit codes of every command (docs/commands.md lists them)."""

    OK = 0
    BUG = 1  # an unexpected failure: a bug to report (set TRITON_INPAINT_TRACEBACK=1 for the traceback)
    BAD_INPUT = 2  # a flag, file or value is wrong, or the server refused the request: fix the input
    UNAVAILABLE = 3  # no server answered, one failed to start, or a model is being restored: retry later
    NOT_SERVED = 4  # the model named is not on the server: export it, or pick one `models` lists
    NOT_INSTALLED = 5  # something the command needs is missing from this machine: install it
    INTERRUPTED = 130  # Ctrl-C


class CommandError(RuntimeError):
    """A failure a command expects: ``main`` prints ``error: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, less its misreadings: a help text that already says its default
    gets no second one, ``None`` is not shown (such defaults are described in words), and on/off flags
    show none ("--no-cpu-graphs ... (default: True)" reads backwards). Those rules are not an option of
    argparse's own formatters, hence this one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or action.nargs == 0  # store_true / store_false / store_const
            or not action.option_strings
        ):
            return text
        return super()._get_help_string(action)


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand under it :class:`HelpFormatter`."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                use_help_formatter(child)


def progress(total: float, description: str, unit: str = "step", quiet: bool = False) -> Any:
    """A tqdm bar on stderr with elapsed and remaining time; none with ``quiet`` or when stderr is not
    a terminal (tqdm's own ``disable=None``), so logs and CI output stay line by line."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=description, unit=unit, disable=True if quiet else None, file=sys.stderr,
        dynamic_ncols=True, leave=False,
    )  # fmt: skip


def say(message: str) -> None:
    """A progress line on stderr that does not tear a bar in the middle of being drawn."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
