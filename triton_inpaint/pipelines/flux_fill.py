"""FLUX Fill inpainting, step for step as ``diffusers.FluxFillPipeline`` does it.

FLUX Fill differs from Stable Diffusion in every stage: the prompt goes through CLIP (pooled output
only) and T5 (the sequence); latents are packed into 2x2 patches, a sequence the transformer reads
together with the packed masked-image latents and the mask itself (each 8x8 pixel block of the mask
folded into 64 channels); guidance is a number embedded into the transformer (no unconditional batch,
so guidance up to 50 costs nothing extra); the schedule is flow matching with a resolution-dependent
shift. The packing, position ids and shift come from diffusers itself (the pipeline's static methods
and ``calculate_shift``), so only the orchestration is ours.

Random numbers come from one seeded ``torch.Generator`` per image, drawn in the pipeline's order
(init-image encode, initial noise, masked-image encode), which makes the same seed give the same
image as a single-image diffusers call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FluxFillPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTokenizer, PreTrainedTokenizerBase, T5TokenizerFast

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import Box, mask_to_pil
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.roles import LORA_SCALES
from triton_inpaint.networks.runners import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, FluxComponents
from triton_inpaint.pipelines import vae_tiling
from triton_inpaint.pipelines.batching import run_alone
from triton_inpaint.pipelines.planning import Plan, lora_row, processing_size, token_ids
from triton_inpaint.pipelines.planning import plan as make_plan
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.pipelines.steps import soft_inpainting
from triton_inpaint.pipelines.steps.job import DenoisingJob, LoopState
from triton_inpaint.pipelines.steps.soft_inpainting import SoftInpainting
from triton_inpaint.pipelines.steps.step_cache import start_cache


class FluxFillInpaintPipeline:
    """One FLUX Fill checkpoint's loop; holds no per-request state, so one instance serves all."""

    def __init__(
        self,
        components: FluxComponents,
        tokenizer: CLIPTokenizer,
        tokenizer_2: PreTrainedTokenizerBase,
        scheduler_config: dict[str, Any],
        spec: PipelineSpec,
    ) -> None:
        if not spec.flux:
            raise ValueError(f"this pipeline serves FLUX Fill checkpoints; the checkpoint is {spec.family}")
        self.components = components
        self.device = torch.device(getattr(components, "device", "cpu"))  # see SDInpaintPipeline
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.scheduler_config = dict(scheduler_config)
        self.spec = spec
        self.memory_budget: int | None = None  # bytes the networks' work may use; None: unchecked
        self.max_side: int | None = None  # the largest side TensorRT engines cover; None: no limit
        # As FluxFillPipeline builds them: sizes snap to the packed-latent multiple, masks binarize.
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=spec.size_multiple, vae_latent_channels=spec.latent_channels
        )
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=spec.size_multiple,
            vae_latent_channels=spec.latent_channels,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
        # Soft inpainting keeps the mask's grey levels (resized as the binary one).
        self.soft_mask_processor = VaeImageProcessor(
            vae_scale_factor=spec.size_multiple,
            vae_latent_channels=spec.latent_channels,
            do_normalize=False,
            do_convert_grayscale=True,
        )

    @classmethod
    def from_directory(cls, directory: Path, components: FluxComponents) -> FluxFillInpaintPipeline:
        """Load tokenizers, scheduler config and spec from an exported denoise model directory."""
        scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        return cls(
            components,
            CLIPTokenizer.from_pretrained(directory / "tokenizer"),
            T5TokenizerFast.from_pretrained(directory / "tokenizer_2"),
            scheduler_config,
            PipelineSpec.load(directory),
        )

    # -- checks: the controls FLUX Fill does not have get a clear error, not silence ----------------

    def check(self, params: DenoiseParams) -> None:
        if params.mask_margin is not None:
            raise InvalidInputError(
                "mask_margin",
                "is not supported by FLUX Fill models (they always see the whole image); leave it out",
            )
        if params.negative_prompt:
            raise InvalidInputError(
                "negative_prompt",
                "is not supported by FLUX Fill models (guidance is embedded, there is no unconditional "
                "pass); leave it out and describe what you want in the prompt",
            )
        multiple = self.spec.size_multiple
        for field in ("width", "height"):
            value = getattr(params, field)
            if value is not None and value % multiple:
                raise InvalidInputError(field, f"must be a multiple of {multiple} for FLUX Fill, got {value}")

    # -- steps, named after diffusers' ---------------------------------------------------------------

    def encode_prompt(
        self, prompt: str, num_images: int, lora: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 states (n, L, D), CLIP pooled (n, D')) for the same prompt (FluxFill's prompt_2 default);
        ``lora``: the adapters' weights (1, adapters), for encoders exported with adapters."""
        clip_ids = token_ids(self.tokenizer, prompt)
        t5_ids = token_ids(self.tokenizer_2, prompt, self.spec.max_sequence_length)
        (pooled,) = self.components.encode_text(clip_ids, TEXT_ENCODER, lora)
        (states,) = self.components.encode_text(t5_ids, TEXT_ENCODER_2, lora)
        return states.repeat(num_images, 1, 1), pooled.repeat(num_images, 1)

    def prepare_timesteps(self, scheduler: Any, steps: int, strength: float, width: int, height: int):
        """The shifted flow-matching schedule, cut by strength as FluxFillPipeline.get_timesteps does
        (a float product here, where the SD pipelines truncate steps * strength to an int first)."""
        sigmas = np.linspace(1.0, 1 / steps, steps)
        factor = self.spec.vae_scale_factor
        image_seq_len = (height // factor // 2) * (width // factor // 2)
        mu = calculate_shift(
            image_seq_len,
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("max_image_seq_len", 4096),
            scheduler.config.get("base_shift", 0.5),
            scheduler.config.get("max_shift", 1.15),
        )
        retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        init_timestep = min(steps * strength, steps)
        t_start = int(max(steps - init_timestep, 0))
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps

    def _encode_vae_image(
        self, image: torch.Tensor, generators: list[torch.Generator], vae_tile: int | None = None
    ) -> torch.Tensor:
        """Encode once (tiled when ``vae_tile``), sample one latent per generator (each exactly a
        single-image call's draw)."""
        components = self.components
        parameters = vae_tiling.encode(
            components.encode_image, components.decode_latents, image, vae_tile, self.spec.vae_scale_factor
        ).repeat(len(generators), 1, 1, 1)
        latents = DiagonalGaussianDistribution(parameters).sample(generators)
        return (latents - self.spec.vae_shift_factor) * self.spec.vae_scaling_factor

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        return FluxFillPipeline._pack_latents(latents, batch, channels, height, width)

    def prepare_latents(
        self,
        scheduler: Any,
        init_image: torch.Tensor,
        timestep: torch.Tensor,
        generators: list[torch.Generator],
        vae_tile: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed initial latents (the image latents moved along the flow to the first timestep), and
        the image latents and noise they were made of (unpacked; soft inpainting moves them again)."""
        image_latents = self._encode_vae_image(init_image, generators, vae_tile)
        noise = randn_tensor(
            image_latents.shape, generator=generators, device=self.device, dtype=torch.float32
        )
        latents = scheduler.scale_noise(image_latents, timestep.repeat(len(generators)), noise)
        return self._pack(latents), image_latents, noise

    def prepare_mask_latents(
        self,
        init_image: torch.Tensor,
        mask: torch.Tensor,
        generators: list[torch.Generator],
        vae_tile: int | None = None,
    ) -> torch.Tensor:
        """The transformer's conditioning: packed masked-image latents, then the packed mask, whose
        every factor x factor pixel block becomes factor^2 channels of one latent position."""
        batch = len(generators)
        factor = self.spec.vae_scale_factor
        masked_latents = self._pack(self._encode_vae_image(init_image * (1 - mask), generators, vae_tile))
        _, _, height, width = init_image.shape
        height, width = height // factor, width // factor
        mask = mask[:, 0].repeat(batch, 1, 1).view(batch, height, factor, width, factor)
        mask = mask.permute(0, 2, 4, 1, 3).reshape(batch, factor * factor, height, width)
        return torch.cat([masked_latents, self._pack(mask)], dim=-1)

    def decode(
        self, latents: torch.Tensor, width: int, height: int, vae_tile: int | None = None
    ) -> np.ndarray:
        latents = FluxFillPipeline._unpack_latents(latents, height, width, self.spec.vae_scale_factor)
        latents = latents / self.spec.vae_scaling_factor + self.spec.vae_shift_factor
        components = self.components
        decoded = vae_tiling.decode(
            components.encode_image, components.decode_latents, latents, vae_tile, self.spec.vae_scale_factor
        )
        images = self.image_processor.postprocess(decoded, output_type="np")
        return (images * 255).round().astype(np.uint8)

    # -- the whole request ---------------------------------------------------------------------------

    def plan(self, mask: np.ndarray, params: DenoiseParams) -> Plan:
        """Everything decided before a network runs (see ``SDInpaintPipeline.plan``)."""
        self.check(params)
        image_height, image_width = mask.shape
        width, height = processing_size(
            image_width, image_height, self.spec.native_resolution, params, self.spec.size_multiple
        )
        return make_plan(
            self.spec, params, (width, height), None,
            max_side=self.max_side, memory_budget=self.memory_budget,
            scheduler_config=self.scheduler_config, guidance_rows=False,  # guidance is in the transformer
            timesteps=lambda scheduler: self.prepare_timesteps(
                scheduler, params.steps, params.strength, width, height
            ),
        )  # fmt: skip

    def start(
        self, image: np.ndarray, mask: np.ndarray, params: DenoiseParams, plan: Plan | None = None
    ) -> FluxJob:
        """Everything before the denoising loop (see ``SDInpaintPipeline.start``)."""
        plan = plan or self.plan(mask, params)
        width, height, scheduler, timesteps = plan.width, plan.height, plan.scheduler, plan.timesteps
        image_height, image_width = mask.shape
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in params.seeds]
        lora = lora_row(plan, self.device)
        states, pooled = self.encode_prompt(params.prompt, params.num_images, lora)
        init_image = self.image_processor.preprocess(
            Image.fromarray(image, mode="RGB"), height=height, width=width
        ).to(device=self.device, dtype=torch.float32)
        mask_image = self.mask_processor.preprocess(mask_to_pil(mask), height=height, width=width)
        mask_image = mask_image.to(self.device)
        tile = plan.need.vae_tile
        latents, image_latents, noise = self.prepare_latents(
            scheduler, init_image, timesteps[:1], generators, tile
        )
        condition = self.prepare_mask_latents(init_image, mask_image, generators, tile)
        factor = self.spec.vae_scale_factor
        batch = latents.shape[0]
        soft = None
        if params.soft_inpainting:
            # The change map at the latents' size, packed as they are (each position's 2 x 2 block).
            grey = self.soft_mask_processor.preprocess(mask_to_pil(mask), height=height, width=width)
            change = soft_inpainting.change_map(grey.to(self.device), height // factor, width // factor)
            packed = self._pack(change.expand(batch, self.spec.latent_channels, -1, -1).contiguous())
            soft = SoftInpainting(packed, len(scheduler.timesteps))
        image_ids = FluxFillPipeline._prepare_latent_image_ids(
            batch, height // factor // 2, width // factor // 2, self.device, torch.float32
        )
        conditions = {
            "guidance": torch.full(
                (batch, 1), params.guidance_scale, dtype=torch.float32, device=self.device
            ),
            "pooled_projections": pooled,
            "encoder_hidden_states": states,
            "txt_ids": torch.zeros(batch, states.shape[1], 3, device=self.device),
            "img_ids": image_ids.unsqueeze(0).repeat(batch, 1, 1),
        }
        if lora is not None and TRANSFORMER in self.spec.lora_roles:
            conditions[LORA_SCALES] = lora.repeat(batch, 1)
        state = FluxLoopState(
            scheduler=scheduler, timesteps=timesteps, latents=latents, conditions=conditions,
            box=(0, 0, image_width, image_height), vae_tile=tile, soft=soft,
            cache=start_cache(plan.cache, scheduler, timesteps), condition=condition, width=width,
            height=height, image_latents=image_latents, noise=noise,
        )  # fmt: skip
        return FluxJob(self, state)

    def __call__(self, image: np.ndarray, mask: np.ndarray, params: DenoiseParams) -> tuple[np.ndarray, Box]:
        """Inpaint ``image`` (H, W, 3 uint8) where ``mask`` (H, W in [0, 1]) is set.

        Returns the generated images at the processing size, (n, h, w, 3) uint8 before compositing,
        and the box of the input they belong to (always the whole image: FLUX Fill takes no margin).
        """
        return run_alone(self.start(image, mask, params))


@dataclass(kw_only=True)
class FluxLoopState(LoopState):
    """A FLUX Fill request's loop: the packed masked-image latents and mask (the transformer's extra
    input), the processing size (to unpack), and the image latents and noise soft inpainting moves
    along the flow again (unpacked)."""

    condition: torch.Tensor
    width: int
    height: int
    image_latents: torch.Tensor
    noise: torch.Tensor


class FluxJob(DenoisingJob):
    """One FLUX Fill request's loop, a step at a time (see :mod:`triton_inpaint.pipelines.steps.job`)."""

    denoiser = TRANSFORMER

    def __init__(self, pipeline: FluxFillInpaintPipeline, state: FluxLoopState) -> None:
        super().__init__(pipeline, state)
        # The last step's noisy latents, velocity and sigma: its clean estimate, for progress previews.
        self.noisy: torch.Tensor | None = None
        self.velocity: torch.Tensor | None = None
        self.sigma = 0.0
        self.condition = state.condition
        self.width = state.width
        self.height = state.height
        self.image_latents = state.image_latents
        self.noise = state.noise

    def denoiser_inputs(self) -> dict[str, torch.Tensor]:
        t = self.timesteps[self.index]
        batch = self.latents.shape[0]
        return {
            "hidden_states": torch.cat([self.latents, self.condition], dim=2),
            # As diffusers computes it (float32 division), to the last bit.
            "timestep": (t.expand(batch).to(torch.float32) / 1000).reshape(batch, 1),
            **self.conditions,
        }

    def advance(self, prediction: torch.Tensor) -> None:
        t = self.timesteps[self.index]
        noisy = self.latents
        self.latents = self.scheduler.step(prediction, t, noisy, return_dict=False)[0]
        # Flow matching: the clean estimate is x_t - sigma_t * v (what a progress preview shows).
        self.sigma = float(self.scheduler.sigmas[self.scheduler.step_index - 1])
        self.velocity, self.noisy = prediction, noisy
        following = self.index + 1
        if self.soft is not None and following < len(self.timesteps):
            # Soft inpainting: the pixels still held before the next step are the image latents moved
            # along the flow to that step's timestep (FLUX Fill itself never blends).
            t = self.timesteps[following : following + 1].repeat(self.image_latents.shape[0])
            original = self.pipeline._pack(self.scheduler.scale_noise(self.image_latents, t, self.noise))
            held = self.soft.held(following)
            self.latents = original * held + self.latents * (1 - held)

    def preview_latents(self) -> torch.Tensor:
        """The clean estimate after the last step taken, unpacked to (B, C, h, w)."""
        estimate = self.latents if self.noisy is None else self.noisy - self.sigma * self.velocity
        factor = self.pipeline.spec.vae_scale_factor
        return FluxFillPipeline._unpack_latents(estimate, self.height, self.width, factor)

    def finish(self) -> tuple[np.ndarray, Box]:
        return self.pipeline.decode(self.latents, self.width, self.height, self.vae_tile), self.box
