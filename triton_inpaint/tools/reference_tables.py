"""The tables in ``docs/`` that restate the code: written from the declarations, checked by a test.

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a Markdown
file; :func:`render` rewrites every such block from :data:`TABLES`. Regenerate after changing a control:

    python -m triton_inpaint.tools.reference_tables --write
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from triton_inpaint.api import contract
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.api.schema import INPAINT, MASK, Control, RequestSchema

_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _code(text: str | None) -> str:
    return f"`{text}`" if text else "-"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]
    return "\n".join(lines) + "\n"


def _allowed(control: Control) -> str:
    if control.kind is bytes:
        return "PNG, JPEG or WEBP bytes"
    return control.allowed or ("true / false" if control.kind is bool else "UTF-8 text")


def controls_table(schema: RequestSchema) -> str:
    """Every control: name, type, allowed values, default, meaning, and its names elsewhere."""
    rows = [
        [
            _code(c.name),
            contract.control_tensor(c).client_dtype,
            _allowed(c),
            "required" if c.required else c.shown_default,
            c.description,
            _code(c.runware),
            _code(c.eden) + (f" (default {c.eden_default})" if c.eden_default is not None else ""),
            _code(c.cli_flag),
        ]
        for c in schema
    ]
    header = ["control", "type", "allowed", "default", "meaning", "`/v1` task field", "Eden `args`", "CLI"]
    return _table(header, rows)


def tensors_table(specs: Iterable[TensorSpec], kind: str = "input") -> str:
    rows = [
        [_code(s.name), s.client_dtype, f"`{list(s.dims)}`", "yes" * s.optional or "no", s.description]
        for s in specs
    ]
    return _table([kind, "type", "shape", "optional", "meaning"], rows)


def steps_table() -> str:
    """Which ensemble step reads which request tensors."""
    rows = [
        [_code(model), ", ".join(_code(s.name) for s in inputs), ", ".join(_code(s.name) for s in outputs)]
        for model, (inputs, outputs) in (
            (contract.PREPROCESS_MODEL, contract.STAGE_TENSORS["preprocess"]),
            ("<NAME>_denoise", contract.STAGE_TENSORS["denoise"]),
            (contract.POSTPROCESS_MODEL, contract.STAGE_TENSORS["postprocess"]),
        )
    ]
    return _table(["step", "reads", "writes"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "inpaint-controls": lambda: controls_table(INPAINT),
    "mask-controls": lambda: controls_table(MASK),
    "ensemble-inputs": lambda: tensors_table(contract.REQUEST_INPUTS),
    "ensemble-outputs": lambda: tensors_table(contract.RESPONSE_OUTPUTS, "output"),
    "ensemble-steps": steps_table,
    "stream-inputs": lambda: tensors_table(contract.STREAM_INPUTS),
    "stream-outputs": lambda: tensors_table(contract.STREAM_OUTPUTS, "output"),
    "masking-inputs": lambda: tensors_table(contract.MASKING_INPUTS),
    "masking-outputs": lambda: tensors_table(contract.MASKING_OUTPUTS, "output"),
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten; an unknown block name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return _BLOCK.sub(replace, text)


def stale_files(paths: Iterable[Path]) -> list[Path]:
    return [path for path in paths if render(path.read_text()) != path.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check or rewrite the generated tables in docs/")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the folder of Markdown files")
    parser.add_argument("--write", action="store_true", help="rewrite stale files instead of failing")
    args = parser.parse_args(argv)
    paths = sorted(args.docs.glob("*.md"))
    stale = stale_files(paths)
    if args.write:
        for path in stale:
            path.write_text(render(path.read_text()))
            print(f"rewrote {path}")
        return 0
    for path in stale:
        command = "python -m triton_inpaint.tools.reference_tables --write"
        print(f"{path}: generated tables are stale; run {command}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
