"""Outpainting's canvas and mask, without a server: the fill, the border mask, the seam's ramp, and the
preprocess step's rules for masks and sizes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import make_image, png_bytes
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import MAX_PIXELS, Outpaint, decode_mask
from triton_inpaint.api.schema import INPAINT, PREPROCESS
from triton_inpaint.masks.outpainting import canvas_mask, extend_image, seam_ramp
from triton_inpaint.masks.preparation import preprocess


def _no_models(*_args):
    raise AssertionError("no masking model is called")


def _values(**given) -> dict:
    return INPAINT.check(given, PREPROCESS)


def test_the_canvas_holds_the_image_and_repeats_its_edges():
    image = make_image(96, 64, seed=3)
    outpaint = Outpaint(top=64, right=0, bottom=128, left=64)
    canvas = extend_image(image, outpaint)
    assert canvas.shape == (64 + 64 + 128, 96 + 64, 3)
    assert outpaint.canvas_size(96, 64) == (160, 256)
    assert np.array_equal(canvas[64:128, 64:160], image)
    assert np.array_equal(canvas[0, 64:], image[0])  # above: the first row repeated
    assert np.array_equal(canvas[-1, 64:], image[-1])
    assert np.array_equal(canvas[64:128, 0], image[:, 0])  # left: the first column repeated
    assert np.array_equal(canvas[0, 0], image[0, 0])  # corners: the corner pixel


def test_the_border_is_masked_and_the_image_is_not():
    outpaint = Outpaint(right=64, left=128)
    mask = canvas_mask(None, (48, 32), outpaint)
    assert mask.shape == (48, 32 + 192) and mask.dtype == np.float32
    assert (mask[:, :128] == 1).all() and (mask[:, -64:] == 1).all()
    assert (mask[:, 128:160] == 0).all()


def test_the_seam_ramps_into_the_image_on_the_sides_that_grew_only():
    outpaint = Outpaint(left=64, blur=8)
    ramp = seam_ramp(40, 20, outpaint)
    row = ramp[10]
    assert np.allclose(row[:9], [1 - (i + 0.5) / 8 for i in range(8)] + [0.0])  # reaches 8 pixels in
    assert (row[8:] == 0).all()
    assert (np.diff(row[:8]) < 0).all()
    assert (ramp[:, :8] > 0).all() and (ramp[:, 8:] == 0).all()  # no ramp on top, bottom or right
    mask = canvas_mask(None, (20, 40), outpaint)
    assert (mask[:, :64] == 1).all()  # the border stays fully regenerated: the blur runs inward only
    assert np.array_equal(mask[:, 64:], ramp)


def test_a_mask_inside_the_image_joins_the_border():
    inner = np.zeros((32, 48), np.float32)
    inner[10:20, 10:20] = 1.0
    mask = canvas_mask(inner, (32, 48), Outpaint(top=64, blur=4))
    assert (mask[:64] == 1).all()
    assert (mask[64 + 10 : 64 + 20, 10:20] == 1).all()  # the caller's region
    assert mask[64 + 25, 40] == 0  # neither the region nor within 4 px of the seam


def test_preprocess_outpaints_without_a_mask():
    image = make_image(64, 48, seed=4)
    values = _values(image=png_bytes(image), outpaint_top=64, outpaint_right=128)
    result = preprocess(values, _no_models, _no_models)
    assert result.image.shape == (48 + 64, 64 + 128, 3)
    assert np.array_equal(result.image[64:, :64], image)
    assert np.array_equal(decode_mask(result.mask_png), result.soft_mask)
    assert result.soft_mask[:64].min() == 1 and result.soft_mask[64:, 64:].min() == 1
    assert result.soft_mask[64:, :64].max() == 0


def test_preprocess_shapes_the_callers_mask_then_places_it():
    image = make_image(64, 48, seed=5)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255
    values = _values(image=png_bytes(image), mask=png_bytes(mask), mask_invert=True, outpaint_bottom=64)
    result = preprocess(values, _no_models, _no_models)
    assert (result.soft_mask[:48, :32] == 0).all() and (result.soft_mask[:48, 32:] == 1).all()  # inverted
    assert (result.soft_mask[48:] == 1).all()


@pytest.mark.parametrize(
    ("given", "field", "words"),
    [
        (
            {},
            "mask",
            "send exactly one of mask (an image), mask_model or mask_prompt (or outpaint the image)",
        ),
        ({"outpaint_left": 100}, "outpaint_left", "must be a multiple of 64, got 100"),
        ({"outpaint_left": 4096}, "outpaint_left", "must be an integer in [0, 2048], got 4096"),
        ({"outpaint_blur": 33}, "outpaint_blur", "must be an integer in [0, 32], got 33"),
        ({"outpaint_top": 64, "mask_model": "face", "mask_prompt": "eyes"}, "mask", "send at most one of"),
    ],
)
def test_preprocess_refuses_naming_the_field(given, field, words):
    with pytest.raises(InvalidInputError) as info:
        preprocess(_values(image=png_bytes(make_image(64, 48)), **given), _no_models, _no_models)
    assert info.value.field == field and words in info.value.reason


def test_a_canvas_past_the_largest_image_is_refused_naming_the_widest_side():
    outpaint = Outpaint(top=64, left=2048, right=1024)
    with pytest.raises(InvalidInputError) as info:
        outpaint.canvas_size(4000, 4000)
    assert info.value.field == "outpaint_left"
    assert f"more than {MAX_PIXELS} pixels" in info.value.reason
