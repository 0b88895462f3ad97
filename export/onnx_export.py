"""Export a diffusers SD 1.5/2 or SDXL checkpoint's networks to ONNX and check each against torch.

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

from triton_inpaint.components import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    network_tensors,
    onnx_runner,
)

OPSET = 17


class _TextEncoder(torch.nn.Module):
    """SD: the last hidden state. SDXL: the penultimate hidden state (and the pooled projection)."""

    def __init__(self, text_encoder: torch.nn.Module, sdxl: bool, pooled: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.sdxl = sdxl
        self.pooled = pooled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.sdxl:
            return self.text_encoder(input_ids, return_dict=False)[0]
        output = self.text_encoder(input_ids, output_hidden_states=True)
        if self.pooled:
            return output.hidden_states[-2], output.text_embeds
        return output.hidden_states[-2]


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
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Timesteps arrive as (B, 1) so that Triton's batched dims ([1]) need no reshape.
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample,
            timestep.reshape(-1),
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


@dataclass(frozen=True)
class ExportCheck:
    """How far an exported graph is from torch on a random input of a shape it was not traced at."""

    submodel: str
    max_abs_diff: float
    path: Path


def is_sdxl(pipeline: object) -> bool:
    return getattr(pipeline, "text_encoder_2", None) is not None


def _modules(pipeline: object) -> dict[str, torch.nn.Module]:
    sdxl = is_sdxl(pipeline)
    modules = {TEXT_ENCODER: _TextEncoder(pipeline.text_encoder, sdxl, pooled=False)}
    if sdxl:
        modules[TEXT_ENCODER_2] = _TextEncoder(pipeline.text_encoder_2, sdxl, pooled=True)
    modules |= {
        VAE_ENCODER: _VaeEncoder(pipeline.vae),
        VAE_DECODER: _VaeDecoder(pipeline.vae),
        UNET: _Unet(pipeline.unet),
    }
    for module in modules.values():
        module.eval()
    return modules


def _odd_latent_size(unet: torch.nn.Module) -> int:
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    return factor + 1 if factor > 1 else 3


def unet_condition_sizes(pipeline: object) -> tuple[int, int]:
    """(pooled text embedding size, number of time ids) of an SDXL UNet."""
    pooled = pipeline.text_encoder_2.config.projection_dim
    time_ids = (pipeline.unet.config.projection_class_embeddings_input_dim - pooled) // (
        pipeline.unet.config.addition_time_embed_dim
    )
    return pooled, time_ids


def _example_inputs(pipeline: object, batch: int, latent_h: int, latent_w: int) -> dict[str, tuple]:
    generator = torch.Generator().manual_seed(1234)
    vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    latent_channels = pipeline.vae.config.latent_channels
    max_len = pipeline.tokenizer.model_max_length
    vocab = pipeline.text_encoder.config.vocab_size
    unet_inputs = [
        torch.randn(batch, pipeline.unet.config.in_channels, latent_h, latent_w, generator=generator),
        torch.full((batch, 1), 981.0),
        torch.randn(batch, max_len, pipeline.unet.config.cross_attention_dim, generator=generator),
    ]
    examples = {
        TEXT_ENCODER: (torch.randint(0, vocab, (batch, max_len), generator=generator),),
        VAE_ENCODER: (
            torch.rand(batch, 3, latent_h * vae_scale, latent_w * vae_scale, generator=generator) * 2 - 1,
        ),
        VAE_DECODER: (torch.randn(batch, latent_channels, latent_h, latent_w, generator=generator),),
    }
    if is_sdxl(pipeline):
        pooled, time_ids = unet_condition_sizes(pipeline)
        vocab_2 = pipeline.text_encoder_2.config.vocab_size
        examples[TEXT_ENCODER_2] = (torch.randint(0, vocab_2, (batch, max_len), generator=generator),)
        unet_inputs += [
            torch.randn(batch, pooled, generator=generator),
            torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0][:time_ids]]).repeat(batch, 1),
        ]
    examples[UNET] = tuple(unet_inputs)
    return examples


def _dynamic_axes(names: tuple[str, ...], role: str) -> dict[str, dict[int, str]]:
    spatial = {VAE_ENCODER, VAE_DECODER, UNET}
    axes = {}
    for name in names:
        axes[name] = {0: "batch"}
        if role in spatial and name in ("sample", "latent_sample", "latent_parameters", "noise_pred"):
            axes[name] |= {2: "height", 3: "width"}
    return axes


def export_onnx(pipeline: object, paths: dict[str, Path]) -> dict[str, Path]:
    """Write the networks to the given ``.onnx`` paths (one folder each: a graph over 2 GB keeps its
    weights in external data files beside it)."""
    modules = _modules(pipeline)
    odd = _odd_latent_size(pipeline.unet)
    examples = _example_inputs(pipeline, batch=2, latent_h=odd, latent_w=odd + 2)
    tensors = network_tensors(is_sdxl(pipeline))
    for name, module in modules.items():
        input_names, output_names = tensors[name]
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(
                module,
                examples[name],
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=_dynamic_axes(input_names + output_names, name),
                opset_version=OPSET,
                dynamo=False,
            )
    return paths


def verify_onnx(pipeline: object, paths: dict[str, Path]) -> list[ExportCheck]:
    """Run each graph and its torch module on a batch size and spatial size other than the traced ones."""
    run = onnx_runner(paths)
    factor = 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
    examples = _example_inputs(pipeline, batch=1, latent_h=2 * factor, latent_w=3 * factor)
    tensors = network_tensors(is_sdxl(pipeline))
    checks = []
    for name, module in _modules(pipeline).items():
        input_names, output_names = tensors[name]
        with torch.no_grad():
            expected = module(*examples[name])
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = run(
            name, {n: t.numpy() for n, t in zip(input_names, examples[name], strict=True)}, list(output_names)
        )
        diff = 0.0
        for output_name, want, have in zip(output_names, expected, got, strict=True):
            if have.shape != tuple(want.shape):
                raise RuntimeError(
                    f"{name}.{output_name}: ONNX shape {have.shape} != torch {tuple(want.shape)}"
                )
            diff = max(diff, float(np.max(np.abs(have - want.numpy()))) if want.numel() else 0.0)
        if not math.isfinite(diff):
            raise RuntimeError(f"{name}: ONNX output is not finite")
        checks.append(ExportCheck(name, diff, paths[name]))
    return checks
