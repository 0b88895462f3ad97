"""Image and mask codecs: bytes in, arrays out, and back. Pillow does the work."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schema import INPAINT

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A decompression bomb is refused before decoding: Pillow checks the header's size against this.
MAX_PIXELS = 4096 * 4096
Box = tuple[int, int, int, int]  # a region of an image: x1, y1, x2, y2 (x2, y2 exclusive)
OUTPAINT_SIDES = ("top", "right", "bottom", "left")


@dataclass(frozen=True)
class Outpaint:
    """How far an outpainted canvas grows on each side (pixels), and how far its seam is feathered into
    the image (``masks/outpainting.py`` makes the canvas and its mask)."""

    top: int = 0
    right: int = 0
    bottom: int = 0
    left: int = 0
    blur: int = 0

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Outpaint:
        """From a request's checked controls (``outpaint_top``... ``outpaint_blur``; absent: 0)."""
        return cls(*(int(values.get(f"outpaint_{name}") or 0) for name in (*OUTPAINT_SIDES, "blur")))

    @property
    def extends(self) -> bool:
        return any(getattr(self, side) for side in OUTPAINT_SIDES)

    def canvas_size(self, width: int, height: int) -> tuple[int, int]:
        """The canvas (width, height) for an image of ``width`` x ``height``; refused past the largest
        image the service decodes, naming the side that grew most."""
        canvas = (width + self.left + self.right, height + self.top + self.bottom)
        if canvas[0] * canvas[1] > MAX_PIXELS:
            side = max(OUTPAINT_SIDES, key=lambda name: getattr(self, name))
            raise InvalidInputError(
                f"outpaint_{side}",
                f"the canvas would be {canvas[0]}x{canvas[1]}, more than {MAX_PIXELS} pixels; extend less",
            )
        return canvas


def _header(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The image opened lazily: Pillow has read only the header, so format and size are known and
    nothing has been decoded yet. Too many pixels is refused here, before any decoding."""
    if not data:
        raise InvalidInputError(field, "is empty; send PNG, JPEG or WEBP bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidInputError(field, "cannot be decoded: not a PNG, JPEG or WEBP image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(field, f"cannot be decoded: {exc}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidInputError(field, f"format {image.format} is not accepted; send PNG, JPEG or WEBP")
    if image.width * image.height > max_pixels:
        raise InvalidInputError(field, f"{image.width}x{image.height} has more than {max_pixels} pixels")
    return image


def probe(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone, with the same refusals as decoding."""
    image = _header(data, field, max_pixels)
    return image.format, image.width, image.height


def _open(data: bytes, field: str) -> Image.Image:
    image = _header(data, field, MAX_PIXELS)
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(field, f"cannot be decoded: {exc}") from None
    if image.format == "JPEG":
        _check_jpeg_complete(data, image, field)
    # Phone photos store their rotation in EXIF; users expect the image as they see it.
    return ImageOps.exif_transpose(image)


_ARITHMETIC_SOF = (b"\xff\xc9", b"\xff\xca", b"\xff\xcb", b"\xff\xcd", b"\xff\xce", b"\xff\xcf")


def _check_jpeg_complete(data: bytes, image: Image.Image, field: str) -> None:
    """Refuse a JPEG whose data stops before its image does.

    libjpeg fills a scan that ends early with grey and only warns, and Pillow does not pass the
    warning on, so a header that promises 4000x4000 over a 16x16 body "decodes". Written by hand
    because no decoder we ship reports it: with Huffman coding (baseline and progressive) every 8x8
    block's DC coefficient takes at least one bit, so fewer bytes than blocks/8 cannot hold the image.
    Arithmetic-coded JPEGs (rare) can go below that bound and are not checked.
    """
    layers = getattr(image, "layer", None)
    if not layers or any(marker in data for marker in _ARITHMETIC_SOF):
        return
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    blocks = sum(
        math.ceil(math.ceil(image.width * h / h_max) / 8) * math.ceil(math.ceil(image.height * v / v_max) / 8)
        for _, h, v, _ in layers
    )
    if len(data) * 8 < blocks:
        raise InvalidInputError(
            field,
            f"cannot be decoded: the JPEG data ends before its {image.width}x{image.height} image does "
            "(truncated or a header that lies)",
        )


# Pillow's convert() clips high-bit-depth greyscale to 0-255 instead of scaling it (a 16-bit PNG's
# 1000 becomes 255), so these modes are scaled by hand to [0, 1] first. The full range of each mode:
# I;16* are 16-bit PNGs; "I" (32-bit integer) holds 16-bit data wherever Pillow produces it from a
# PNG; "F" (float) is taken as [0, 1].
_HIGH_DEPTH_RANGE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0,
                     "F": 1.0}  # fmt: skip


def _grey_fraction(image: Image.Image) -> np.ndarray | None:
    """A high-bit-depth greyscale image as float32 in [0, 1], or None for every other mode."""
    full = _HIGH_DEPTH_RANGE.get(image.mode)
    if full is None:
        return None
    return np.clip(np.asarray(image, dtype=np.float32) / full, 0.0, 1.0)


