"""Masks from detectors: faces, facial features, hands and persons, the way users name them.

The detector graphs are MediaPipe's (see ``export/masking/detectors.py``); this module is the glue MediaPipe's
C++ graphs would otherwise provide: detection, the rotated region of interest for the landmark models,
landmarks back to image pixels, and regions to masks. Like the denoising pipelines, it reaches the
networks only through a runner (``run(model, inputs, outputs)``), so the same code runs in Triton (BLS)
and in tests (onnxruntime).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from triton_inpaint.api.contract import DETECTOR_MODELS, TEXT_SEGMENTATION_MODEL, Runner
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schema import MASK, MASKING_MODELS
from triton_inpaint.masks.detection import (
    FACE_DETECTOR,
    PALM_DETECTOR,
    Detection,
    decode_ssd,
    letterbox,
    sigmoid,
    stretch,
)
from triton_inpaint.masks.shaping import blur_mask, expand_mask

FACE_MESH_FILE = "face_mesh.json"  # the landmark index sets, beside the image_masking model
FACE_MODEL, FACE_LANDMARK_MODEL, PALM_MODEL, HAND_LANDMARK_MODEL, PERSON_MODEL = DETECTOR_MODELS
# Which face-mesh index sets (read from MediaPipe's face_mesh_connections.py at export) make a region.
MESH_REGIONS = {
    "face_mesh": (("face", "FACEMESH_FACE_OVAL"),),
    "eyes": (("right_eye", "FACEMESH_RIGHT_EYE"), ("left_eye", "FACEMESH_LEFT_EYE")),
    "nose": (("nose", "FACEMESH_NOSE"),),
    "lips": (("lips", "FACEMESH_LIPS"),),
}


# Mask prompts the detectors answer without a text-segmentation model: word -> (model, invert).
PROMPT_WORDS: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(("face", "faces"), ("face", False)),
    **dict.fromkeys(("eye", "eyes"), ("eyes", False)),
    **dict.fromkeys(("nose", "noses"), ("nose", False)),
    **dict.fromkeys(("lips", "lip", "mouth", "mouths"), ("lips", False)),
    **dict.fromkeys(("hand", "hands"), ("hands", False)),
    **dict.fromkeys(("person", "persons", "people", "body", "bodies"), ("person", False)),
    **dict.fromkeys(("background", "backgrounds"), ("person", True)),
}


TEXT_MODEL = "text"  # prompts no detector answers go to the text-segmentation (CLIPSeg) model
_FILLER_WORDS = ("the", "a", "an", "her", "his", "their", "its")
MAX_PROMPT_PHRASES = 8


def resolve_prompt(prompt: str, field: str = "prompt") -> tuple[str, bool, tuple[str, ...]]:
    """(masking model, invert, phrases) for a mask prompt.

    A single word the detectors answer ("eyes", "the background") picks that detector, which is
    exact and needs no extra weights; anything else ("hair", "hat, scarf") goes to the text-segmentation
    model, one phrase per comma, whose masks are joined.
    """
    words = [w for w in prompt.strip().lower().replace(",", " ").split() if w not in _FILLER_WORDS]
    if len(words) == 1 and words[0] in PROMPT_WORDS:
        model, invert = PROMPT_WORDS[words[0]]
        return model, invert, ()
    phrases = tuple(p.strip() for p in prompt.split(",") if p.strip())
    if not phrases:
        raise InvalidInputError(field, "is empty; say what to mask, e.g. 'face' or 'hair'")
    if len(phrases) > MAX_PROMPT_PHRASES:
        raise InvalidInputError(
            field, f"has {len(phrases)} comma-separated phrases; at most {MAX_PROMPT_PHRASES} are segmented"
        )
    return TEXT_MODEL, False, phrases


def text_model_missing(prompt: str, field: str = "prompt") -> InvalidInputError:
    """The error for a prompt only a text-segmentation model answers, when none is served."""
    return InvalidInputError(
        field,
        f"no detector answers {prompt!r} and no text-segmentation model is served. Without one, mask "
        f"prompts are: {', '.join(PROMPT_WORDS)}. For other words, export CLIPSeg weights with "
        "'triton-inpaint export clipseg --weights DIR --repository REPO'",
    )


@dataclass(frozen=True)
class MaskingParams:
    model: str
    confidence: float = MASK["confidence"].default
    max_detections: int = MASK["max_detections"].default
    padding: int = MASK["padding"].default
    blur: int = MASK["blur"].default
    invert: bool = False
    phrases: tuple[str, ...] = ()  # what the text-segmentation model looks for (model "text")
    prompt: str | None = None  # the prompt as sent, for messages

    @classmethod
    def from_inputs(
        cls,
        model: str | None,
        prompt: str | None = None,
        confidence: float | None = None,
        max_detections: int | None = None,
        padding: int | None = None,
        blur: int | None = None,
        invert: bool | None = None,
        fields: tuple[str, str] = ("model", "prompt"),
    ) -> MaskingParams:
        """Validated parameters; every error names the field and its allowed values.

        ``fields`` are the public names of the model and prompt inputs (``mask_model`` and
        ``mask_prompt`` when the mask is made for an inpainting request).
        """
        if (model is None) == (prompt is None):
            raise InvalidInputError(fields[0], f"send a masking model or a {fields[1]}, one of the two")
        phrases: tuple[str, ...] = ()
        invert = bool(invert)
        if prompt is not None:
            name, inverted, phrases = resolve_prompt(prompt, fields[1])
            invert = invert != inverted  # "background" is the inverted person; invert flips it back
        else:
            name = model.strip().lower().replace("-", "_")
            if name not in MASKING_MODELS:
                raise InvalidInputError(
                    fields[0], f"unknown masking model {model!r}; choose one of: {', '.join(MASKING_MODELS)}"
                )
        values = MASK.check_each(
            {"confidence": confidence, "max_detections": max_detections, "padding": padding, "blur": blur}
        )
        return cls(
            model=name,
            confidence=values["confidence"],
            max_detections=values["max_detections"],
            padding=values["padding"],
            blur=values["blur"],
            invert=invert,
            phrases=phrases,
            prompt=prompt,
        )


@dataclass(frozen=True)
class Region:
    """One detected region: its box in image pixels, score and label."""

    x_min: int
    y_min: int
    x_max: int
    y_max: int
    score: float
    label: str

    def as_dict(self) -> dict[str, object]:
        return {
            "x_min": self.x_min,
            "y_min": self.y_min,
            "x_max": self.x_max,
            "y_max": self.y_max,
            "score": round(self.score, 4),
            "label": self.label,
        }


def _roi_transform(centre: np.ndarray, size: float, angle: float, side: int) -> np.ndarray:
    """The affine map from the image to a ``side`` x ``side`` crop of a square of ``size`` pixels
    centred at ``centre`` and rotated by ``angle`` (MediaPipe's rotated region of interest)."""
    cos, sin = math.cos(angle), math.sin(angle)
    axis_x, axis_y = np.array([cos, sin]) * size / 2, np.array([-sin, cos]) * size / 2
    source = np.float32([centre - axis_x - axis_y, centre + axis_x - axis_y, centre - axis_x + axis_y])
    target = np.float32([[0, 0], [side, 0], [0, side]])
    return cv2.getAffineTransform(source, target)


def _rotation(start: np.ndarray, end: np.ndarray, target: float) -> float:
    """MediaPipe's ``DetectionsToRectsCalculator`` rotation: the angle turning start->end to target."""
    angle = target - math.atan2(-(end[1] - start[1]), end[0] - start[0])
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def _hull_region(
    points: np.ndarray, score: float, label: str, shape: tuple[int, int]
) -> tuple[Region, np.ndarray]:
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    x, y, w, h = cv2.boundingRect(hull)
    height, width = shape
    region = Region(max(0, x), max(0, y), min(width, x + w), min(height, y + h), score, label)
    return region, hull


def regions_from_probability(
    probability: np.ndarray, phrases: tuple[str, ...], confidence: float, max_detections: int
) -> tuple[np.ndarray, list[Region]]:
    """The selected pixels and regions of per-phrase probability maps (phrases, H, W): the connected
    parts above ``confidence``, the ``max_detections`` with the most probability mass, best first."""
    found: list[tuple[float, Region, int, int]] = []  # (mass, region, phrase index, component label)
    labelled = []
    for index, (phrase, phrase_probability) in enumerate(zip(phrases, probability, strict=True)):
        above = (phrase_probability > confidence).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
        labelled.append(labels)
        # Mass per component in one pass: a map may hold thousands of small parts.
        mass = np.bincount(labels.ravel(), weights=phrase_probability.ravel(), minlength=count)
        for label in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[label])
            region = Region(x, y, x + w, y + h, float(mass[label] / area), phrase)
            found.append((float(mass[label]), region, index, label))
    found.sort(key=lambda item: -item[0])
    kept = found[:max_detections]
    selected = np.zeros(probability.shape[1:], dtype=bool)
    for index, labels in enumerate(labelled):
        chosen = [label for _, _, i, label in kept if i == index]
        if chosen:
            selected |= np.isin(labels, chosen)
    return selected, [region for _, region, _, _ in kept]


