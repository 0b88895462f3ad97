"""Putting generated pixels back into the original through the soft mask."""

from __future__ import annotations

import numpy as np
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

_RESIZER = VaeImageProcessor()  # Lanczos, as the pipelines' own image processor


def paste(original: np.ndarray, generated: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The original with ``generated`` resized into ``box``, as diffusers' ``apply_overlay`` resizes it
    (``resize_mode="crop"``: scale to cover, centre-crop the excess)."""
    x1, y1, x2, y2 = box
    if generated.shape[:2] == (y2 - y1, x2 - x1):
        region = generated
    else:
        resized = _RESIZER.resize(
            Image.fromarray(generated, mode="RGB"), height=y2 - y1, width=x2 - x1, resize_mode="crop"
        )
        region = np.asarray(resized)
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
