"""Which precision each network runs in: declared once, by role and family, for every runtime
(docs/runtimes.md#precision). Plain data, importable without torch.

Half precision is the GPU default, but not every network survives fp16 (largest value 65504):

- FLUX's transformer (and its first-block-cache halves) and its T5 encoder are trained and shipped in
  bf16; their activations overflow fp16 (black or NaN images), so they run in bf16, the precision
  diffusers and Black Forest Labs run them in. bf16 has fp32's range.
- A VAE whose config sets ``force_upcast`` (SDXL's) overflows in fp16 and runs in fp32, as diffusers'
  pipelines upcast it. In bf16 it is fine (diffusers upcasts only fp16).
- CLIP, the SD and SDXL UNets and the other VAEs run in the export's half precision.

Where a runtime cannot run bf16 (Triton's onnxruntime TensorRT accelerator takes FP32 or FP16 only), a
network that needs bf16 runs in fp32: slower, never overflowing. Timesteps and guidance always enter a
network in fp32 (:data:`FP32_INPUTS`); the scheduler's arithmetic is fp32 in the denoise loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from triton_inpaint.api.roles import (
    TEXT_ENCODER_2,
    TRANSFORMER,
    VAE_DECODER,
    VAE_ENCODER,
    base_role,
)

FP32, FP16, BF16 = "fp32", "fp16", "bf16"
PRECISIONS = (FP32, FP16, BF16)
HALF = (FP16, BF16)
# Bytes of one value, for the memory estimate.
VALUE_BYTES = {FP32: 4, FP16: 2, BF16: 2}
# Inputs every network takes in fp32 whatever it computes in, as diffusers passes them: the timestep
# (an fp16 timestep of Euler's or Karras sigmas' fractional schedule is off by up to 0.25) and FLUX's
# guidance. The module casts them itself where diffusers' does.
FP32_INPUTS = frozenset({"timestep", "guidance"})
# The precisions each runtime can run a network in (export/runtimes.py names the runtimes).
RUNTIME_PRECISIONS = {
    "cpu": (FP32,),
    "gpu-onnxruntime": (FP32,),  # the CUDA provider runs the fp32 graph as it is
    "gpu-onnxruntime+trt": (FP32, FP16),  # Triton's TensorRT accelerator: precision_mode FP32 or FP16
    "gpu-tensorrt": PRECISIONS,
    "gpu-torch": PRECISIONS,
}
# Why a network does not run in the export's precision.
OVERFLOWS_FP16 = "trained in bf16, overflows fp16"
FORCE_UPCAST = "force_upcast VAE, overflows fp16"
NO_BF16 = "needs bf16, which this runtime lacks"


@dataclass(frozen=True)
class NetworkPrecision:
    """A network's precision, and why it differs from the export's (empty when it does not)."""

    precision: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})" if self.reason else self.precision


def bf16_native(architecture: str, role: str) -> bool:
    """Whether ``role`` of ``architecture`` is a network trained in bf16 that overflows fp16."""
    return architecture == "flux" and base_role(role) in (TRANSFORMER, TEXT_ENCODER_2)


def network_precision(
    architecture: str,
    role: str,
    precision: str,
    runtime: str,
    force_upcast_vae: bool = False,
    allow_fp16_overflow: bool = False,
) -> NetworkPrecision:
    """The precision ``role`` runs in when the export asks for ``precision`` on ``runtime`` (a key of
    :data:`RUNTIME_PRECISIONS`). ``allow_fp16_overflow`` keeps fp16 for networks that overflow it."""
    possible = RUNTIME_PRECISIONS[runtime]
    if precision not in possible:
        raise ValueError(f"precision {precision!r}: runtime {runtime} runs {', '.join(possible)}")
    if precision == FP32:
        return NetworkPrecision(FP32)
    if precision == FP16 and not allow_fp16_overflow:
        if bf16_native(architecture, role):
            if BF16 in possible:
                return NetworkPrecision(BF16, OVERFLOWS_FP16)
            return NetworkPrecision(FP32, NO_BF16)
        if force_upcast_vae and role in (VAE_ENCODER, VAE_DECODER):
            return NetworkPrecision(FP32, FORCE_UPCAST)
    return NetworkPrecision(precision)


def fp16_refusal(architecture: str) -> str | None:
    """Why an explicit ``--precision fp16`` is refused for ``architecture`` (None: it is not)."""
    if not any(bf16_native(architecture, role) for role in (TRANSFORMER, TEXT_ENCODER_2)):
        return None
    return (
        "--precision fp16: FLUX's transformer and T5 are trained in bf16 and overflow fp16 (black or NaN "
        "images). Leave --precision out (bf16 for them, fp16 where it is safe), use --precision bf16, "
        "or add --allow-fp16-overflow to run them in fp16 anyway"
    )
