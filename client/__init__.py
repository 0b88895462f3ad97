"""Thin client over tritonclient (gRPC and HTTP) and its CLI."""

from triton_inpaint.client.inpaint_client import (
    InpaintClient,
    InpaintError,
    InpaintResult,
    MaskResult,
    ModelInfo,
    ServerUnreachableError,
)

__all__ = [
    "InpaintClient",
    "InpaintError",
    "InpaintResult",
    "MaskResult",
    "ModelInfo",
    "ServerUnreachableError",
]
