"""Detector maths for the MediaPipe graphs: letterboxing, SSD anchors, box decoding, suppression.

MediaPipe does this in C++ calculators that do not ship as a Python library (``ImageToTensor``,
``SsdAnchors``, ``TensorsToDetections``, ``NonMaxSuppression``, ``DetectionLetterboxRemoval``), so the
few formulas are restated here, with the calculators' option values for each model. Suppression is
OpenCV's ``cv2.dnn.NMSBoxes`` (plain NMS where MediaPipe blends overlapping boxes; the kept box is the
highest-scoring one instead of a weighted average, a few pixels' difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SsdModel:
    """One SSD-style detector graph: its input and the options of MediaPipe's anchor and decoding
    calculators for it (from the model's ``*_cpu.pbtxt`` graph in MediaPipe)."""

    input_size: int
    strides: tuple[int, ...]
    num_keypoints: int
    value_range: tuple[float, float]  # the input tensor's float range
    min_suppression: float = 0.3
    anchor_offset: float = 0.5

    @property
    def anchors(self) -> np.ndarray:
        return ssd_anchors(self.input_size, self.strides, self.anchor_offset)


# face_detection_short_range.tflite: 128x128 in [-1, 1], 896 anchors, 6 keypoints (right eye, left eye,
# nose tip, mouth centre, right ear tragion, left ear tragion).
FACE_DETECTOR = SsdModel(128, (8, 16, 16, 16), num_keypoints=6, value_range=(-1.0, 1.0))
# palm_detection_lite.tflite: 192x192 in [0, 1], 2016 anchors, 7 keypoints (wrist, finger bases...).
PALM_DETECTOR = SsdModel(192, (8, 16, 16, 16), num_keypoints=7, value_range=(0.0, 1.0))


@dataclass(frozen=True)
class Detection:
    """A box in image pixels, its score, and keypoints (K, 2) in image pixels."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float
    keypoints: np.ndarray

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Scores from logits clipped to +-100, as MediaPipe's calculators clip them (float64: no overflow)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, dtype=np.float64), -100.0, 100.0)))


def ssd_anchors(input_size: int, strides: tuple[int, ...], offset: float = 0.5) -> np.ndarray:
    """Anchor centres (N, 2), normalised, in the order of the model's outputs.

    MediaPipe's ``SsdAnchorsCalculator`` with fixed-size anchors and aspect ratio 1: consecutive layers
    of the same stride merge, and each layer contributes two anchors per cell (the scale and the
    interpolated scale), all of size 1, so only the centres matter.
    """
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        repeats = 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += 2
            layer += 1
        cells = int(np.ceil(input_size / stride))
        y, x = np.mgrid[0:cells, 0:cells]
        grid = np.stack([(x + offset) / cells, (y + offset) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, repeats, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a square model input (scaled, then padded equally on both sides)."""

    scale: float
    pad_x: float
    pad_y: float
    size: int

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Normalised model-input coordinates (..., 2) -> image pixels."""
        return (points * self.size - np.array([self.pad_x, self.pad_y])) / self.scale


def letterbox(image: np.ndarray, size: int, value_range: tuple[float, float]) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 (H, W, 3) -> model input (1, size, size, 3) float32 in ``value_range``, keeping the
    aspect ratio and padding with zeros, as MediaPipe's ``ImageToTensorCalculator`` does."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    low, high = value_range
    canvas = np.full((size, size, 3), low, dtype=np.float32)  # zero pixels, in the model's range
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = (
        resized.astype(np.float32) / 255.0 * (high - low) + low
    )
    return canvas[None], Letterbox(scale, pad_x, pad_y, size)


def stretch(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 -> (1, size, size, 3) float32 in [0, 1], stretched (as selfie segmentation is fed)."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return (resized.astype(np.float32) / 255.0)[None]


def decode_ssd(
    regressors: np.ndarray,
    scores: np.ndarray,
    model: SsdModel,
    box: Letterbox,
    min_score: float,
    max_detections: int,
) -> list[Detection]:
    """Raw SSD outputs (1, N, 4 + 2K) and (1, N, 1) -> detections in image pixels, best first.

    ``TensorsToDetectionsCalculator`` with reverse output order (x, y, w, h), scales equal to the input
    size, scores through a sigmoid of the logit clipped to +-100; then non-maximum suppression.
    """
    anchors = model.anchors
    raw = regressors.reshape(-1, regressors.shape[-1])
    probability = sigmoid(scores.reshape(-1))
    keep = np.flatnonzero(probability >= min_score)
    if keep.size == 0:
        return []
    size = float(model.input_size)
    centre = raw[keep, 0:2] / size + anchors[keep]
    half = raw[keep, 2:4] / size / 2
    corners = box.to_image(np.concatenate([centre - half, centre + half], axis=1).reshape(-1, 2)).reshape(
        -1, 4
    )
    keypoints = raw[keep, 4 : 4 + 2 * model.num_keypoints].reshape(-1, model.num_keypoints, 2) / size
    keypoints = box.to_image(keypoints + anchors[keep][:, None, :])
    boxes_xywh = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in corners]
    chosen = cv2.dnn.NMSBoxes(boxes_xywh, probability[keep].tolist(), min_score, model.min_suppression)
    chosen = np.asarray(chosen, dtype=int).reshape(-1)[:max_detections]
    return [
        Detection(*(float(v) for v in corners[i]), float(probability[keep][i]), keypoints[i]) for i in chosen
    ]
