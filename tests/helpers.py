"""Test images, masks and codecs shared by the tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def make_image(width: int = 160, height: int = 96, seed: int = 0) -> np.ndarray:
    """A structured image (gradients plus noise), so VAE round trips and resizes are not trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def irregular_mask(width: int = 160, height: int = 96) -> np.ndarray:
    """A non-convex polygon plus a separate ellipse: 0 or 255."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(
        [
            (0.2 * width, 0.15 * height),
            (0.55 * width, 0.3 * height),
            (0.45 * width, 0.85 * height),
            (0.3 * width, 0.5 * height),
            (0.1 * width, 0.7 * height),
        ],
        fill=255,
    )
    draw.ellipse([0.65 * width, 0.2 * height, 0.9 * width, 0.6 * height], fill=255)
    return np.asarray(mask)


def diffusers_inpaint(
    pipe,
    scheduler_config: dict,
    image: np.ndarray,
    mask: np.ndarray,
    prompt: str,
    scheduler: str,
    *,
    steps: int,
    strength: float,
    guidance: float,
    seed: int,
    **kwargs,
) -> np.ndarray:
    """The reference: a diffusers inpainting pipeline with a scheduler swapped in from the checkpoint's
    saved config (as the server does), one seeded generator, at the image's size unless told otherwise."""
    import torch

    from triton_inpaint.pipelines.schedulers import build_scheduler

    pipe.scheduler = build_scheduler(scheduler, scheduler_config)
    kwargs.setdefault("width", image.shape[1])
    kwargs.setdefault("height", image.shape[0])
    result = pipe(
        prompt=prompt,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        num_inference_steps=steps,
        strength=strength,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ).images[0]
    return np.asarray(result)


def diffusers_soft_inpaint(
    pipe,
    scheduler_config: dict,
    image: np.ndarray,
    mask: np.ndarray,
    prompt: str,
    scheduler: str,
    *,
    steps: int,
    strength: float,
    guidance: float,
    seed: int,
) -> np.ndarray:
    """The soft inpainting reference: diffusers' own inpainting pipeline, its loop untouched, with
    differential diffusion's per-step rule applied through the pipeline's ``callback_on_step_end``
    hook (diffusers ships the rule only as community example code, which no installed package holds):
    after step i, the pixels still held before step i+1 (``1 - c > (i+1) / steps``, c the mask's grey
    level at the latents' size) are the image's latents noised to step i+1's timestep.

    The image latents and noise are drawn again, in the pipeline's order, from a second generator with
    the same seed (the pipeline keeps its own to itself); an inpainting UNet at strength 1 draws no
    image latents, so the distribution's mean stands for them. A base UNet's own blend is switched off
    by an all-white ``mask_image`` (it conditions nothing); an inpainting UNet gets the soft mask, which
    the pipeline binarises for its conditioning as always."""
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor

    from triton_inpaint.pipelines.steps.soft_inpainting import change_map

    height, width = mask.shape
    base = pipe.unet.config.in_channels == 4
    scale = pipe.vae_scale_factor
    replay = torch.Generator().manual_seed(seed)
    init_image = pipe.image_processor.preprocess(Image.fromarray(image), height=height, width=width).float()
    distribution = pipe.vae.encode(init_image).latent_dist
    drawn = base or strength < 1.0
    image_latents = distribution.sample(replay) if drawn else distribution.mode()
    image_latents = image_latents * pipe.vae.config.scaling_factor
    noise = randn_tensor(image_latents.shape, generator=replay, dtype=torch.float32)
    grey = VaeImageProcessor(vae_scale_factor=scale, do_normalize=False, do_convert_grayscale=True)
    soft = grey.preprocess(Image.fromarray(mask), height=height, width=width)
    change = change_map(soft, height // scale, width // scale)
    # diffusers' get_timesteps: the schedule is cut at int(steps * strength) steps.
    first = max(steps - min(int(steps * strength), steps), 0)
    hold = differential_diffusion_hook(
        first, change, lambda pipeline, t: pipeline.scheduler.add_noise(image_latents, noise, t)
    )
    mask_image = np.full_like(mask, 255) if base else mask
    return diffusers_inpaint(
        pipe, scheduler_config, image, mask_image, prompt, scheduler, steps=steps, strength=strength,
        guidance=guidance, seed=seed, callback_on_step_end=hold,
        callback_on_step_end_tensor_inputs=["latents"],
    )  # fmt: skip


def differential_diffusion_hook(first_step: int, change, original_at):
    """A ``callback_on_step_end`` applying differential diffusion's rule to a diffusers pipeline run:
    after step i, the positions still held before step i+1 (``held(change, i+1, all steps)``) take
    ``original_at(pipeline, t)``, the image latents brought to step i+1's timestep ``t``; nothing after
    the last step. ``first_step``: where the pipeline's strength cut the schedule."""
    from triton_inpaint.pipelines.steps.soft_inpainting import held

    run = {}

    def hold(pipeline, i, t, tensors):
        if not run:  # the schedule this call runs
            full = pipeline.scheduler.timesteps
            run.update(timesteps=full[first_step * pipeline.scheduler.order :], total=len(full))
        following = i + 1
        if following >= len(run["timesteps"]):
            return {}
        original = original_at(pipeline, run["timesteps"][following : following + 1])
        keep = held(change, following, run["total"])
        return {"latents": original * keep + tensors["latents"] * (1 - keep)}

    return hold


def assert_served_parity(
    label: str, served: np.ndarray, want: np.ndarray, mask: np.ndarray, image: np.ndarray, tolerance: int = 3
) -> None:
    """Inside the (binary) mask within ``tolerance``/255 of the reference; outside, the input exactly."""
    inside = mask == 255
    diff = np.abs(served.astype(int) - want.astype(int))[inside]
    print(f"{label}: inside the mask max {diff.max()}/255, mean {diff.mean():.4f}/255")
    assert diff.max() <= tolerance
    assert np.array_equal(served[~inside], image[~inside]), "pixels outside the mask must be the input's"


def diffusers_first_block_cache(pipe, threshold: float, run):
    """``run()`` (a FluxFillPipeline call) with diffusers' first-block cache at ``threshold`` on its
    transformer: ``enable_cache(FirstBlockCacheConfig)``, and each transformer call in the cache context
    FluxPipeline opens itself and FluxFillPipeline does not (without one the hooks raise)."""
    from diffusers.hooks import FirstBlockCacheConfig

    transformer = pipe.transformer
    forward = transformer.forward

    def in_context(*args, **kwargs):
        with transformer.cache_context("cond"):
            return forward(*args, **kwargs)

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    transformer.forward = in_context
    try:
        return run()
    finally:
        del transformer.forward
        transformer.disable_cache()


def diffusers_deep_cache(pipe, interval: int, branch: int, run):
    """``run()`` (a diffusers SD/SDXL pipeline call) with the reference DeepCache, the PyPI
    ``DeepCache`` package's ``DeepCacheSDHelper``, enabled on ``pipe`` at ``interval`` and ``branch``."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return run()
    finally:
        helper.disable()
