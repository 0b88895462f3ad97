import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import cut_out, decode_image, decode_mask, encode_image
from triton_inpaint.masks.compositing import composite, resize_and_crop


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_accepted_formats(fmt):
    pixels = np.full((16, 24, 3), (10, 120, 230), np.uint8)
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt))
    assert decoded.shape == (16, 24, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - pixels).max() <= 3  # lossy formats


def test_png_roundtrip_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(pixels)), pixels)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_undecodable_names_the_field(data):
    with pytest.raises(InvalidInputError) as info:
        decode_image(data, "image")
    assert info.value.field == "image"
    assert "PNG" in str(info.value) or "decoded" in str(info.value) or "empty" in str(info.value)


def test_other_formats_refused():
    with pytest.raises(InvalidInputError, match="format GIF is not accepted"):
        decode_image(_encode(Image.new("RGB", (4, 4)), "GIF"))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_mask_modes_give_soft_mask(mode):
    grey = np.array([[0, 128, 255]], np.uint8)
    image = Image.fromarray(grey, "L").convert(mode)
    mask = decode_mask(_encode(image, "PNG"))
    assert mask.shape == (1, 3)
    assert mask[0, 0] == 0.0 and mask[0, 2] == 1.0 and abs(mask[0, 1] - 128 / 255) < 1e-6


pixels = arrays(np.uint8, (8, 12, 3))
masks = arrays(np.float32, (8, 12), elements=st.floats(0, 1, width=32))


@settings(max_examples=50, deadline=None)
@given(pixels, pixels)
def test_zero_mask_leaves_image_unchanged(original, generated):
    assert np.array_equal(composite(original, generated, np.zeros((8, 12), np.float32)), original)


@settings(max_examples=50, deadline=None)
@given(pixels, pixels, masks)
def test_pixels_where_mask_is_zero_are_untouched_and_one_is_generated(original, generated, mask):
    mask = np.where(mask < 0.3, 0.0, np.where(mask > 0.7, 1.0, mask)).astype(np.float32)
    out = composite(original, generated, mask)
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(out[mask == 1], generated[mask == 1])
    expected = mask[..., None] * generated + (1 - mask[..., None]) * original.astype(np.float32)
    assert np.abs(out.astype(np.float32) - expected).max() <= 0.5 + 1e-4


def test_composite_resizes_generated_to_original_size():
    original = np.zeros((20, 30, 3), np.uint8)
    generated = np.full((16, 24, 3), 200, np.uint8)
    out = composite(original, generated, np.ones((20, 30), np.float32))
    assert out.shape == (20, 30, 3)
    assert np.abs(out.astype(int) - 200).max() <= 1


