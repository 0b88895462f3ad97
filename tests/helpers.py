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
