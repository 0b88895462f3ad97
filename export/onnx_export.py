"""Export a diffusers SD 1.5/2, SDXL or FLUX Fill checkpoint's networks to ONNX and check each against
torch.

Dynamic axes: batch for all, spatial for the VAE and the UNet, the image-token axis for FLUX's
transformer. The UNet is traced at a latent size
that is *not* a multiple of its total downsampling factor, so the traced graph keeps diffusers'
"forward upsample size" path, which works for every latent size (any image size that is a multiple of
8), not only the traced one. The VAE encoder returns the latent distribution's parameters: sampling
happens in Python with the request's generator, which keeps the random stream identical to diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from triton_inpaint.api.contract import Runner
from triton_inpaint.api.roles import (
    HEAD_RESIDUAL,
    TAIL_RESIDUAL,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    base_role,
    shallow_role,
)
from triton_inpaint.export import attention
from triton_inpaint.networks.lora import LoraNetwork
from triton_inpaint.networks.runners import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    network_tensors,
    onnx_runner,
)
from triton_inpaint.networks.torch_networks import (
    load_network,
    pipeline_architecture,
    role_modules,
    torch_runner,
)
from triton_inpaint.pipelines.spec import PipelineSpec

OPSET = 17
# FLUX tensors whose second axis is the image tokens (dynamic: it follows the processing size).
IMAGE_TOKEN_TENSORS = (
    "hidden_states", "img_ids", "noise_pred", "hidden_states_head", HEAD_RESIDUAL, TAIL_RESIDUAL,
)  # fmt: skip


def _rotary_embedding_for_export(
    x: torch.Tensor,
    freqs_cis: tuple[torch.Tensor, torch.Tensor],
    use_real: bool = True,
    use_real_unbind_dim: int = -1,
    sequence_dim: int = 2,
) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` (the FLUX case), with strided slices where it reshapes.

    Written by hand because the TorchScript ONNX exporter records diffusers'
    ``x.reshape(*x.shape[:-1], -1, 2)`` with the traced shape as a constant, so the graph fails on any
    other image size (the failure optimum-onnx works around the same way). Same numbers, same order.
    """
    if not use_real or use_real_unbind_dim != -1:
        raise NotImplementedError("only FLUX's rotary embedding is patched for export")
    cos, sin = freqs_cis
    index = (None, slice(None), None, slice(None)) if sequence_dim == 1 else (None, None)
    cos, sin = cos[index].to(x.device), sin[index].to(x.device)
    x_real, x_imag = x[..., 0::2], x[..., 1::2]
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


@contextmanager
def _exportable_flux(transformer: torch.nn.Module) -> Iterator[None]:
    """Make FLUX's transformer traceable with dynamic image tokens, and put it back afterwards.

    ``torch.nn.RMSNorm`` (q/k norms) has no ONNX symbolic at opset 17: it is swapped for diffusers'
    ``RMSNorm``, the same formula in plain ops, sharing the weights.
    """
    from diffusers.models.normalization import RMSNorm
    from diffusers.models.transformers import transformer_flux

    swapped = []
    for parent in transformer.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.RMSNorm):
                plain = RMSNorm(child.normalized_shape[-1], eps=child.eps, elementwise_affine=False)
                plain.weight = child.weight
                setattr(parent, name, plain)
                swapped.append((parent, name, child))
    try:
        with mock.patch.object(transformer_flux, "apply_rotary_emb", _rotary_embedding_for_export):
            yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@dataclass(frozen=True)
class ExportCheck:
    """How far an exported graph is from torch on a random input of a shape it was not traced at."""

    submodel: str
    max_abs_diff: float
    path: Path


architecture = pipeline_architecture


def is_sdxl(pipeline: object) -> bool:
    return architecture(pipeline) == "sdxl"


def _modules(
    pipeline: object, deep_cache_branches: tuple[int, ...] = (), first_block_cache: bool = False
) -> dict[str, torch.nn.Module]:
    return role_modules(pipeline, architecture(pipeline), deep_cache_branches, first_block_cache)