@settings(max_examples=40, deadline=None)
@given(
    source=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    target=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    seed=st.integers(0, 2**16),
)
def test_resize_and_crop_is_diffusers_crop_resize(source, target, seed):
    """The compositor's own resize (free of torch) is diffusers' ``resize_mode="crop"``, pixel for pixel."""
    from diffusers.image_processor import VaeImageProcessor

    pixels = np.random.default_rng(seed).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    ours = resize_and_crop(image, target[0], target[1])
    theirs = VaeImageProcessor().resize(image, height=target[1], width=target[0], resize_mode="crop")
    assert ours.size == theirs.size == target
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_transparent_mask_pixels_mean_keep():
    """White strokes on a transparent layer: only the opaque strokes regenerate, whatever RGB hides
    under the transparent pixels."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[1:3, 1:3, 3] = 255  # ... but opaque only in the middle
    mask = decode_mask(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    expected = np.zeros((4, 4), np.float32)
    expected[1:3, 1:3] = 1.0
    assert np.array_equal(mask, expected)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data)
    assert image.shape == (1, 4, 3) and np.array_equal(image[..., 0], image[..., 2])
    assert image[0, :, 0].tolist() == [0, 4, 128, 255]  # round(v * 255 / 65535)
    mask = decode_mask(data)
    assert mask.dtype == np.float32 and abs(mask[0, 1] - 1000 / 65535) < 1e-7  # full precision


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 1000, 65535, 70000]], np.int32), [0, 4, 255, 255]),  # "I": 16-bit data
        (np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), [0, 128, 255, 255]),  # "F": [0, 1]
    ],
)
def test_integer_and_float_greyscale_modes_are_scaled(array, expected):
    from triton_inpaint.api.imaging import image_rgb, mask_fraction

    image = Image.fromarray(array)
    assert image.mode in ("I", "F")
    assert image_rgb(image)[0, :, 1].tolist() == expected
    assert np.allclose(mask_fraction(image)[0], np.array(expected) / 255, atol=0.5 / 255 + 1e-6)


def test_palette_cmyk_alpha_and_exif_rotation_look_as_they_show():
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[:, :5] = (200, 30, 30)
    rgb[:, 5:] = (20, 40, 220)
    palette = decode_image(_encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    assert np.abs(palette.astype(int) - rgb).max() <= 8
    cmyk = decode_image(_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"))
    assert cmyk.shape == rgb.shape and np.abs(cmyk.astype(int) - rgb).mean() < 12
    rgba = np.dstack([rgb, np.full((6, 10), 128, np.uint8)])
    assert np.array_equal(decode_image(_encode(Image.fromarray(rgba), "PNG")), rgb)  # alpha dropped
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    shown = decode_image(buffer.getvalue())
    assert shown.shape == (10, 6, 3)  # as displayed: portrait
    assert shown[0, 0, 0] > 150 and shown[-1, 0, 2] > 150  # turned clockwise: red on top, blue below


def test_a_header_promising_more_than_the_body_holds_is_refused():
    small = _encode(Image.fromarray(np.full((16, 16, 3), 90, np.uint8)), "JPEG")
    # Patch the SOF0 frame header to claim 4000x4000 over the 16x16 body.
    sof = small.index(b"\xff\xc0")
    lying = bytearray(small)
    lying[sof + 5 : sof + 9] = (4000).to_bytes(2, "big") * 2
    with pytest.raises(InvalidInputError, match="^image: cannot be decoded"):
        decode_image(bytes(lying), "image")
    truncated = _encode(Image.fromarray(np.full((64, 64, 3), 90, np.uint8)), "PNG")[:-40]
    with pytest.raises(InvalidInputError, match="^mask: cannot be decoded"):
        decode_mask(truncated, "mask")


@settings(max_examples=25, deadline=None)
@given(
    pixels=arrays(np.uint8, (6, 5, 3)),
    alpha=arrays(np.float64, (6, 5), elements=st.floats(0.0, 1.0)),
    background=st.tuples(*[st.integers(0, 255)] * 4),
)
def test_cut_out_lays_the_subject_over_the_background(pixels, alpha, background):
    """Background removal's output: "over" compositing of the subject (alpha = the soft mask) on the
    background colour; transparent where neither covers."""
    out = np.asarray(Image.open(io.BytesIO(cut_out(pixels, alpha, background))), dtype=np.float64)
    bg_alpha = background[3] / 255.0
    want_alpha = alpha + bg_alpha * (1 - alpha)
    assert np.abs(out[..., 3] - want_alpha * 255).max() <= 0.5 + 1e-9
    covered = want_alpha > 0.02  # colour is only defined (and only kept to 8 bits) where something covers
    premultiplied = pixels * alpha[..., None] + np.array(background[:3]) * bg_alpha * (1 - alpha[..., None])
    want_rgb = premultiplied / np.maximum(want_alpha, 1e-12)[..., None]
    assert np.abs(out[..., :3] - want_rgb)[covered].max(initial=0.0) <= 0.5 + 1e-6


def test_cut_out_keeps_the_subject_and_clears_the_rest_by_default():
    pixels = np.full((4, 4, 3), 200, np.uint8)
    alpha = np.zeros((4, 4))
    alpha[1:3, 1:3] = 1.0
    out = np.asarray(Image.open(io.BytesIO(cut_out(pixels, alpha))))
    assert out.shape == (4, 4, 4)
    assert (out[1:3, 1:3] == [200, 200, 200, 255]).all() and (out[..., 3][alpha == 0] == 0).all()
    jpg = np.asarray(Image.open(io.BytesIO(cut_out(pixels, alpha, (255, 255, 255, 255), "JPG"))))
    assert jpg.shape == (4, 4, 3)  # JPG has no alpha: flattened onto the background colour
