"""Thin client over tritonclient (gRPC and HTTP) and its CLI."""

from triton_inpaint.client.gateway_client import GatewayClient
from triton_inpaint.client.inpaint_client import (
    DeadlineExceededError,
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
    "DeadlineExceededError",
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
