"""Image inputs in every form the reference accepts, and image outputs in every form it returns.

Inputs: the UUID of an uploaded or generated image, a data URI, raw base64, or a public http(s) URL.
Whatever the form, the bytes must be a PNG, JPEG or WEBP of at most ``max_pixels``, checked from the
header before anything is decoded, and must then decode completely (a header that promises 4000x4000
over a 16x16 body, or a truncated file, is refused) before they are stored or sent on.
"""

from __future__ import annotations

import base64
import binascii
import re

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import MAX_PIXELS, check_decodes, probe
from triton_inpaint.gateway.inputs.fetch import FetchPolicy, fetch_url
from triton_inpaint.gateway.store.storage import IMAGE_EXTENSIONS, GatewayStorage

UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
DATA_URI = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,(?P<data>.*)$", re.DOTALL
)
EXTENSION_BY_FORMAT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def _base64(text: str, field: str, what: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            field, f"{what} is not valid base64; send an image UUID, a data URI, base64 or an http(s) URL"
        ) from None


def resolve_image(
    value: str,
    field: str,
    storage: GatewayStorage,
    policy: FetchPolicy,
    max_pixels: int = MAX_PIXELS,
) -> bytes:
    """The image bytes ``value`` stands for, checked to be an accepted image of acceptable size."""
    value = value.strip()
    if not value:
        raise InvalidInputError(field, "is empty; send an image UUID, a data URI, base64 or an http(s) URL")
    if UUID_PATTERN.match(value):
        stored = storage.get_image(value.lower())
        if stored is None:
            raise InvalidInputError(field, f"no uploaded or generated image has UUID {value}")
        data = stored.data
    elif value.startswith("data:"):
        match = DATA_URI.match(value)
        if match is None:
            raise InvalidInputError(field, "data URI must look like data:image/png;base64,<base64>")
        data = _base64(match["data"], field, "the data URI's payload")
    elif value.lower().startswith(("http://", "https://")) or "://" in value[:16]:
        data = fetch_url(value, field, policy)
    else:
        data = _base64(value, field, "the value")
    probe(data, field, max_pixels)
    check_decodes(data, field)
    return data


def image_extension(data: bytes, field: str = "image") -> str:
    """The storage extension (png, jpg, webp) of an accepted image."""
    image_format, _, _ = probe(data, field)
    return EXTENSION_BY_FORMAT[image_format]


def output_fields(
    prefix: str, image_uuid: str, data: bytes, ext: str, output_type: str, base_url: str
) -> dict[str, str]:
    """The response fields for one stored image: ``<prefix>UUID`` and, by output type,
    ``<prefix>URL``, ``<prefix>Base64Data`` or ``<prefix>DataURI``."""
    fields = {f"{prefix}UUID": image_uuid}
    if output_type == "URL":
        fields[f"{prefix}URL"] = f"{base_url.rstrip('/')}/images/{image_uuid}.{ext}"
    elif output_type == "base64Data":
        fields[f"{prefix}Base64Data"] = base64.b64encode(data).decode("ascii")
    else:
        encoded = base64.b64encode(data).decode("ascii")
        fields[f"{prefix}DataURI"] = f"data:{IMAGE_EXTENSIONS[ext]};base64,{encoded}"
    return fields
