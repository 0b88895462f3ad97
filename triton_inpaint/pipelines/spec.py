"""What the denoising loop needs to know about a checkpoint besides its networks.

One record for every family, saved as ``pipeline.json`` beside the denoise model, so the BLS model
knows which loop to run (SD 1.5/2, SDXL or FLUX Fill) and what its defaults are without loading torch
modules.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from triton_inpaint.api.roles import network_tensors

SPEC_FILE = "pipeline.json"
FAMILIES = ("sd15-inpaint", "sd15-base", "sdxl-inpaint", "sdxl-base", "flux-fill")
CLIPSEG = "clipseg"  # not a pipeline family: the text-segmentation model behind mask prompts
TINY_MODELS = (*FAMILIES, CLIPSEG)  # what ``export tiny`` builds
# tiny: the test models; small: an SD-1.5-shaped UNet at 256 px (CPU benchmarks); full: the real SD 1.5
# or SDXL architecture with random weights, so GPU timings are honest without downloading weights.
TINY_SIZES = ("tiny", "small", "full")


@dataclass(frozen=True)
class PipelineSpec:
    vae_scale_factor: int
    vae_scaling_factor: float
    latent_channels: int
    denoiser_in_channels: int  # input channels of the denoiser (the UNet, or FLUX's transformer)
    native_resolution: int
    default_steps: int = 20
    default_guidance: float = 7.0
    default_scheduler: str | None = None  # None: the checkpoint's own scheduler
    default_strength: float = 0.8
    # SDXL: two text encoders, pooled embeddings and size/crop time ids as extra UNet conditions.
    sdxl: bool = False
    force_zeros_for_empty_prompt: bool = False
    requires_aesthetics_score: bool = False
    # FLUX Fill: CLIP (pooled) + T5 text encoders, a transformer over packed latents, embedded guidance.
    flux: bool = False
    vae_shift_factor: float = 0.0
    max_sequence_length: int = 512
    # The networks' attention layers and largest feature maps, for the memory estimate
    # (:func:`triton_inpaint.pipelines.memory.network_shapes`); None in exports made before it existed.
    networks: dict[str, Any] | None = None
    # The VAE's own sample size: the tile side diffusers' enable_tiling() uses, and so do we when an
    # untiled VAE call would not fit the memory budget; None in exports made before tiling existed.
    vae_tile_size: int | None = None
    # LoRA adapters exported with the networks (their ids, in the order of the ``lora_scales`` input's
    # columns) and the networks that take that input (see triton_inpaint.networks.lora).
    adapters: tuple[str, ...] = ()
    lora_roles: tuple[str, ...] = ()
    # RGB from denoiser latents, fitted to the VAE (triton_inpaint.pipelines.previews); None: no previews.
    preview_factors: list[list[float]] | None = None
    # Step caching (triton_inpaint.api.acceleration). DeepCache: the branches exported, each as
    # (branch, feature channels, latent pixels per feature pixel) for the memory its cached feature takes.
    # FLUX: whether the transformer's two halves for the first-block cache were exported. Empty/False
    # in exports made before step caching: such a model refuses the cache fields.
    deep_cache_features: tuple[tuple[int, int, int], ...] = ()
    first_block_cache: bool = False
    # Each network's precision as served, by role (triton_inpaint.networks.precision); empty in exports made
    # before it was recorded.
    precisions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_diffusers(cls, pipeline: Any) -> PipelineSpec:
        vae = pipeline.vae.config
        vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
        sample_size = vae.sample_size
        common = {
            "vae_scale_factor": vae_scale_factor,
            "vae_scaling_factor": float(vae.scaling_factor),
            "latent_channels": int(vae.latent_channels),
            "vae_tile_size": int(sample_size[0] if isinstance(sample_size, list | tuple) else sample_size),
        }
        from triton_inpaint.pipelines.memory import network_shapes

        common["networks"] = network_shapes(pipeline)
        if getattr(pipeline, "transformer", None) is not None:
            # FluxFillPipeline's own defaults: 50 steps, guidance 30, strength 1 (the whole mask
            # regenerated); FLUX has no UNet sample size, the VAE's is its native resolution (1024).
            return cls(
                **common,
                denoiser_in_channels=int(pipeline.transformer.config.in_channels),
                native_resolution=int(vae.sample_size),
                default_steps=50,
                default_guidance=30.0,
                default_strength=1.0,
                flux=True,
                vae_shift_factor=float(vae.shift_factor or 0.0),
                # FluxFillPipeline's max_sequence_length (512) unless the T5 tokenizer is shorter.
                max_sequence_length=min(512, int(pipeline.tokenizer_2.model_max_length)),
            )
        sdxl = getattr(pipeline, "text_encoder_2", None) is not None
        return cls(
            **common,
            denoiser_in_channels=int(pipeline.unet.config.in_channels),
            native_resolution=int(pipeline.unet.config.sample_size) * vae_scale_factor,
            default_guidance=5.0 if sdxl else 7.0,
            sdxl=sdxl,
            force_zeros_for_empty_prompt=bool(pipeline.config.get("force_zeros_for_empty_prompt", False)),
            requires_aesthetics_score=bool(pipeline.config.get("requires_aesthetics_score", False)),
        )

    @property
    def architecture(self) -> str:
        """``sd``, ``sdxl`` or ``flux``: which networks the checkpoint has (see ``components``)."""
        return "flux" if self.flux else "sdxl" if self.sdxl else "sd"

    @property
    def family(self) -> str:
        """One of :data:`FAMILIES` (SD 2 counts as sd15)."""
        if self.flux:
            return "flux-fill"
        return f"{'sdxl' if self.sdxl else 'sd15'}-{'inpaint' if self.denoiser_in_channels == 9 else 'base'}"

    @property
    def deep_cache_branches(self) -> tuple[int, ...]:
        return tuple(branch for branch, _, _ in self.deep_cache_features)

    def network_tensors(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Every network this export serves, by role, with its (input names, output names)."""
        return network_tensors(
            self.architecture, self.lora_roles, self.deep_cache_branches, self.first_block_cache
        )

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE's factor, times 2 for FLUX's 2x2
        latent packing."""
        return self.vae_scale_factor * (2 if self.flux else 1)

    def save(self, directory: Path) -> None:
        (directory / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PipelineSpec:
        data = json.loads((directory / SPEC_FILE).read_text())
        if "unet_in_channels" in data:  # the name before FLUX's transformer: repositories exported then
            data["denoiser_in_channels"] = data.pop("unet_in_channels")
        for key in ("adapters", "lora_roles"):
            data[key] = tuple(data.get(key, ()))
        data["deep_cache_features"] = tuple(tuple(item) for item in data.get("deep_cache_features", ()))
        return cls(**data)
