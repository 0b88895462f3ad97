"""Cheap previews of a request's images while it denoises: the current estimate of the clean latents,
projected to RGB by a linear map, instead of a VAE decode per step.

The map is fitted at export to the checkpoint's own VAE (least squares from its latents to the pixels
they encode), so it fits any family and any VAE, including the tiny test ones, where published
per-family factor tables (A1111's "approx cheap", ComfyUI's latent previews) cover only known VAEs.
The preview is a few-percent-of-a-step matrix product on latents a few dozen pixels wide.
"""

from __future__ import annotations

import numpy as np
import torch

PREVIEW_SIDE = 256  # previews are at most this wide and high (JPEG, a few kB)
_FIT_IMAGES = 4
_FIT_LATENT_SIDE = 16


def fit_preview_factors(pipeline: object, seed: int = 0) -> list[list[float]]:
    """(latent channels + 1) x 3 factors: RGB in [-1, 1] from denoiser latents (with a bias row),
    fitted on smooth random colour fields encoded by the pipeline's VAE."""
    vae = pipeline.vae
    config = vae.config
    scale = 2 ** (len(config.block_out_channels) - 1)
    side = _FIT_LATENT_SIDE * scale
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(_FIT_IMAGES, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic").clamp(-1, 1)
    with torch.no_grad():
        latents = vae.encode(images.to(vae.dtype)).latent_dist.mean.float()
    shift = float(getattr(config, "shift_factor", None) or 0.0)
    latents = (latents - shift) * float(config.scaling_factor)  # as the denoiser sees them
    pixels = torch.nn.functional.avg_pool2d(images, scale)  # each latent pixel's own colour
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    targets = pixels.permute(0, 2, 3, 1).reshape(-1, 3)
    factors = torch.linalg.lstsq(inputs.double(), targets.double()).solution
    return [[round(float(v), 6) for v in row] for row in factors]


def preview_images(latents: torch.Tensor, factors: list[list[float]]) -> list[np.ndarray]:
    """(B, C, h, w) denoiser latents -> one (H, W, 3) uint8 preview each, upscaled to fit
    :data:`PREVIEW_SIDE` (nearest: the latent grid is the detail there is)."""
    weights = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    flat = latents.float().permute(0, 2, 3, 1)
    rgb = flat @ weights[:-1] + weights[-1]
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    height, width = rgb.shape[1:3]
    factor = max(1, PREVIEW_SIDE // max(height, width))
    return [np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) for image in rgb]
