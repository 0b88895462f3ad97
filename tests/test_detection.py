"""Detector maths (anchors, letterbox, decoding) and the TFLite -> ONNX conversion of MediaPipe's
graphs, checked against the TFLite interpreter."""

import numpy as np
import pytest

from triton_inpaint.export.masking.detectors import DETECTOR_GRAPHS, MAX_DIFF
from triton_inpaint.masks.detection import (
    FACE_DETECTOR,
    PALM_DETECTOR,
    Letterbox,
    decode_ssd,
    letterbox,
    ssd_anchors,
)


def test_anchor_counts_and_order_match_the_graphs():
    # 16x16 cells x 2 anchors + 8x8 cells x 6 anchors (three stride-16 layers merged) = 896.
    assert FACE_DETECTOR.anchors.shape == (896, 2)
    assert PALM_DETECTOR.anchors.shape == (2016, 2)
    anchors = ssd_anchors(128, (8, 16, 16, 16))
    assert np.allclose(anchors[:3], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])
    assert np.allclose(anchors[512], [0.5 / 8, 0.5 / 8]) and np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_letterbox_keeps_aspect_and_maps_back():
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    tensor, box = letterbox(image, 128, (-1.0, 1.0))
    assert tensor.shape == (1, 128, 128, 3)
    # 200x100 -> 128x64, padded by 32 rows above and below with the range's zero (-1).
    assert tensor[0, 31, 64, 0] == -1.0 and tensor[0, 32, 64, 0] == 1.0 and tensor[0, 96, 64, 0] == -1.0
    corners = box.to_image(np.array([[0.0, 0.25], [1.0, 0.75]]))
    assert np.allclose(corners, [[0, 0], [200, 100]])


def test_decoding_one_confident_anchor():
    box = Letterbox(scale=1.0, pad_x=0, pad_y=0, size=128)
    regressors = np.zeros((1, 896, 16), dtype=np.float32)
    scores = np.full((1, 896, 1), -10.0, dtype=np.float32)
    anchor = 600
    regressors[0, anchor, :4] = [4.0, -2.0, 32.0, 16.0]  # centre offset and size, in input pixels
    scores[0, anchor] = 3.0
    (found,) = decode_ssd(regressors, scores, FACE_DETECTOR, box, min_score=0.5, max_detections=5)
    cx, cy = FACE_DETECTOR.anchors[anchor] * 128 + [4.0, -2.0]
    assert np.allclose(
        [found.x_min, found.y_min, found.x_max, found.y_max], [cx - 16, cy - 8, cx + 16, cy + 8], atol=1e-4
    )
    assert found.score == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert decode_ssd(regressors, scores, FACE_DETECTOR, box, min_score=0.99, max_detections=5) == []


def test_overlapping_detections_are_suppressed():
    box = Letterbox(1.0, 0, 0, 128)
    regressors = np.zeros((1, 896, 16), dtype=np.float32)
    scores = np.full((1, 896, 1), -10.0, dtype=np.float32)
    for anchor, score in ((600, 2.0), (601, 4.0)):  # two anchors at the same cell: same box
        regressors[0, anchor, :4] = [0, 0, 40, 40]
        scores[0, anchor] = score
    (kept,) = decode_ssd(regressors, scores, FACE_DETECTOR, box, 0.5, 5)
    assert kept.score == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_every_detector_converts_and_matches_tflite(detector_repository):
    repository, checks = detector_repository
    assert {check.model for check in checks} == set(DETECTOR_GRAPHS)
    for check in checks:
        print(f"{check.model}: max |onnx - tflite| = {check.max_abs_diff:.1e}")
        assert check.max_abs_diff <= MAX_DIFF
        assert (repository / check.model / "1" / "model.onnx").is_file()
        assert (repository / check.model / "config.pbtxt").is_file()
