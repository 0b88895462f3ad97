"""What every pipeline decides before a network runs, in one :class:`Plan`: the processing size, the
TensorRT engines' limits, the memory need, the scheduler and its timesteps; and how prompts become
token ids. Shared by the SD and FLUX pipelines, so that they decide and refuse alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import Box
from triton_inpaint.api.lora import adapter_scales
from triton_inpaint.api.params import SIZE_MULTIPLE, DenoiseParams
from triton_inpaint.pipelines.memory import Need, cache_bytes, check_request
from triton_inpaint.pipelines.schedulers import build_scheduler
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.pipelines.steps.step_cache import CachePlan, plan_cache


@dataclass(frozen=True)
class Plan:
    """What a request decides before any network runs (see :func:`plan`); shared by every family."""

    width: int
    height: int
    crop: Box | None
    scheduler: Any
    timesteps: torch.Tensor
    need: Need = Need(0)  # memory for the networks' work, and whether the VAE runs in tiles
    lora_scales: tuple[float, ...] = ()  # the weight of each of the model's adapters (spec.adapters)
    cache: CachePlan | None = None  # step caching (None: every step in full)


def processing_size(
    image_width: int, image_height: int, native: int, params: DenoiseParams, multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """The (width, height) the model runs at.

    An explicit width/height wins; a single one keeps the input's aspect ratio. By default the input
    is scaled to the model's native pixel count (native x native) keeping its aspect ratio, rounded to
    a multiple of ``multiple`` (8; 16 for FLUX), so any input size runs at the resolution the model
    was trained for.
    """
    aspect = image_width / image_height
    if params.width and params.height:
        return params.width, params.height

    def snap(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    if params.width:
        return params.width, snap(params.width / aspect)
    if params.height:
        return snap(params.height * aspect), params.height
    return snap(native * math.sqrt(aspect)), snap(native / math.sqrt(aspect))


def check_engine_sides(width: int, height: int, max_side: int | None) -> None:
    """Refuse a processing size beyond what the deployment's TensorRT engines were built for (their
    shape profiles), naming the field, before any network runs; None: no engine limit."""
    if max_side is None:
        return
    for field, value in (("width", width), ("height", height)):
        if value > max_side:
            raise InvalidInputError(
                field,
                f"the processing size is {width}x{height}; this deployment's TensorRT engines cover sides "
                f"up to {max_side} px (export --max-size); ask for a smaller width/height",
            )


def plan(
    spec: PipelineSpec,
    params: DenoiseParams,
    size: tuple[int, int],
    crop: Box | None,
    *,
    max_side: int | None,
    memory_budget: int | None,
    scheduler_config: dict[str, Any],
    guidance_rows: bool,
    timesteps: Callable[[Any], torch.Tensor],
) -> Plan:
    """Everything decided before a network runs, for a processing ``size`` (and ``crop``) the family
    chose: every refusal that needs no network happens here, so a dry run stops after it.

    ``guidance_rows``: whether classifier-free guidance doubles the denoiser's rows (its memory);
    ``timesteps(scheduler)``: the family's own schedule for ``params.steps`` and ``params.strength``.
    """
    lora_scales = adapter_scales(params.lora, spec.adapters)
    width, height = size
    check_engine_sides(width, height, max_side)
    need = check_request(
        spec.networks, width, height, params.num_images, guidance_rows, memory_budget,
        spec.size_multiple, spec.vae_tile_size,
    )  # fmt: skip
    scheduler = build_scheduler(params.scheduler, scheduler_config)
    steps = timesteps(scheduler)
    if len(steps) == 0:
        raise InvalidInputError(
            "strength",
            f"{params.strength} with steps={params.steps} leaves no denoising step; raise strength or steps",
        )
    cache = plan_cache(
        params.cache, spec.architecture, len(steps), spec.deep_cache_branches, spec.first_block_cache
    )
    if cache is not None:  # the cached feature or residuals each row keeps between steps
        rows = params.num_images * (2 if guidance_rows else 1)
        need = Need(need.bytes + cache_bytes(spec, cache, width, height, rows), need.vae_tile)
    return Plan(width, height, crop, scheduler, steps, need, lora_scales, cache)


def lora_row(plan: Plan, device: torch.device) -> torch.Tensor | None:
    """The request's adapter weights as one ``lora_scales`` row (1, adapters); None for a model
    exported without adapters."""
    if not plan.lora_scales:
        return None
    return torch.tensor([plan.lora_scales], dtype=torch.float32, device=device)


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str, length: int | None = None) -> torch.Tensor:
    """(1, length) ids, padded and truncated as the diffusers pipelines tokenize prompts; the length
    defaults to the tokenizer's own maximum (77 for CLIP)."""
    return tokenizer(
        [text],
        padding="max_length",
        max_length=length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
