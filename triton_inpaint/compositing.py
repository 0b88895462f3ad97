"""Putting generated pixels back into the original through the soft mask."""

from __future__ import annotations

import numpy as np
from PIL import Image


def composite(original: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * generated + (1 - mask) * original``, per pixel, at the original's size.

    ``generated`` is resized to the original's size first when the model ran at another resolution.
    Where the mask is 0 the result is the original's pixel exactly, and where it is 1 the generated
    pixel exactly: both products are exact in float32 and rounding brings back the same integer.
    """
    height, width = original.shape[:2]
    if generated.shape[:2] != (height, width):
        generated = np.asarray(
            Image.fromarray(generated, mode="RGB").resize((width, height), Image.Resampling.LANCZOS)
        )
    weight = np.clip(mask, 0.0, 1.0).astype(np.float32)[..., None]
    blended = weight * generated.astype(np.float32) + (1.0 - weight) * original.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
