"""Outpainting: inpainting on a canvas extended beyond the image's edges.

The image is placed on a larger canvas (:class:`~triton_inpaint.api.imaging.Outpaint` says how much
larger), the new border is filled and masked, and the request then runs as any inpainting request: the
denoise step sees the whole canvas, and the composite keeps every pixel of the original image that the
mask does not reach exactly as it was.

The border is filled by repeating the image's edge pixels (OpenCV's ``BORDER_REPLICATE``), not with
noise or grey: at strength 1 an inpainting UNet never sees the masked pixels (diffusers zeroes them in
the masked-image latents), so the fill does not matter there; below strength 1, and for base
checkpoints, denoising starts from the fill, and the edge's own colours continue the scene where noise
or grey would show as a band (A1111's "fill" and Vertex's border-replicate padding do the same).
"""

from __future__ import annotations

import cv2
import numpy as np

from triton_inpaint.api.imaging import Outpaint


def extend_image(image: np.ndarray, outpaint: Outpaint) -> np.ndarray:
    """The image on the canvas, the border repeating the nearest edge pixel."""
    o = outpaint
    return cv2.copyMakeBorder(image, o.top, o.bottom, o.left, o.right, cv2.BORDER_REPLICATE)


def canvas_mask(mask: np.ndarray | None, image_shape: tuple[int, ...], outpaint: Outpaint) -> np.ndarray:
    """The canvas mask: 1 on the border, the image's own mask (or 0) inside, and where ``blur`` is set,
    a ramp from 1 at the seam down to 0 ``blur`` pixels into the image, on the sides that grew.

    The ramp is written here because it must run inward only: a Gaussian blur (OpenCV's, as
    ``mask_blur`` uses) would also lower the mask on the border, where the fill would then show.
    """
    height, width = image_shape[:2]
    inside = np.zeros((height, width), np.float32) if mask is None else mask.astype(np.float32)
    if outpaint.blur:
        inside = np.maximum(inside, seam_ramp(width, height, outpaint))
    o = outpaint
    canvas = cv2.copyMakeBorder(inside, o.top, o.bottom, o.left, o.right, cv2.BORDER_CONSTANT, value=1.0)
    return canvas.astype(np.float32)


def seam_ramp(width: int, height: int, outpaint: Outpaint) -> np.ndarray:
    """Per pixel of the image: 1 - (distance to the nearest extended side + 0.5) / blur, at least 0.

    Distances run from pixel centres, so the outermost row of the image is already partly regenerated
    and the ramp reaches exactly ``blur`` pixels in; sides that did not grow keep no ramp.
    """
    rows = np.arange(height, dtype=np.float32)[:, None] + np.zeros((1, width), np.float32)
    cols = np.arange(width, dtype=np.float32)[None, :] + np.zeros((height, 1), np.float32)
    distance = np.full((height, width), np.inf, np.float32)
    for grew, to_side in (
        (outpaint.top, rows),
        (outpaint.bottom, height - 1 - rows),
        (outpaint.left, cols),
        (outpaint.right, width - 1 - cols),
    ):
        if grew:
            distance = np.minimum(distance, to_side)
    return np.clip(1.0 - (distance + 0.5) / outpaint.blur, 0.0, 1.0).astype(np.float32)