def image_rgb(image: Image.Image) -> np.ndarray:
    """An opened image as RGB ``uint8`` (H, W, 3), converted as it looks: high-bit-depth greyscale
    scaled (not clipped) to 8 bits, palette and CMYK through Pillow; alpha is dropped, as diffusers'
    loaders drop it."""
    grey = _grey_fraction(image)
    if grey is not None:
        return np.repeat(np.rint(grey * 255.0).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def mask_fraction(image: Image.Image) -> np.ndarray:
    """An opened mask as float32 (H, W) in [0, 1]: white regenerates, black keeps.

    Greyscale and RGB masks are read by luminance; 16-bit ones at full precision (1000/65535 means
    1.5 %). A mask with transparency is laid over black first, so both an opaque black-and-white PNG
    saved as RGBA and white strokes on a transparent layer mean what they show: transparent counts as
    black (keep).
    """
    grey = _grey_fraction(image)
    if grey is not None:
        return grey
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def check_decodes(data: bytes, field: str = "image") -> None:
    """Refuse bytes that do not decode completely (truncated, lying header), without converting the
    pixels: for checks before an image is stored or sent on."""
    _open(data, field)


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Decode an encoded image into RGB ``uint8`` of shape (H, W, 3) (see :func:`image_rgb`)."""
    return image_rgb(_open(data, field))


def decode_mask(data: bytes, field: str = "mask") -> np.ndarray:
    """Decode a mask into a soft mask in [0, 1] of shape (H, W) (see :func:`mask_fraction`)."""
    return mask_fraction(_open(data, field))


# The declared output format names -> Pillow's.
_PILLOW_FORMATS = {"PNG": "PNG", "JPG": "JPEG", "WEBP": "WEBP"}


def encode_image(
    pixels: np.ndarray,
    output_format: str | None = None,
    output_quality: int | None = None,
) -> bytes:
    """Encode RGB ``uint8`` (H, W, 3) pixels as the request's output controls say (checked here
    against their declaration; absent: PNG, quality 95). Quality applies to JPG and WEBP."""
    image_format = _PILLOW_FORMATS[INPAINT["output_format"].check(output_format)]
    quality = INPAINT["output_quality"].check(output_quality)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if image_format == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue()


def cut_out(
    pixels: np.ndarray,
    alpha: np.ndarray,
    background: tuple[int, int, int, int] = (0, 0, 0, 0),
    output_format: str | None = None,
    output_quality: int | None = None,
) -> bytes:
    """The subject of RGB ``pixels`` (H, W, 3 uint8) where ``alpha`` (H, W in [0, 1]) is set, over
    ``background`` (R, G, B, A 0-255; the default is transparent). The foreground is laid over the
    background by "over" compositing: RGBA for PNG and WEBP, and flattened onto the background's colour
    for JPG, which has no alpha. Written by hand because Pillow composites only at full 8-bit alpha
    steps of both layers, and the soft mask's fractions matter at the edges."""
    fg_alpha = np.clip(alpha, 0.0, 1.0)[..., None]
    bg_rgb = np.asarray(background[:3], np.float64)
    bg_alpha = background[3] / 255.0
    out_alpha = fg_alpha + bg_alpha * (1.0 - fg_alpha)
    weighted = pixels.astype(np.float64) * fg_alpha + bg_rgb * bg_alpha * (1.0 - fg_alpha)
    rgb = np.divide(weighted, out_alpha, out=np.zeros_like(weighted), where=out_alpha > 0)
    image_format = _PILLOW_FORMATS[INPAINT["output_format"].check(output_format)]
    quality = INPAINT["output_quality"].check(output_quality)
    buffer = io.BytesIO()
    if image_format == "JPEG":  # no alpha: flattened onto the background colour, opaque
        flat = rgb * out_alpha + bg_rgb * (1.0 - out_alpha)
        Image.fromarray(np.rint(flat).astype(np.uint8), mode="RGB").save(
            buffer, format="JPEG", quality=quality
        )
        return buffer.getvalue()
    rgba = np.concatenate([np.rint(rgb), np.rint(out_alpha * 255.0)], axis=-1).astype(np.uint8)
    options = {"lossless": True} if image_format == "WEBP" and quality == 100 else {"quality": quality}
    Image.fromarray(rgba, mode="RGBA").save(
        buffer, format=image_format, **({} if image_format == "PNG" else options)
    )
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """An (H, W) mask as an 8-bit greyscale PNG: uint8 as it is, a soft mask in [0, 1] rounded to 8 bits."""
    buffer = io.BytesIO()
    image = Image.fromarray(mask, mode="L") if mask.dtype == np.uint8 else mask_to_pil(mask)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_pixels(mask: np.ndarray) -> np.ndarray:
    """A soft mask in [0, 1] as 8-bit pixels."""
    return np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)


def mask_to_pil(mask: np.ndarray) -> Image.Image:
    """The soft mask as an 8-bit greyscale image, the form diffusers' mask processor expects."""
    return Image.fromarray(mask_pixels(mask), mode="L")
