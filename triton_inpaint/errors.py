"""Errors that reach users, always naming the input that was wrong."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """A request input is missing, malformed or out of range.

    ``field`` is the public name of the input (the Triton tensor name, which is also the client's
    keyword and the CLI flag stem), so the message tells the caller exactly what to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")
