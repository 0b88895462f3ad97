"""Mask operations: invert, expand (dilate), blur (feather), and the masked region's bounds.

OpenCV does the morphology and the blur. The crop for ``mask_margin`` is diffusers' own geometry and
is chosen in the denoise model, which has diffusers already (``pipelines/sd_inpaint.py``,
``crop_region``): the pre/postprocess models that shape masks stay free of torch and diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from triton_inpaint.api.imaging import Box, mask_to_pil
from triton_inpaint.api.schema import INPAINT


@dataclass(frozen=True)
class MaskParams:
    """How the user's mask becomes the mask that is inpainted and composited through."""

    invert: bool = False
    expand: int = 0
    blur: int = 0

    @classmethod
    def from_inputs(
        cls, invert: bool | None = None, expand: int | None = None, blur: int | None = None
    ) -> MaskParams:
        return cls(
            invert=INPAINT["mask_invert"].check(invert),
            expand=INPAINT["mask_expand"].check(expand),
            blur=INPAINT["mask_blur"].check(blur),
        )


def expand_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation with a disc of ``radius`` px: the mask grows by ``radius`` in every direction."""
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def blur_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Gaussian feather reaching ``radius`` px: kernel 2*radius+1, sigma radius/3 (+-3 sigma).

    Pixels farther than ``radius`` from the mask stay exactly 0, so the feather never touches pixels
    beyond its reach; float dust within 1e-6 of 0 or 1 is snapped so the composite stays exact there.
    """
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    blurred = cv2.GaussianBlur(mask, (size, size), sigmaX=radius / 3.0, sigmaY=radius / 3.0)
    blurred[blurred < 1e-6] = 0.0
    blurred[blurred > 1.0 - 1e-6] = 1.0
    return blurred


def prepare_mask(mask: np.ndarray, params: MaskParams) -> np.ndarray:
    """Invert, then expand, then blur: the order in which each control means what its name says."""
    prepared = np.ascontiguousarray(mask, dtype=np.float32)
    if params.invert:
        prepared = 1.0 - prepared
    prepared = expand_mask(prepared, params.expand)
    prepared = blur_mask(prepared, params.blur)
    return np.clip(prepared, 0.0, 1.0)


def mask_bounds(mask: np.ndarray, pad: int) -> Box | None:
    """The mask's bounding box grown by ``pad`` and clipped to the image, before any aspect widening.

    ``None`` for an empty mask. "Set" means non-zero at 8 bits, as diffusers sees the mask.
    """
    quantised = np.asarray(mask_to_pil(mask))
    rows = np.flatnonzero(quantised.any(axis=1))
    cols = np.flatnonzero(quantised.any(axis=0))
    if rows.size == 0:
        return None
    height, width = quantised.shape
    return (
        max(int(cols[0]) - pad, 0),
        max(int(rows[0]) - pad, 0),
        min(int(cols[-1]) + 1 + pad, width),
        min(int(rows[-1]) + 1 + pad, height),
    )
