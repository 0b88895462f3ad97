"""Mask operations, without a server: exact properties and diffusers' crop geometry."""

import cv2
import numpy as np
import pytest
from diffusers.image_processor import VaeImageProcessor
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import mask_to_pil
from triton_inpaint.api.schema import INPAINT
from triton_inpaint.masks.compositing import composite
from triton_inpaint.masks.shaping import (
    MaskParams,
    blur_mask,
    expand_mask,
    mask_bounds,
    prepare_mask,
)
from triton_inpaint.pipelines.sd_inpaint import crop_region

binary_masks = arrays(np.bool_, st.tuples(st.integers(8, 48), st.integers(8, 48))).map(
    lambda m: m.astype(np.float32)
)


def sparse_masks():
    """Masks made of a few rectangles, like painted regions, sometimes touching the border."""

    @st.composite
    def build(draw):
        h, w = draw(st.integers(16, 64)), draw(st.integers(16, 64))
        mask = np.zeros((h, w), np.float32)
        for _ in range(draw(st.integers(1, 3))):
            y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            mask[y : y + draw(st.integers(1, h)), x : x + draw(st.integers(1, w))] = draw(
                st.sampled_from([1.0, 0.5, 128 / 255])
            )
        return mask

    return build()


def within_reach(mask: np.ndarray, radius: int) -> np.ndarray:
    """Every pixel within Chebyshev distance ``radius`` of a set pixel (the blur kernel's square)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate((mask > 0).astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


@settings(max_examples=60, deadline=None)
@given(sparse_masks(), st.integers(0, 20))
def test_blur_never_grows_support_beyond_its_kernel(mask, radius):
    blurred = blur_mask(mask, radius)
    assert not blurred[~within_reach(mask, radius)].any()
    assert blurred.min() >= 0 and blurred.max() <= 1


@settings(max_examples=60, deadline=None)
@given(sparse_masks(), st.integers(0, 16))
def test_expand_grows_by_a_disc_and_keeps_the_mask(mask, radius):
    expanded = expand_mask(mask, radius)
    assert np.all(expanded >= mask), "dilation never removes"
    assert not expanded[~within_reach(mask, radius)].any()


def test_expand_single_pixel_is_a_disc():
    mask = np.zeros((21, 21), np.float32)
    mask[10, 10] = 1
    expanded = expand_mask(mask, 5)
    yy, xx = np.mgrid[0:21, 0:21]
    assert expanded[10, 15] == 1 and expanded[15, 10] == 1  # radius 5 along the axes
    assert expanded[14, 14] == 0  # the corner of the square is outside the disc
    assert expanded[(yy - 10) ** 2 + (xx - 10) ** 2 > 36].sum() == 0


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, (24, 32, 3)),
    arrays(np.uint8, (24, 32, 3)),
    st.booleans(),
    st.integers(0, 8),
    st.integers(0, 12),
)
def test_empty_mask_leaves_the_image_unchanged(original, generated, invert, expand, blur):
    empty = np.zeros((24, 32), np.float32)
    params = MaskParams(invert=False, expand=expand, blur=blur)
    assert np.array_equal(composite(original, generated, prepare_mask(empty, params)), original)
    # Inverting a full mask is the same empty mask.
    if invert:
        full = prepare_mask(np.ones((24, 32), np.float32), MaskParams(True, expand, blur))
        assert np.array_equal(composite(original, generated, full), original)


@settings(max_examples=40, deadline=None)
@given(sparse_masks(), arrays(np.uint8, (1, 1, 3)), st.integers(0, 6), st.integers(0, 10))
def test_pixels_where_the_final_mask_is_zero_are_untouched(mask, colour, expand, blur):
    height, width = mask.shape
    original = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    generated = np.broadcast_to(colour, (height, width, 3)).copy()
    final = prepare_mask(mask, MaskParams(expand=expand, blur=blur))
    out = composite(original, generated, final)
    assert np.array_equal(out[final == 0], original[final == 0])


def test_invert():
    mask = np.array([[0.0, 0.25, 1.0]], np.float32)
    assert np.allclose(prepare_mask(mask, MaskParams(invert=True)), [[1.0, 0.75, 0.0]])


@settings(max_examples=80, deadline=None)
@given(
    sparse_masks(),
    st.integers(32, 128),
    st.sampled_from([(64, 64), (128, 96), (96, 128), (160, 64)]),
)
def test_crop_region_is_diffusers_contains_bbox_and_stays_inside(mask, pad, size):
    height, width = mask.shape
    width_p, height_p = size
    box = crop_region(mask, width_p, height_p, pad)
    assert box == tuple(VaeImageProcessor.get_crop_region(mask_to_pil(mask), width_p, height_p, pad=pad))
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    ys, xs = np.nonzero(np.asarray(mask_to_pil(mask)))
    assume(len(xs) > 0)
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
    bounds = mask_bounds(mask, pad)
    assert x1 <= bounds[0] and y1 <= bounds[1] and bounds[2] <= x2 and bounds[3] <= y2


def test_empty_mask_crop_is_whole_image():
    empty = np.zeros((30, 40), np.float32)
    assert mask_bounds(empty, 32) is None
    assert crop_region(empty, 64, 64, 32) == (0, 0, 40, 30)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MaskParams.from_inputs(expand=65), "mask_expand: must be an integer in [0, 64], got 65"),
        (lambda: MaskParams.from_inputs(blur=161), "mask_blur: must be an integer in [0, 160], got 161"),
        (lambda: MaskParams.from_inputs(blur=-1), "mask_blur: must be an integer in [0, 160], got -1"),
        (lambda: INPAINT["mask_margin"].check(20), "mask_margin: must be an integer in [32, 128], got 20"),
        (lambda: INPAINT["mask_margin"].check(129), "mask_margin: must be an integer in [32, 128], got 129"),
    ],
)
def test_ranges_name_the_field(call, message):
    with pytest.raises(InvalidInputError) as info:
        call()
    assert str(info.value) == message
