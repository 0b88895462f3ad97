"""Export a diffusers SD inpainting checkpoint's four networks to ONNX and check each against torch.

Dynamic axes: batch for all, spatial for the VAE and the UNet. The UNet is traced at a latent size
that is *not* a multiple of its total downsampling factor, so the traced graph keeps diffusers'
"forward upsample size" path, which works for every latent size (any image size that is a multiple of
8), not only the traced one. The VAE encoder returns the latent distribution's parameters: sampling
happens in Python with the request's generator, which keeps the random stream identical to diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from triton_inpaint.components import TENSORS, TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER, onnx_runner

OPSET = 17


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample).sample


class _Unet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        # Timesteps arrive as (B, 1) so that Triton's batched dims ([1]) need no reshape.
        return self.unet(
            sample, timestep.reshape(-1), encoder_hidden_states=encoder_hidden_states, return_dict=False
        )[0]


@dataclass(frozen=True)
class ExportCheck:
    """How far an exported graph is from torch on a random input of a shape it was not traced at."""

    submodel: str
    max_abs_diff: float
    path: Path


def _odd_latent_size(unet: torch.nn.Module) -> int:
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    return factor + 1 if factor > 1 else 3


def _example_inputs(pipeline: object, batch: int, latent_h: int, latent_w: int) -> dict[str, tuple]:
    generator = torch.Generator().manual_seed(1234)
    vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    latent_channels = pipeline.vae.config.latent_channels
    hidden = pipeline.text_encoder.config.hidden_size
    max_len = pipeline.tokenizer.model_max_length
    vocab = pipeline.text_encoder.config.vocab_size
    return {
        TEXT_ENCODER: (torch.randint(0, vocab, (batch, max_len), generator=generator),),
        VAE_ENCODER: (
            torch.rand(batch, 3, latent_h * vae_scale, latent_w * vae_scale, generator=generator) * 2 - 1,
        ),
        VAE_DECODER: (torch.randn(batch, latent_channels, latent_h, latent_w, generator=generator),),
        UNET: (
            torch.randn(batch, pipeline.unet.config.in_channels, latent_h, latent_w, generator=generator),
            torch.full((batch, 1), 981.0),
            torch.randn(batch, max_len, hidden, generator=generator),
        ),
    }


_DYNAMIC_AXES = {
    TEXT_ENCODER: {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    VAE_ENCODER: {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "latent_parameters": {0: "batch", 2: "h", 3: "w"},
    },
    VAE_DECODER: {
        "latent_sample": {0: "batch", 2: "h", 3: "w"},
        "sample": {0: "batch", 2: "height", 3: "width"},
    },
    UNET: {
        "sample": {0: "batch", 2: "h", 3: "w"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        "noise_pred": {0: "batch", 2: "h", 3: "w"},
    },
}


def export_onnx(pipeline: object, paths: dict[str, Path]) -> dict[str, Path]:
    """Write the four networks to the given ``.onnx`` paths (one folder each: a graph over 2 GB keeps
    its weights in external data files beside it)."""
    modules = {
        TEXT_ENCODER: _TextEncoder(pipeline.text_encoder),
        VAE_ENCODER: _VaeEncoder(pipeline.vae),
        VAE_DECODER: _VaeDecoder(pipeline.vae),
        UNET: _Unet(pipeline.unet),
    }
    odd = _odd_latent_size(pipeline.unet)
    examples = _example_inputs(pipeline, batch=2, latent_h=odd, latent_w=odd + 2)
    for name, module in modules.items():
        module.eval()
        input_names, output_name = TENSORS[name]
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(
                module,
                examples[name],
                str(path),
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_axes=_DYNAMIC_AXES[name],
                opset_version=OPSET,
                dynamo=False,
            )
    return paths


def verify_onnx(pipeline: object, paths: dict[str, Path]) -> list[ExportCheck]:
    """Run each graph and its torch module on a batch size and spatial size other than the traced ones."""
    run = onnx_runner(paths)
    factor = 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
    latent_h, latent_w = 2 * factor, 3 * factor  # a divisible size: the other branch of the UNet
    examples = _example_inputs(pipeline, batch=1, latent_h=latent_h, latent_w=latent_w)
    modules = {
        TEXT_ENCODER: _TextEncoder(pipeline.text_encoder),
        VAE_ENCODER: _VaeEncoder(pipeline.vae),
        VAE_DECODER: _VaeDecoder(pipeline.vae),
        UNET: _Unet(pipeline.unet),
    }
    checks = []
    for name, module in modules.items():
        input_names, output_name = TENSORS[name]
        with torch.no_grad():
            expected = module(*examples[name]).numpy()
        got = run(name, {n: t.numpy() for n, t in zip(input_names, examples[name], strict=True)}, output_name)
        if got.shape != expected.shape:
            raise RuntimeError(f"{name}: ONNX output shape {got.shape} != torch {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        if not math.isfinite(diff):
            raise RuntimeError(f"{name}: ONNX output is not finite")
        checks.append(ExportCheck(name, diff, paths[name]))
    return checks
