"""Putting generated pixels back into the original through the soft mask."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' ``VaeImageProcessor.resize(image, height, width, resize_mode="crop")`` for a PIL image:
    scale to cover (Lanczos, the processor's default resample), centre the result, crop the excess.

    Written out here (eight lines of diffusers' ``_resize_and_crop``) because importing
    ``diffusers.image_processor`` imports torch, ~250 MiB in every model process that composites;
    ``tests/test_imaging.py`` holds it equal to diffusers' own, pixel for pixel.
    """
    ratio = width / height
    source_ratio = image.width / image.height
    scaled_width = width if ratio > source_ratio else image.width * height // image.height
    scaled_height = height if ratio <= source_ratio else image.height * width // image.width
    resized = image.resize((scaled_width, scaled_height), resample=Image.Resampling.LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - scaled_width // 2, height // 2 - scaled_height // 2))
    return result


def paste(original: np.ndarray, generated: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The original with ``generated`` resized into ``box``, as diffusers' ``apply_overlay`` resizes it
    (``resize_mode="crop"``: scale to cover, centre-crop the excess)."""
    x1, y1, x2, y2 = box
    if generated.shape[:2] == (y2 - y1, x2 - x1):
        region = generated
    else:
        region = np.asarray(resize_and_crop(Image.fromarray(generated, mode="RGB"), x2 - x1, y2 - y1))
    if box == (0, 0, original.shape[1], original.shape[0]):
        return region
    pasted = original.copy()
    pasted[y1:y2, x1:x2] = region
    return pasted


def composite(
    original: np.ndarray,
    generated: np.ndarray,
    mask: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """``mask * generated + (1 - mask) * original``, per pixel, at the original's size.

    ``generated`` covers ``box`` of the original (the whole image by default) and is resized into it
    when the model ran at another resolution. Where the mask is 0 the result is the original's pixel
    exactly, and where it is 1 the generated pixel exactly: both products are exact in float32 and
    rounding brings back the same integer.
    """
    height, width = original.shape[:2]
    pasted = paste(original, generated, box or (0, 0, width, height))
    weight = np.clip(mask, 0.0, 1.0).astype(np.float32)[..., None]
    blended = weight * pasted.astype(np.float32) + (1.0 - weight) * original.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
