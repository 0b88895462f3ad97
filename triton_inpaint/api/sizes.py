"""Byte sizes as operators write them (``6GiB``), and the variable that sets the memory budget.

Here, not in ``pipelines/memory.py``, because ``serve`` parses ``--memory-budget`` without loading a
pipeline.
"""

from __future__ import annotations

import re

BUDGET_ENV = "TRITON_INPAINT_MEMORY_BUDGET"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"6GiB"``, ``"6G"``, ``"512MiB"`` or a plain number of bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 6GiB, 512MiB or a number of bytes")
    unit = (match[2] or "B").upper()[0]
    return int(float(match[1]) * 1024 ** "BKMGT".index(unit))


def gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
