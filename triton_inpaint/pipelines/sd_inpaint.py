"""Stable Diffusion (1.5/2 and SDXL) inpainting, step for step as diffusers does it.

Two kinds of UNet: 9-channel inpainting checkpoints take the mask and the masked image's latents
concatenated to their input; 4-channel base checkpoints inpaint by replacing the known region with the
original latents, noised to the next timestep, after every step (the soft mask blended in latent
space). SDXL adds a second text encoder, pooled embeddings and size/crop time ids as UNet conditions.

This mirrors ``diffusers.StableDiffusionInpaintPipeline.__call__`` (and its SDXL sibling) so they can
be read side by side: encode prompt, prepare timesteps, prepare image and mask, prepare latents,
prepare mask latents, denoise, decode. Random numbers come from one seeded ``torch.Generator`` per
image, drawn in the pipeline's order (init-image encode when strength < 1 or for base UNets, initial
noise, masked-image encode, per-step noise), which is what makes the same seed give the same image as
diffusers. The networks are reached only through
:class:`~triton_inpaint.networks.runners.SDComponents`, so the same code runs in Triton (BLS calls) and in
tests (onnxruntime or torch).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTokenizer

from triton_inpaint.api.imaging import Box, mask_to_pil
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.roles import LORA_SCALES, UNET
from triton_inpaint.masks.shaping import mask_bounds
from triton_inpaint.networks.runners import TEXT_ENCODER, TEXT_ENCODER_2, SDComponents
from triton_inpaint.pipelines import vae_tiling
from triton_inpaint.pipelines.batching import run_alone
from triton_inpaint.pipelines.planning import Plan, lora_row, processing_size, token_ids
from triton_inpaint.pipelines.planning import plan as make_plan
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.pipelines.steps import soft_inpainting
from triton_inpaint.pipelines.steps.job import DenoisingJob, LoopState
from triton_inpaint.pipelines.steps.soft_inpainting import SoftInpainting
from triton_inpaint.pipelines.steps.step_cache import start_cache


def crop_region(mask: np.ndarray, width: int, height: int, pad: int) -> Box:
    """Where ``mask_margin`` crops: diffusers' ``get_crop_region`` for the same mask, size and padding.

    An empty mask (nothing to regenerate) crops the whole image; diffusers divides by zero there.
    """
    if mask_bounds(mask, pad) is None:
        return 0, 0, mask.shape[1], mask.shape[0]
    x1, y1, x2, y2 = VaeImageProcessor.get_crop_region(mask_to_pil(mask), width, height, pad=pad)
    return int(x1), int(y1), int(x2), int(y2)


class SDInpaintPipeline:
    """One checkpoint's inpainting loop; holds no per-request state, so one instance serves all."""

    def __init__(
        self,
        components: SDComponents,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict[str, Any],
        spec: PipelineSpec,
        tokenizer_2: CLIPTokenizer | None = None,
    ) -> None:
        if spec.denoiser_in_channels not in (4, 9):
            raise ValueError(
                f"this pipeline serves 4-channel (base) and 9-channel (inpainting) UNets; "
                f"the checkpoint has {spec.denoiser_in_channels}"
            )
        self.components = components
        # Where latents and embeddings live: the components' device (a GPU runtime's), else the CPU.
        # Random draws stay on CPU generators and are moved, as diffusers' randn_tensor does.
        self.device = torch.device(getattr(components, "device", "cpu"))
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        if spec.sdxl and tokenizer_2 is None:
            raise ValueError("an SDXL checkpoint needs its second tokenizer")
        self.scheduler_config = dict(scheduler_config)
        self.spec = spec
        self.memory_budget: int | None = None  # bytes the networks' work may use; None: unchecked
        self.max_side: int | None = None  # the largest side TensorRT engines cover; None: no limit
        self.image_processor = VaeImageProcessor(vae_scale_factor=spec.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=spec.vae_scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
        # Soft inpainting keeps the mask's grey levels (resized and cropped as the binary one).
        self.soft_mask_processor = VaeImageProcessor(
            vae_scale_factor=spec.vae_scale_factor, do_normalize=False, do_convert_grayscale=True
        )

    @property
    def blends_latents(self) -> bool:
        """True for base (4-channel) UNets, which inpaint by latent blending."""
        return self.spec.denoiser_in_channels == 4

    @classmethod
    def from_directory(cls, directory: Path, components: SDComponents) -> SDInpaintPipeline:
        """Load tokenizer, scheduler config and spec from an exported denoise model directory."""
        tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        tokenizer_2 = None
        if (directory / "tokenizer_2").is_dir():
            tokenizer_2 = CLIPTokenizer.from_pretrained(directory / "tokenizer_2")
        scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        return cls(components, tokenizer, scheduler_config, PipelineSpec.load(directory), tokenizer_2)

    # -- steps, named after diffusers' ---------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str,
        negative_prompt: str | None,
        do_cfg: bool,
        num_images: int,
        lora: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text states for the UNet and, for SDXL, the pooled embeddings; the unconditional half first
        when guiding, so both halves go through the UNet in one batched call per step as in diffusers.
        ``lora``: the adapters' weights (1, adapters), for text encoders exported with adapters."""
        if self.spec.sdxl:
            return self._encode_prompt_sdxl(prompt, negative_prompt, do_cfg, num_images, lora)

        def embed(text: str) -> torch.Tensor:
            ids = token_ids(self.tokenizer, text)
            return self.components.encode_text(ids, TEXT_ENCODER, lora)[0].repeat(num_images, 1, 1)

        prompt_embeds = embed(prompt)
        if not do_cfg:
            return prompt_embeds, None
        return torch.cat([embed(negative_prompt or ""), prompt_embeds]), None

    def _encode_prompt_sdxl(
        self,
        prompt: str,
        negative_prompt: str | None,
        do_cfg: bool,
        num_images: int,
        lora: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def embed(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            (states_1,) = self.components.encode_text(token_ids(self.tokenizer, text), TEXT_ENCODER, lora)
            states_2, pooled = self.components.encode_text(
                token_ids(self.tokenizer_2, text), TEXT_ENCODER_2, lora
            )
            return torch.cat([states_1, states_2], dim=-1), pooled

        prompt_embeds, pooled = embed(prompt)
        if do_cfg:
            # Without a negative prompt, SDXL checkpoints guide away from zeros, not from the empty text.
            if negative_prompt is None and self.spec.force_zeros_for_empty_prompt:
                negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
            else:
                negative_embeds, negative_pooled = embed(negative_prompt or "")
            prompt_embeds = torch.cat(
                [negative_embeds.repeat(num_images, 1, 1), prompt_embeds.repeat(num_images, 1, 1)]
            )
            pooled = torch.cat([negative_pooled.repeat(num_images, 1), pooled.repeat(num_images, 1)])
            return prompt_embeds, pooled
        return prompt_embeds.repeat(num_images, 1, 1), pooled.repeat(num_images, 1)

    def time_ids(self, width: int, height: int, batch: int, do_cfg: bool) -> torch.Tensor:
        """SDXL's size conditioning: original size, crop top-left, target size (or aesthetic score)."""
        if self.spec.requires_aesthetics_score:
            positive, negative = [height, width, 0, 0, 6.0], [height, width, 0, 0, 2.5]
        else:
            positive = negative = [height, width, 0, 0, height, width]
        ids = torch.tensor([positive], dtype=torch.float32, device=self.device).repeat(batch, 1)
        if not do_cfg:
            return ids
        negative_ids = torch.tensor([negative], dtype=torch.float32, device=self.device)
        return torch.cat([negative_ids.repeat(batch, 1), ids])

    @staticmethod
    def prepare_timesteps(
        scheduler: Any, steps: int, strength: float, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        scheduler.set_timesteps(steps, device=device)
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps

    def prepare_image_and_mask(
        self, image: np.ndarray, mask: np.ndarray, width: int, height: int, crop: Box | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # With a crop, diffusers crops first and resizes with "fill" (keep aspect, fill the borders).
        resize_mode = "default" if crop is None else "fill"
        pil_image = Image.fromarray(image, mode="RGB")
        init_image = self.image_processor.preprocess(
            pil_image, height=height, width=width, crops_coords=crop, resize_mode=resize_mode
        ).to(torch.float32)
        mask_condition = self.mask_processor.preprocess(
            mask_to_pil(mask), height=height, width=width, crops_coords=crop, resize_mode=resize_mode
        )
        return init_image.to(self.device), mask_condition.to(self.device)

    def _encode_vae_image(
        self, image: torch.Tensor, generators: list[torch.Generator], vae_tile: int | None = None
    ) -> torch.Tensor:
        """Encode once (in tiles of ``vae_tile`` pixels when given), then sample one latent per
        generator: each image's random stream is exactly that of a single-image diffusers call with its
        own seed."""
        parameters = self._vae_parameters(image, vae_tile).repeat(len(generators), 1, 1, 1)
        latents = DiagonalGaussianDistribution(parameters).sample(generators)
        return self.spec.vae_scaling_factor * latents

    def _vae_parameters(self, image: torch.Tensor, vae_tile: int | None) -> torch.Tensor:
        components = self.components
        return vae_tiling.encode(
            components.encode_image, components.decode_latents, image, vae_tile, self.spec.vae_scale_factor
        )

    def soft_change_map(self, mask: np.ndarray, width: int, height: int, crop: Box | None) -> torch.Tensor:
        """Soft inpainting's change map at the latents' size: the mask as the request shaped it
        (feathered by mask_blur), cropped and resized as the binary mask is, grey levels kept."""
        resize_mode = "default" if crop is None else "fill"
        soft = self.soft_mask_processor.preprocess(
            mask_to_pil(mask), height=height, width=width, crops_coords=crop, resize_mode=resize_mode
        ).to(device=self.device, dtype=torch.float32)
        scale = self.spec.vae_scale_factor
        return soft_inpainting.change_map(soft, height // scale, width // scale)

    def image_latents_mean(self, init_image: torch.Tensor, vae_tile: int | None = None) -> torch.Tensor:
        """The image's latents without a random draw (the distribution's mean): what soft inpainting
        holds pixels to where diffusers encodes no image latents (inpainting UNets at strength 1), so
        the request's random stream stays diffusers'."""
        parameters = self._vae_parameters(init_image, vae_tile)
        return self.spec.vae_scaling_factor * DiagonalGaussianDistribution(parameters).mode()

    def prepare_latents(
        self,
        scheduler: Any,
        init_image: torch.Tensor,
        latent_timestep: torch.Tensor,
        is_strength_max: bool,
        generators: list[torch.Generator],
        vae_tile: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Initial latents, the noise drawn, and the image latents (needed at strength < 1, and at every
        step for base UNets)."""
        _, _, height, width = init_image.shape
        shape = (
            len(generators),
            self.spec.latent_channels,
            height // self.spec.vae_scale_factor,
            width // self.spec.vae_scale_factor,
        )
        image_latents = None
        if self.blends_latents or not is_strength_max:
            image_latents = self._encode_vae_image(init_image, generators, vae_tile)
        noise = randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)
        if is_strength_max:
            return noise * scheduler.init_noise_sigma, noise, image_latents
        latents = scheduler.add_noise(image_latents, noise, latent_timestep.repeat(len(generators)))
        return latents, noise, image_latents

    def prepare_mask_latents(
        self,
        init_image: torch.Tensor,
        mask_condition: torch.Tensor,
        generators: list[torch.Generator],
        do_cfg: bool,
        vae_tile: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, height, width = init_image.shape
        masked_image = init_image * (mask_condition < 0.5)
        mask = torch.nn.functional.interpolate(
            mask_condition, size=(height // self.spec.vae_scale_factor, width // self.spec.vae_scale_factor)
        )
        if self.blends_latents:
            # A base UNet never sees the masked image, but diffusers still encodes it, which draws one
            # latent-sized sample from each generator. Draw the same numbers without the VAE call so
            # the per-step noise that follows stays identical.
            latent_shape = (len(generators), self.spec.latent_channels, *mask.shape[2:])
            masked_image_latents = randn_tensor(
                latent_shape, generator=generators, device=self.device, dtype=torch.float32
            )
        else:
            masked_image_latents = self._encode_vae_image(masked_image, generators, vae_tile)
        mask = mask.repeat(len(generators), 1, 1, 1)
        if do_cfg:
            mask = torch.cat([mask] * 2)
            masked_image_latents = torch.cat([masked_image_latents] * 2)
        return mask, masked_image_latents

    def decode(self, latents: torch.Tensor, vae_tile: int | None = None) -> np.ndarray:
        components = self.components
        image = vae_tiling.decode(
            components.encode_image, components.decode_latents, latents / self.spec.vae_scaling_factor,
            vae_tile, self.spec.vae_scale_factor,
        )  # fmt: skip
        images = self.image_processor.postprocess(image, output_type="np")
        return (images * 255).round().astype(np.uint8)

    # -- the whole request ---------------------------------------------------------------------------

    def geometry(self, mask: np.ndarray, params: DenoiseParams) -> tuple[int, int, Box | None]:
        """Processing (width, height) and, with ``mask_margin``, the crop box in the input image.

        With a margin and no explicit size, the size follows the aspect of the mask's padded bounding
        box, and the crop is then widened to that size's aspect exactly as diffusers does.
        """
        image_height, image_width = mask.shape
        if params.mask_margin is None:
            width, height = processing_size(image_width, image_height, self.spec.native_resolution, params)
            return width, height, None
        bounds = mask_bounds(mask, params.mask_margin) or (0, 0, image_width, image_height)
        width, height = processing_size(
            bounds[2] - bounds[0], bounds[3] - bounds[1], self.spec.native_resolution, params
        )
        return width, height, crop_region(mask, width, height, params.mask_margin)

    def plan(self, mask: np.ndarray, params: DenoiseParams) -> Plan:
        """Everything decided before a network runs: size, crop, memory, scheduler, timesteps. Every
        refusal that needs no network happens here, so a dry run (``dry_run``) stops after it."""
        width, height, crop = self.geometry(mask, params)
        return make_plan(
            self.spec, params, (width, height), crop,
            max_side=self.max_side, memory_budget=self.memory_budget,
            scheduler_config=self.scheduler_config, guidance_rows=params.guidance_scale > 1.0,
            timesteps=lambda scheduler: self.prepare_timesteps(
                scheduler, params.steps, params.strength, self.device
            ),
        )  # fmt: skip

    def start(
        self, image: np.ndarray, mask: np.ndarray, params: DenoiseParams, plan: Plan | None = None
    ) -> SDJob:
        """Everything before the denoising loop: plan, encode the prompt, prepare image, mask and
        latents. The returned job takes the loop's steps (alone or batched with other requests).

        ``image`` is (H, W, 3) uint8, ``mask`` (H, W) in [0, 1], set where the image is regenerated.
        """
        plan = plan or self.plan(mask, params)
        width, height, crop, scheduler, timesteps = (
            plan.width, plan.height, plan.crop, plan.scheduler, plan.timesteps
        )  # fmt: skip
        do_cfg = params.guidance_scale > 1.0
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in params.seeds]
        lora = lora_row(plan, self.device)
        prompt_embeds, pooled = self.encode_prompt(
            params.prompt, params.negative_prompt, do_cfg, params.num_images, lora
        )
        conditions = {"encoder_hidden_states": prompt_embeds}
        if lora is not None and UNET in self.spec.lora_roles:
            conditions[LORA_SCALES] = lora.repeat(len(prompt_embeds), 1)
        if self.spec.sdxl:
            conditions["text_embeds"] = pooled
            conditions["time_ids"] = self.time_ids(width, height, params.num_images, do_cfg)
        init_image, mask_condition = self.prepare_image_and_mask(image, mask, width, height, crop)
        tile = plan.need.vae_tile
        latents, noise, image_latents = self.prepare_latents(
            scheduler, init_image, timesteps[:1], params.strength == 1.0, generators, tile
        )
        mask_latents, masked_image_latents = self.prepare_mask_latents(
            init_image, mask_condition, generators, do_cfg, tile
        )
        soft = None
        if params.soft_inpainting:
            soft = SoftInpainting(self.soft_change_map(mask, width, height, crop), len(scheduler.timesteps))
            if image_latents is None:
                image_latents = self.image_latents_mean(init_image, tile).repeat(len(generators), 1, 1, 1)
        state = SDLoopState(
            scheduler=scheduler, timesteps=timesteps, latents=latents, conditions=conditions,
            box=crop if crop is not None else (0, 0, image.shape[1], image.shape[0]), vae_tile=tile,
            soft=soft, cache=start_cache(plan.cache, scheduler, timesteps), mask=mask_latents,
            masked_image_latents=masked_image_latents, guidance_scale=params.guidance_scale,
            generators=generators, noise=noise, image_latents=image_latents,
        )  # fmt: skip
        return SDJob(self, state)

    def __call__(self, image: np.ndarray, mask: np.ndarray, params: DenoiseParams) -> tuple[np.ndarray, Box]:
        """Inpaint ``image`` (H, W, 3 uint8) where ``mask`` (H, W in [0, 1]) is set.

        Returns the generated images at the processing size, (n, h, w, 3) uint8 before compositing,
        and the box of the input they belong to (the whole image unless ``mask_margin`` cropped).
        """
        return run_alone(self.start(image, mask, params))


@dataclass(kw_only=True)
class SDLoopState(LoopState):
    """A Stable Diffusion request's loop: the latent mask and masked-image latents (the inpainting
    UNet's extra input channels; the base UNet's blend mask), guidance, the generators the scheduler
    draws from, and the noise and image latents blending and soft inpainting noise again."""

    mask: torch.Tensor
    masked_image_latents: torch.Tensor
    guidance_scale: float
    generators: list[torch.Generator]
    noise: torch.Tensor | None
    image_latents: torch.Tensor | None


class SDJob(DenoisingJob):
    """One request's denoising loop, a step at a time (see :mod:`triton_inpaint.pipelines.steps.job`)."""

    denoiser = UNET

    def __init__(self, pipeline: SDInpaintPipeline, state: SDLoopState) -> None:
        super().__init__(pipeline, state)
        self.denoised = state.latents  # the clean estimate a progress preview shows (see advance)
        self.mask = state.mask
        self.masked_image_latents = state.masked_image_latents
        self.guidance_scale = state.guidance_scale
        self.noise = state.noise
        self.image_latents = state.image_latents
        self.do_cfg = self.conditions["encoder_hidden_states"].shape[0] == 2 * self.latents.shape[0]
        self.step_kwargs: dict[str, Any] = {}
        step_parameters = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" in step_parameters:
            self.step_kwargs["eta"] = 0.0
        if "generator" in step_parameters:
            self.step_kwargs["generator"] = state.generators

    def denoiser_inputs(self) -> dict[str, torch.Tensor]:
        t = self.timesteps[self.index]
        latent_model_input = torch.cat([self.latents] * 2) if self.do_cfg else self.latents
        latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
        if not self.pipeline.blends_latents:
            latent_model_input = torch.cat([latent_model_input, self.mask, self.masked_image_latents], dim=1)
        rows = latent_model_input.shape[0]
        timestep = torch.full((rows, 1), float(t), dtype=torch.float32, device=latent_model_input.device)
        return {"sample": latent_model_input, "timestep": timestep, **self.conditions}

    def advance(self, prediction: torch.Tensor) -> None:
        t = self.timesteps[self.index]
        noise_pred = prediction
        if self.do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
        stepped = self.scheduler.step(noise_pred, t, self.latents, **self.step_kwargs, return_dict=False)
        latents = stepped[0]
        # The scheduler's estimate of the clean latents where it gives one (DDIM, Euler, LMS...): what a
        # preview shows; otherwise the latents themselves.
        self.denoised = stepped[1] if len(stepped) > 1 and stepped[1] is not None else latents
        if self.soft is not None:
            # Soft inpainting, either UNet: before the next step, the pixels it still holds are the
            # original noised to that step's timestep (none after the last step).
            following = self.index + 1
            if following < len(self.timesteps):
                t = self.timesteps[following : following + 1]
                original = self.scheduler.add_noise(self.image_latents, self.noise, t)
                held = self.soft.held(following)
                latents = original * held + latents * (1 - held)
        elif self.pipeline.blends_latents:
            # Base UNets: the known region is the original, noised to the next timestep.
            init_latents_proper = self.image_latents
            if self.index < len(self.timesteps) - 1:
                next_t = self.timesteps[self.index + 1 : self.index + 2]
                init_latents_proper = self.scheduler.add_noise(self.image_latents, self.noise, next_t)
            init_mask = self.mask[: latents.shape[0]]
            latents = (1 - init_mask) * init_latents_proper + init_mask * latents
        self.latents = latents

    def preview_latents(self) -> torch.Tensor:
        """The latents a progress preview shows: the clean estimate after the last step taken."""
        return self.denoised

    def finish(self) -> tuple[np.ndarray, Box]:
        return self.pipeline.decode(self.latents, self.vae_tile), self.box
