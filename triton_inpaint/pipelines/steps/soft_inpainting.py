"""Soft inpainting: differential diffusion's per-step masks (Levin & Fried, "Differential Diffusion:
Giving Each Pixel Its Strength", 2024; diffusers' community ``*_differential_img2img`` pipelines).

A mask value c in [0, 1] is how much a pixel may change. Before step i of a schedule of ``total``
steps, every pixel whose ``1 - c`` exceeds ``i / total`` is put back to the original image's latents
noised to that step's timestep, so a pixel with c = 0.3 follows the original for the first 70 % of
the steps and is free for the last 30 %: grey mask values act per step (a soft seam is regenerated
softly), not only in the final blend. Written here because diffusers ships it only as community
example code, which is not part of the installed package.
"""

from __future__ import annotations

import torch


def change_map(soft_mask: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """The soft mask (N, 1, H, W in [0, 1], at the processing size) at the latents' size: bilinear
    with antialiasing, so a feathered edge keeps its grey levels (the binary mask's nearest-neighbour
    resize would undo them)."""
    return torch.nn.functional.interpolate(
        soft_mask, size=(latent_height, latent_width), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0.0, 1.0)


def held(change: torch.Tensor, index: int, total: int) -> torch.Tensor:
    """1 where a pixel still follows the original before step ``index`` of ``total``, 0 where it is
    free; the same dtype as ``change``."""
    return ((1.0 - change) > index / total).to(change.dtype)


class SoftInpainting:
    """A request's change map, shaped as its latents, and the length of its whole schedule: the
    thresholds run over every step asked (as diffusers' community pipelines count them), indexed from
    the first step run, so below strength 1 some pixels are free from the start."""

    def __init__(self, change: torch.Tensor, total: int) -> None:
        self.change = change
        self.total = total

    def held(self, index: int) -> torch.Tensor:
        return held(self.change, index, self.total)