class Masker:
    """Runs one masking request against the detector models."""

    def __init__(
        self,
        run: Runner,
        face_mesh: dict[str, list[int]],
        ready: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.run = run
        self.face_mesh = face_mesh
        self.ready = ready  # whether an optional model (text segmentation) is served

    # -- detectors --------------------------------------------------------------------------------

    def faces(self, image: np.ndarray, params: MaskingParams) -> list[Detection]:
        tensor, box = letterbox(image, FACE_DETECTOR.input_size, FACE_DETECTOR.value_range)
        regressors, scores = self.run(FACE_MODEL, {"input": tensor}, ["regressors", "classificators"])
        return decode_ssd(regressors, scores, FACE_DETECTOR, box, params.confidence, params.max_detections)

    def palms(self, image: np.ndarray, params: MaskingParams) -> list[Detection]:
        tensor, box = letterbox(image, PALM_DETECTOR.input_size, PALM_DETECTOR.value_range)
        regressors, scores = self.run(PALM_MODEL, {"input_1": tensor}, ["Identity", "Identity_1"])
        return decode_ssd(regressors, scores, PALM_DETECTOR, box, params.confidence, params.max_detections)

    def _landmarks(
        self, image: np.ndarray, model: str, side: int, transform: np.ndarray, outputs: list[str]
    ) -> tuple[np.ndarray, float]:
        crop = cv2.warpAffine(image, transform, (side, side), flags=cv2.INTER_LINEAR, borderValue=0)
        values, presence = self.run(model, {"input_1": (crop.astype(np.float32) / 255.0)[None]}, outputs)
        points = values.reshape(-1, 3)[:, :2]
        inverse = cv2.invertAffineTransform(transform)
        return points @ inverse[:, :2].T + inverse[:, 2], float(sigmoid(presence.reshape(-1)[:1])[0])

    def face_landmarks(self, image: np.ndarray, face: Detection) -> tuple[np.ndarray, float]:
        """468 landmarks (pixels) of a detected face: the box grown 1.5x, square, rotated so the eyes
        are level (``face_landmark_front`` graph), read at 192x192."""
        angle = _rotation(face.keypoints[0], face.keypoints[1], 0.0)
        centre = np.array([(face.x_min + face.x_max) / 2, (face.y_min + face.y_max) / 2])
        transform = _roi_transform(centre, max(face.width, face.height) * 1.5, angle, 192)
        return self._landmarks(image, FACE_LANDMARK_MODEL, 192, transform, ["conv2d_21", "conv2d_31"])

    def hand_landmarks(self, image: np.ndarray, palm: Detection) -> tuple[np.ndarray, float]:
        """21 landmarks (pixels) of the hand a palm belongs to: the palm box rotated so wrist->middle
        finger points up, shifted half a box towards the fingers, grown 2.6x (``hand_landmark`` graph's
        palm-to-hand region), read at 224x224."""
        angle = _rotation(palm.keypoints[0], palm.keypoints[2], math.pi / 2)
        size = max(palm.width, palm.height)
        centre = np.array([(palm.x_min + palm.x_max) / 2, (palm.y_min + palm.y_max) / 2])
        # RectTransformationCalculator's shift_y = -0.5, along the rotated box's own y axis.
        centre = centre + 0.5 * palm.height * np.array([math.sin(angle), -math.cos(angle)])
        transform = _roi_transform(centre, size * 2.6, angle, 224)
        return self._landmarks(image, HAND_LANDMARK_MODEL, 224, transform, ["Identity", "Identity_1"])

    # -- the request ------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, params: MaskingParams) -> tuple[np.ndarray, list[Region]]:
        """The mask (H, W uint8, 255 = selected) and the regions found, best first."""
        shape = image.shape[:2]
        mask = np.zeros(shape, dtype=np.uint8)
        regions: list[Region] = []
        if params.model == "person":
            regions = self._person(image, params, mask)
        elif params.model == TEXT_MODEL:
            regions = self._text(image, params, mask)
        elif params.model == "face":
            for face in self.faces(image, params):
                x0, y0 = max(0, round(face.x_min)), max(0, round(face.y_min))
                x1, y1 = min(shape[1], round(face.x_max)), min(shape[0], round(face.y_max))
                regions.append(Region(x0, y0, x1, y1, face.score, "face"))
                mask[y0:y1, x0:x1] = 255
        elif params.model == "hands":
            for palm in self.palms(image, params):
                points, presence = self.hand_landmarks(image, palm)
                if presence >= params.confidence:
                    region, hull = _hull_region(points, palm.score * presence, "hand", shape)
                    regions.append(region)
                    cv2.fillConvexPoly(mask, hull, 255)
        else:
            for face in self.faces(image, params):
                points, presence = self.face_landmarks(image, face)
                if presence < params.confidence:
                    continue
                for label, index_set in MESH_REGIONS[params.model]:
                    region, hull = _hull_region(
                        points[self.face_mesh[index_set]], face.score * presence, label, shape
                    )
                    regions.append(region)
                    cv2.fillConvexPoly(mask, hull, 255)
        return self._finish(mask, params), regions

    def _person(self, image: np.ndarray, params: MaskingParams, mask: np.ndarray) -> list[Region]:
        (probability,) = self.run(PERSON_MODEL, {"input_1": stretch(image, 256)}, ["activation_10"])
        height, width = mask.shape
        probability = cv2.resize(probability[0, :, :, 0], (width, height), interpolation=cv2.INTER_LINEAR)
        selected = probability > max(params.confidence, 0.5)
        if not selected.any():
            return []
        mask[selected] = 255
        ys, xs = np.nonzero(selected)
        score = float(probability[selected].mean())
        return [Region(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, score, "person")]

    def _text(self, image: np.ndarray, params: MaskingParams, mask: np.ndarray) -> list[Region]:
        if not self.ready(TEXT_SEGMENTATION_MODEL):
            raise text_model_missing(params.prompt or ", ".join(params.phrases))
        phrases = np.array([phrase.encode() for phrase in params.phrases], dtype=np.object_)
        (probability,) = self.run(
            TEXT_SEGMENTATION_MODEL, {"image": image, "prompt": phrases}, ["probability"]
        )
        selected, regions = regions_from_probability(
            probability, params.phrases, params.confidence, params.max_detections
        )
        mask[selected] = 255
        return regions

    @staticmethod
    def _finish(mask: np.ndarray, params: MaskingParams) -> np.ndarray:
        """Padding (grow), invert, blur (feather), in that order; 0-255 uint8."""
        soft = expand_mask(mask.astype(np.float32) / 255.0, params.padding)
        if params.invert:
            soft = 1.0 - soft
        soft = blur_mask(soft, params.blur)
        return np.clip(np.round(soft * 255), 0, 255).astype(np.uint8)
