"""The VAE in overlapping tiles, exactly as diffusers' ``AutoencoderKL.enable_tiling()`` runs it.

An untiled VAE call's memory grows with the image (4 GB for the SD VAE's decoder at 1024 px on the
CPU), so a large request that does not fit the memory budget is encoded and decoded tile by tile
instead. The tiles are diffusers' own: the VAE's ``sample_size`` on a side (512 px for SD 1.5, 1024 for
SDXL), a quarter overlap, blended linearly. Rather than copy that code, diffusers' methods run here over
our network calls (the exported encoder already includes ``quant_conv``, the decoder
``post_quant_conv``), so a tiled request equals diffusers' pipeline with ``enable_vae_tiling()``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL

from triton_inpaint.pipelines.memory import needs_tiles

Network = Callable[[torch.Tensor], torch.Tensor]
OVERLAP = 0.25  # AutoencoderKL.tile_overlap_factor


class TiledVae:
    """Stands in for an ``AutoencoderKL`` whose tiling methods run ``encoder`` and ``decoder``."""

    blend_v = AutoencoderKL.blend_v
    blend_h = AutoencoderKL.blend_h

    def __init__(self, encoder: Network, decoder: Network, tile: int, scale_factor: int) -> None:
        # Owned copies: diffusers blends each tile into its neighbours in place, and a network call's
        # output may be a buffer its runtime owns (Triton's response, over DLPack on a GPU), not ours to
        # write. One tile-sized copy per call.
        self.encoder = lambda image: encoder(image).clone()
        self.decoder = lambda latents: decoder(latents).clone()
        self.quant_conv = self.post_quant_conv = None  # inside the exported graphs
        self.config = SimpleNamespace(use_quant_conv=False, use_post_quant_conv=False)
        self.tile_sample_min_size = tile
        self.tile_latent_min_size = tile // scale_factor
        self.tile_overlap_factor = OVERLAP

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The latent distribution's parameters of ``image`` (as the untiled encoder returns them)."""
        return AutoencoderKL._tiled_encode(self, image)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return AutoencoderKL.tiled_decode(self, latents, return_dict=False)[0]


def encode(
    encoder: Network, decoder: Network, image: torch.Tensor, tile: int | None, scale_factor: int
) -> torch.Tensor:
    """``encoder(image)``, in tiles of ``tile`` pixels when given and the image is larger."""
    _, _, height, width = image.shape
    if tile is None or not needs_tiles(width, height, tile):
        return encoder(image)
    return TiledVae(encoder, decoder, tile, scale_factor).encode(image)


def decode(
    encoder: Network, decoder: Network, latents: torch.Tensor, tile: int | None, scale_factor: int
) -> torch.Tensor:
    """``decoder(latents)`` one image at a time (the VAE's memory grows with its batch, its results do
    not depend on it), in tiles of ``tile`` pixels when given and the image is larger."""
    _, _, height, width = latents.shape
    if tile is None or not needs_tiles(width * scale_factor, height * scale_factor, tile):
        return torch.cat([decoder(latents[i : i + 1]) for i in range(len(latents))])
    tiled = TiledVae(encoder, decoder, tile, scale_factor)
    return torch.cat([tiled.decode(latents[i : i + 1]) for i in range(len(latents))])
