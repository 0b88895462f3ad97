"""Thin client over tritonclient (gRPC and HTTP) and its CLI."""

from triton_inpaint.client.gateway_client import GatewayClient
from triton_inpaint.client.inpaint_client import (
    InpaintClient,
    InpaintError,
    InpaintResult,
    MaskResult,
    ModelInfo,
    ModelNotServedError,
    ModelUnavailableError,
    ServerUnreachableError,
)
from triton_inpaint.client.streaming import Progress

__all__ = [
    "GatewayClient",
    "InpaintClient",
    "InpaintError",
    "InpaintResult",
    "MaskResult",
    "ModelInfo",
    "ModelNotServedError",
    "ModelUnavailableError",
    "Progress",
    "ServerUnreachableError",
]