def _with_cache_examples(
    modules: dict[str, torch.nn.Module],
    examples: dict[str, tuple],
    branches: tuple[int, ...],
    first_block: bool,
) -> dict[str, tuple]:
    """The step-caching networks' examples, made from the whole denoiser's own outputs on its example
    (adapter weights, where the networks are banked, stay last): each DeepCache shallow UNet gets the
    UNet's inputs and the feature the UNet returns for them; FLUX's first block gets the transformer's
    inputs and the rest's residual, its tail the first block's outputs and the step's conditions."""
    if branches:
        unet_example = examples[UNET]
        with torch.no_grad():
            _, *features = modules[UNET](*unet_example)
        for branch, feature in zip(branches, features, strict=True):
            examples[shallow_role(branch)] = _inserted(modules[UNET], unet_example, (feature,))
    if first_block:
        example = examples[TRANSFORMER]
        with torch.no_grad():
            _, _, tail_residual = modules[TRANSFORMER](*example)
            examples[TRANSFORMER_HEAD] = _inserted(modules[TRANSFORMER], example, (tail_residual,))
            head, encoder, *_ = modules[TRANSFORMER_HEAD](*examples[TRANSFORMER_HEAD])
        conditions = example[1:4] + example[5:7]  # timestep, guidance, pooled projections, ids
        banked = isinstance(modules[TRANSFORMER], LoraNetwork)
        examples[TRANSFORMER_TAIL] = (head, encoder, *conditions, *(example[-1:] if banked else ()))
    return examples


def _inserted(module: torch.nn.Module, example: tuple, extra: tuple) -> tuple:
    """``example`` with ``extra`` inputs last, before the adapter weights of a banked network."""
    if isinstance(module, LoraNetwork):
        return (*example[:-1], *extra, example[-1])
    return (*example, *extra)


class _EveryInput(torch.nn.Module):
    """A step-caching network as exported: its (first) output plus an exact zero made from every input.
    The layers a shallow branch runs may read no text state (no cross-attention among them) or no
    adapter weight, and the graph exporter drops inputs nothing reads; but every call sends them all
    (the same inputs as the whole denoiser's, which is what lets the caller switch networks), and a
    graph, a Triton config and a TensorRT profile must name the same inputs."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result = self.module(*inputs)
        outputs = [result] if isinstance(result, torch.Tensor) else list(result)
        first = outputs[0]
        rows = first.shape[0]
        tie = sum(value.reshape(rows, -1)[:, :1].to(first.dtype) for value in inputs)
        outputs[0] = first + 0.0 * tie.reshape(rows, *([1] * (first.dim() - 1)))
        return outputs[0] if isinstance(result, torch.Tensor) else tuple(outputs)


def check_split_networks(
    modules: dict[str, torch.nn.Module],
    examples: dict[str, tuple],
    branches: tuple[int, ...],
    first_block: bool,
) -> None:
    """The step-caching networks against the whole denoiser, on its example: each shallow UNet started
    from the UNet's own feature, and FLUX's head then tail (and the head's prediction from the rest's
    own residual), must give the whole denoiser's prediction: the proof that their hand-written
    forwards are diffusers' (networks/deep_cache.py, networks/first_block.py)."""
    checks = []
    with torch.no_grad():
        if branches:
            noise, *_ = modules[UNET](*examples[UNET])
            for branch in branches:
                role = shallow_role(branch)
                checks.append((role, noise, modules[role](*examples[role])))
        if first_block:
            noise, *_ = modules[TRANSFORMER](*examples[TRANSFORMER])
            *_, skipped = modules[TRANSFORMER_HEAD](*examples[TRANSFORMER_HEAD])
            tail, _ = modules[TRANSFORMER_TAIL](*examples[TRANSFORMER_TAIL])
            checks += [(TRANSFORMER_HEAD, noise, skipped), (TRANSFORMER_TAIL, noise, tail)]
    for role, want, got in checks:
        diff = float((got - want).abs().max())
        if not diff <= 1e-4 * max(1.0, float(want.abs().max())):
            raise RuntimeError(f"{role}: differs from the whole denoiser by {diff}")


def _lora_roles(modules: dict[str, torch.nn.Module]) -> tuple[str, ...]:
    return tuple(role for role, module in modules.items() if isinstance(module, LoraNetwork))


