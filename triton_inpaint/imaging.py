"""Image and mask codecs: bytes in, arrays out, and back. Pillow does the work."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from triton_inpaint.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A decompression bomb is refused before decoding: Pillow checks the header's size against this.
MAX_PIXELS = 4096 * 4096


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
    # Phone photos store their rotation in EXIF; users expect the image as they see it.
    return ImageOps.exif_transpose(image)


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Decode an encoded image into RGB ``uint8`` of shape (H, W, 3)."""
    return np.asarray(_open(data, field).convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, field: str = "mask") -> np.ndarray:
    """Decode a mask into a soft mask in [0, 1] of shape (H, W): white regenerates, black keeps.

    Greyscale and RGB masks are read by luminance. A mask with transparency is laid over black first,
    so both an opaque black-and-white PNG saved as RGBA and white strokes on a transparent layer mean
    what they show: transparent counts as black (keep).
    """
    image = _open(data, field)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    return grey / 255.0


OUTPUT_FORMATS = {"PNG": "PNG", "JPG": "JPEG", "JPEG": "JPEG", "WEBP": "WEBP"}
QUALITY_RANGE = (1, 100)
DEFAULT_QUALITY = 95


def output_format(name: str | None) -> str:
    """The Pillow format for a user's format name (PNG, JPG/JPEG, WEBP; any case); PNG by default."""
    if name is None or name == "":
        return "PNG"
    found = OUTPUT_FORMATS.get(name.strip().upper())
    if found is None:
        raise InvalidInputError("output_format", f"must be one of PNG, JPG, WEBP, got {name!r}")
    return found


def output_quality(value: int | None) -> int:
    if value is None:
        return DEFAULT_QUALITY
    if not QUALITY_RANGE[0] <= int(value) <= QUALITY_RANGE[1]:
        raise InvalidInputError(
            "output_quality", f"must be an integer in [{QUALITY_RANGE[0]}, {QUALITY_RANGE[1]}], got {value}"
        )
    return int(value)


def encode_image(pixels: np.ndarray, image_format: str = "PNG", quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode RGB ``uint8`` (H, W, 3) pixels; ``quality`` applies to JPEG and WEBP (PNG is lossless)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if image_format == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """An (H, W) mask as an 8-bit greyscale PNG: uint8 as it is, a soft mask in [0, 1] rounded to 8 bits."""
    buffer = io.BytesIO()
    image = Image.fromarray(mask, mode="L") if mask.dtype == np.uint8 else mask_to_pil(mask)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_to_pil(mask: np.ndarray) -> Image.Image:
    """The soft mask as an 8-bit greyscale image, the form diffusers' mask processor expects."""
    return Image.fromarray(np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
