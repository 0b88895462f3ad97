"""Image and mask codecs: bytes in, arrays out, and back. Pillow does the work."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from triton_inpaint.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A decompression bomb is refused before decoding: Pillow checks the header's size against this.
MAX_PIXELS = 4096 * 4096


def _open(data: bytes, field: str) -> Image.Image:
    if not data:
        raise InvalidInputError(field, "is empty; send PNG, JPEG or WEBP bytes")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ACCEPTED_FORMATS:
            raise InvalidInputError(field, f"format {image.format} is not accepted; send PNG, JPEG or WEBP")
        if image.width * image.height > MAX_PIXELS:
            raise InvalidInputError(field, f"{image.width}x{image.height} has more than {MAX_PIXELS} pixels")
        image.load()
    except InvalidInputError:
        raise
    except UnidentifiedImageError:
        raise InvalidInputError(field, "cannot be decoded: not a PNG, JPEG or WEBP image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(field, f"cannot be decoded: {exc}") from None
    # Phone photos store their rotation in EXIF; users expect the image as they see it.
    return ImageOps.exif_transpose(image)


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Decode an encoded image into RGB ``uint8`` of shape (H, W, 3)."""
    return np.asarray(_open(data, field).convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, field: str = "mask") -> np.ndarray:
    """Decode a mask into a soft mask in [0, 1] of shape (H, W): white regenerates, black keeps."""
    grey = np.asarray(_open(data, field).convert("L"), dtype=np.float32)
    return grey / 255.0


def encode_image(pixels: np.ndarray, image_format: str = "PNG", quality: int = 95) -> bytes:
    """Encode RGB ``uint8`` (H, W, 3) pixels."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if image_format == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue()


def mask_to_pil(mask: np.ndarray) -> Image.Image:
    """The soft mask as an 8-bit greyscale image, the form diffusers' mask processor expects."""
    return Image.fromarray(np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