def _with_lora_scales(
    modules: dict[str, torch.nn.Module], examples: dict[str, tuple], batch: int
) -> dict[str, tuple]:
    """Each banked network's example inputs with random adapter weights last (nonzero, so that the
    check below sees the banks at work)."""
    generator = torch.Generator().manual_seed(4321)
    for role, module in modules.items():
        # A shallow UNet's example is the UNet's, adapter weights included (_with_deep_features).
        if isinstance(module, LoraNetwork) and role in examples:
            weights = torch.rand(batch, module.scales.adapters, generator=generator) * 2 - 1
            examples[role] = (*examples[role], weights)
    return examples


def _odd_latent_size(pipeline: object) -> int:
    if architecture(pipeline) == "flux":
        return 6  # packing needs even latent sizes; 6x8 latents are 3x4 image tokens
    factor = 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
    return factor + 1 if factor > 1 else 3


def _verify_latent_size(pipeline: object) -> tuple[int, int]:
    if architecture(pipeline) == "flux":
        return 4, 10
    factor = 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
    return 2 * factor, 3 * factor


def unet_condition_sizes(pipeline: object) -> tuple[int, int]:
    """(pooled text embedding size, number of time ids) of an SDXL UNet."""
    pooled = pipeline.text_encoder_2.config.projection_dim
    time_ids = (pipeline.unet.config.projection_class_embeddings_input_dim - pooled) // (
        pipeline.unet.config.addition_time_embed_dim
    )
    return pooled, time_ids


