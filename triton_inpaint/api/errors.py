"""Errors that reach users, always naming the input that was wrong."""

from __future__ import annotations

import re

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(\[\d+\][A-Za-z0-9_.]*)*")  # lora[0].model too


class InvalidInputError(ValueError):
    """A request input is missing, malformed or out of range.

    ``field`` is the public name of the input (the Triton tensor name, which is also the client's
    keyword and the CLI flag stem), so the message tells the caller exactly what to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


def split_field(message: str) -> tuple[str, str] | None:
    """(field, reason) of a message in :class:`InvalidInputError`'s "field: reason" form, as it comes
    back from another model or over the wire; None for any other message."""
    field, separator, reason = message.partition(": ")
    if separator and reason and _FIELD.fullmatch(field):
        return field, reason
    return None


class ModelCallError(RuntimeError):
    """A model called from another (over Triton's BLS, or onnxruntime in tests) answered with an
    error; ``message`` is its message as sent."""

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        self.message = message
        super().__init__(f"{model}: {message}")


class NonFiniteOutputError(RuntimeError):
    """A network returned NaN or Inf values: in half precision, an overflow. The request fails with
    this instead of decoding them into a black or noise image returned as a success."""

    def __init__(self, network: str, precision: str, outputs: list[str]) -> None:
        self.network = network
        self.precision = precision
        hint = ""
        if precision == "fp16":
            hint = "; fp16 overflows where bf16 and fp32 do not: export it with --precision bf16 or fp32"
        super().__init__(
            f"{network} ({precision or 'precision not recorded'}) returned NaN or Inf values in "
            f"{', '.join(outputs)}{hint}"
        )
