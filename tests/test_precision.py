"""Each network's precision, declared once (triton_inpaint.networks.precision): networks that overflow fp16
never get it unless asked, on any runtime, and timesteps enter every network in fp32."""

from __future__ import annotations

import pytest
import torch

from triton_inpaint.api.roles import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    network_tensors,
    shallow_role,
)
from triton_inpaint.networks.precision import (
    BF16,
    FP16,
    FP32,
    RUNTIME_PRECISIONS,
    bf16_native,
    fp16_refusal,
    network_precision,
)
from triton_inpaint.networks.torch_networks import call_network

pytestmark = pytest.mark.unit
ARCHITECTURES = ("sd", "sdxl", "flux")


def _roles(architecture: str) -> list[str]:
    flux = architecture == "flux"
    return list(network_tensors(architecture, (), () if flux else (0, 1, 2), first_block_cache=flux))


def _every_case():
    for runtime, possible in RUNTIME_PRECISIONS.items():
        for architecture in ARCHITECTURES:
            for role in _roles(architecture):
                for precision in possible:
                    for upcast in (False, True):
                        yield runtime, architecture, role, precision, upcast


def test_networks_that_overflow_fp16_never_get_it_on_any_runtime():
    cases = 0
    for runtime, architecture, role, precision, upcast in _every_case():
        got = network_precision(architecture, role, precision, runtime, upcast).precision
        assert got in RUNTIME_PRECISIONS[runtime], (runtime, role, got)
        if bf16_native(architecture, role) or (upcast and role in (VAE_ENCODER, VAE_DECODER)):
            assert got != FP16, (runtime, architecture, role, precision, upcast)
        if precision == FP32:
            assert got == FP32
        cases += 1
    assert cases > 100


@pytest.mark.parametrize("runtime", ["gpu-torch", "gpu-tensorrt"])
def test_the_table_where_fp16_is_asked(runtime):
    flux = {role: str(network_precision("flux", role, FP16, runtime, True)) for role in _roles("flux")}
    assert flux == {
        TEXT_ENCODER: "fp16",
        TEXT_ENCODER_2: "bf16 (trained in bf16, overflows fp16)",
        VAE_ENCODER: "fp32 (force_upcast VAE, overflows fp16)",
        VAE_DECODER: "fp32 (force_upcast VAE, overflows fp16)",
        TRANSFORMER: "bf16 (trained in bf16, overflows fp16)",
        TRANSFORMER_HEAD: "bf16 (trained in bf16, overflows fp16)",
        TRANSFORMER_TAIL: "bf16 (trained in bf16, overflows fp16)",
    }
    sdxl = {role: network_precision("sdxl", role, FP16, runtime, True).precision for role in _roles("sdxl")}
    assert sdxl == {
        TEXT_ENCODER: FP16, TEXT_ENCODER_2: FP16, VAE_ENCODER: FP32, VAE_DECODER: FP32, UNET: FP16,
        **{shallow_role(b): FP16 for b in (0, 1, 2)},
    }  # fmt: skip
    # A VAE whose config says force_upcast false runs in fp16; in bf16 a force_upcast VAE is fine.
    assert network_precision("sd", VAE_DECODER, FP16, runtime, False).precision == FP16
    assert network_precision("sdxl", VAE_DECODER, BF16, runtime, True).precision == BF16


def test_without_bf16_a_network_that_needs_it_runs_in_fp32():
    """Triton's onnxruntime TensorRT accelerator takes FP32 or FP16 only."""
    got = network_precision("flux", TRANSFORMER, FP16, "gpu-onnxruntime+trt", True)
    assert (got.precision, got.reason) == (FP32, "needs bf16, which this runtime lacks")
    with pytest.raises(ValueError, match="runtime gpu-onnxruntime\\+trt runs fp32, fp16"):
        network_precision("sd", UNET, BF16, "gpu-onnxruntime+trt")


def test_fp16_overflow_only_when_asked():
    for architecture, role in (("flux", TRANSFORMER), ("flux", TEXT_ENCODER_2), ("sdxl", VAE_DECODER)):
        forced = network_precision(architecture, role, FP16, "gpu-torch", True, allow_fp16_overflow=True)
        assert forced.precision == FP16
    assert "--allow-fp16-overflow" in fp16_refusal("flux") and fp16_refusal("sdxl") is None


class _Recorder(torch.nn.Module):
    """Returns its inputs' dtypes (as a tensor per input) so the test sees what call_network fed."""

    output_names = ("sample", "timestep", "guidance")

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        self.seen: list[torch.dtype] = []

    def forward(self, sample, timestep, guidance):
        self.seen = [sample.dtype, timestep.dtype, guidance.dtype]
        return sample, timestep, guidance


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_timesteps_and_guidance_enter_a_half_precision_network_in_fp32(dtype):
    """diffusers passes them in fp32 (an fp16 timestep of a fractional schedule is off by up to 0.25)."""
    module = _Recorder(dtype)
    timestep = torch.tensor([[999.1234]])
    inputs = {"sample": torch.ones(1, 2), "timestep": timestep, "guidance": torch.tensor([[3.5]])}
    _, fed_timestep, _ = call_network(module, inputs, list(_Recorder.output_names), torch.device("cpu"))
    assert module.seen == [dtype, torch.float32, torch.float32]
    assert fed_timestep.item() == timestep.item()