def _flux_examples(pipeline: object, batch: int, latent_h: int, latent_w: int) -> dict[str, tuple]:
    from diffusers import FluxFillPipeline

    generator = torch.Generator().manual_seed(1234)
    config = pipeline.transformer.config
    vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    t5_len = PipelineSpec.from_diffusers(pipeline).max_sequence_length
    tokens = (latent_h // 2) * (latent_w // 2)
    image_ids = FluxFillPipeline._prepare_latent_image_ids(
        batch, latent_h // 2, latent_w // 2, "cpu", torch.float32
    )
    return {
        TEXT_ENCODER: (
            torch.randint(
                0,
                pipeline.text_encoder.config.vocab_size,
                (batch, pipeline.tokenizer.model_max_length),
                generator=generator,
            ),
        ),
        TEXT_ENCODER_2: (
            torch.randint(0, pipeline.text_encoder_2.config.vocab_size, (batch, t5_len), generator=generator),
        ),
        VAE_ENCODER: (
            torch.rand(batch, 3, latent_h * vae_scale, latent_w * vae_scale, generator=generator) * 2 - 1,
        ),
        VAE_DECODER: (
            torch.randn(batch, pipeline.vae.config.latent_channels, latent_h, latent_w, generator=generator),
        ),
        TRANSFORMER: (
            torch.randn(batch, tokens, config.in_channels, generator=generator),
            torch.full((batch, 1), 0.7),
            torch.full((batch, 1), 30.0),
            torch.randn(batch, config.pooled_projection_dim, generator=generator),
            torch.randn(batch, t5_len, config.joint_attention_dim, generator=generator),
            torch.zeros(batch, t5_len, 3),
            image_ids.unsqueeze(0).repeat(batch, 1, 1),
        ),
    }


def _example_inputs(pipeline: object, batch: int, latent_h: int, latent_w: int) -> dict[str, tuple]:
    if architecture(pipeline) == "flux":
        return _flux_examples(pipeline, batch, latent_h, latent_w)
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
    spatial = base_role(role) in (VAE_ENCODER, VAE_DECODER, UNET)
    axes = {}
    for name in names:
        axes[name] = {0: "batch"}
        if spatial and name in ("sample", "latent_sample", "latent_parameters", "noise_pred"):
            axes[name] |= {2: "height", 3: "width"}
        if name.startswith("deep_feature_"):  # at 1/2^block of the latents
            axes[name] |= {2: f"{name}_height", 3: f"{name}_width"}
        if base_role(role) == TRANSFORMER and name in IMAGE_TOKEN_TENSORS:
            axes[name] |= {1: "image_tokens"}
    return axes


def export_onnx(
    pipeline: object,
    paths: dict[str, Path],
    fused_attention: bool = False,
    each: Callable[[str, Path], None] | None = None,
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> dict[str, Path]:
    """Write the networks to the given ``.onnx`` paths (one folder each: a graph over 2 GB keeps its
    weights in external data files beside it). ``fused_attention``: attention as onnxruntime's
    ``MultiHeadAttention`` (:mod:`triton_inpaint.export.attention`), for the CPU runtime. ``each`` is
    told of every network written (progress). ``deep_cache_branches``: the UNet also returns their
    features, and each has its shallow UNet (:mod:`triton_inpaint.networks.deep_cache`);
    ``first_block_cache``: FLUX's transformer also returns its residuals, and has its two halves
    (:mod:`triton_inpaint.networks.first_block`)."""
    caches = (deep_cache_branches, first_block_cache)
    modules = _modules(pipeline, *caches)
    odd = _odd_latent_size(pipeline)
    examples = _example_inputs(pipeline, batch=2, latent_h=odd, latent_w=odd + 2)
    examples = _with_lora_scales(modules, examples, 2)
    examples = _with_cache_examples(modules, examples, *caches)
    tensors = network_tensors(architecture(pipeline), _lora_roles(modules), *caches)
    for name, module in modules.items():
        input_names, output_names = tensors[name]
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        inner = module.inner if isinstance(module, LoraNetwork) else module
        flux = base_role(name) == TRANSFORMER
        exportable = _exportable_flux(inner.transformer) if flux else nullcontext()
        traced = _EveryInput(module) if base_role(name) != name else module  # a step-caching network
        with torch.no_grad(), exportable, attention.fused_attention(fused_attention):
            torch.onnx.export(
                traced,
                examples[name],
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=_dynamic_axes(input_names + output_names, name),
                opset_version=OPSET,
                dynamo=False,
            )
        if each is not None:
            each(name, path)
    return paths


def verify_onnx(
    pipeline: object,
    paths: dict[str, Path],
    each: Callable[[str, Path], None] | None = None,
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> list[ExportCheck]:
    """Run each graph and its torch module on a batch size and spatial size other than the traced ones."""
    return _verify(pipeline, onnx_runner(paths), paths, each, deep_cache_branches, first_block_cache)


def verify_saved_networks(
    pipeline: object,
    directories: dict[str, Path],
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> list[ExportCheck]:
    """Load each network the ``gpu-torch`` runtime will serve back from disk (in float32 on the CPU:
    weights saved in fp16 show their rounding here) and run it against the pipeline's own module."""
    loaded = {
        role: load_network(directory, "cpu", precision="fp32")[1] for role, directory in directories.items()
    }
    run = torch_runner(loaded)

    def run_numpy(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        feeds = {name: torch.from_numpy(value) for name, value in inputs.items()}
        return [value.numpy() for value in run(model, feeds, outputs)]

    return _verify(pipeline, run_numpy, directories, None, deep_cache_branches, first_block_cache)


def _verify(
    pipeline: object,
    run: Runner,
    paths: dict[str, Path],
    each: Callable[[str, Path], None] | None = None,
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> list[ExportCheck]:
    caches = (deep_cache_branches, first_block_cache)
    modules = _modules(pipeline, *caches)
    examples = _with_lora_scales(modules, _example_inputs(pipeline, 1, *_verify_latent_size(pipeline)), 1)
    examples = _with_cache_examples(modules, examples, *caches)
    check_split_networks(modules, examples, *caches)
    tensors = network_tensors(architecture(pipeline), _lora_roles(modules), *caches)
    checks = []
    for name, module in modules.items():
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
                    f"{name}.{output_name}: exported shape {have.shape} != torch {tuple(want.shape)}"
                )
            diff = max(diff, float(np.max(np.abs(have - want.numpy()))) if want.numel() else 0.0)
        if not math.isfinite(diff):
            raise RuntimeError(f"{name}: exported network's output is not finite")
        checks.append(ExportCheck(name, diff, paths[name]))
        if each is not None:
            each(name, paths[name])
    return checks
