"""Masks from MediaPipe's detectors on a real photo (skimage's astronaut), through onnxruntime."""

import json

import cv2
import numpy as np
import pytest
import skimage.data

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.export.masking.detectors import DETECTOR_GRAPHS
from triton_inpaint.masks.detectors import (
    FACE_MESH_FILE,
    MASKING_MODELS,
    TEXT_MODEL,
    Masker,
    MaskingParams,
    resolve_prompt,
)
from triton_inpaint.networks.runners import onnx_runner

ASTRONAUT_FACE = (177, 82, 177 + 95, 82 + 95)  # where MediaPipe's own face detector puts it


def iou(a, b):
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def masker(detector_repository):
    repository, _ = detector_repository
    run = onnx_runner({name: repository / name / "1" / "model.onnx" for name in DETECTOR_GRAPHS})
    mesh = json.loads((repository / "image_masking" / "1" / FACE_MESH_FILE).read_text())
    return Masker(run, mesh)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


def box(region):
    return (region.x_min, region.y_min, region.x_max, region.y_max)


def test_face_finds_the_one_face(masker, astronaut):
    mask, regions = masker(astronaut, MaskingParams.from_inputs("face", padding=0, blur=0))
    (face,) = regions
    print(f"face {box(face)} score {face.score:.3f} IoU {iou(box(face), ASTRONAUT_FACE):.3f}")
    assert face.label == "face" and face.score > 0.8
    assert iou(box(face), ASTRONAUT_FACE) >= 0.7
    assert (mask == 255).sum() == (face.x_max - face.x_min) * (face.y_max - face.y_min)


def test_person_marks_the_person(masker, astronaut):
    mask, (person,) = masker(astronaut, MaskingParams.from_inputs("person", blur=0))
    fraction = (mask > 127).mean()
    print(f"person marks {fraction:.1%} of the image")
    assert 0.40 <= fraction <= 0.70
    assert mask[ASTRONAUT_FACE[1] + 40, ASTRONAUT_FACE[0] + 40] == 255  # the face is part of the person
    assert mask[20, 450] == 0  # the backdrop is not


@pytest.mark.parametrize(
    ("model", "labels"), [("eyes", ["right_eye", "left_eye"]), ("nose", ["nose"]), ("lips", ["lips"])]
)
def test_facial_features_lie_inside_the_face(masker, astronaut, model, labels):
    _, (face,) = masker(astronaut, MaskingParams.from_inputs("face"))
    mask, regions = masker(astronaut, MaskingParams.from_inputs(model, padding=0, blur=0))
    assert [r.label for r in regions] == labels
    for region in regions:
        assert face.x_min <= region.x_min < region.x_max <= face.x_max
        assert face.y_min <= region.y_min < region.y_max <= face.y_max
    assert (mask > 0).sum() < 0.3 * (face.x_max - face.x_min) * (face.y_max - face.y_min)
    if model == "eyes":
        right, left = regions
        assert right.x_max < left.x_min  # two separate regions, the subject's right eye on the left
        assert cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1 == 2


def test_face_oval_follows_a_tilted_face(masker, astronaut):
    tilt = cv2.getRotationMatrix2D((225, 130), 25, 1.0)
    tilted = cv2.warpAffine(astronaut, tilt, (512, 512))
    _, (right, left) = masker(tilted, MaskingParams.from_inputs("eyes", padding=0, blur=0))
    # Rotated 25 degrees counter-clockwise: the subject's left eye (image right) is now higher.
    assert (left.y_min + left.y_max) / 2 < (right.y_min + right.y_max) / 2 - 10
    oval, (face,) = masker(tilted, MaskingParams.from_inputs("face_mesh", padding=0, blur=0))
    assert oval[(right.y_min + right.y_max) // 2, (right.x_min + right.x_max) // 2] == 255


@pytest.mark.parametrize("model", MASKING_MODELS)
def test_blank_image_gives_an_empty_mask_and_no_detections(masker, model):
    mask, regions = masker(np.full((240, 320, 3), 200, dtype=np.uint8), MaskingParams.from_inputs(model))
    assert mask.shape == (240, 320) and mask.max() == 0 and regions == []


def test_padding_blur_and_invert(masker, astronaut):
    plain, (face,) = masker(astronaut, MaskingParams.from_inputs("face", padding=0, blur=0))
    padded, _ = masker(astronaut, MaskingParams.from_inputs("face", padding=10, blur=0))
    assert (
        padded[face.y_min - 9, (face.x_min + face.x_max) // 2] == 255
        and plain[face.y_min - 9, face.x_min + 40] == 0
    )
    blurred, _ = masker(astronaut, MaskingParams.from_inputs("face", padding=0, blur=8))
    assert 0 < blurred[face.y_min, face.x_min + 40] < 255  # the edge is feathered
    assert blurred[face.y_min - 9, face.x_min + 40] == 0  # nothing beyond the blur's reach
    inverted, _ = masker(astronaut, MaskingParams.from_inputs("face", padding=0, blur=0, invert=True))
    assert np.array_equal(inverted, 255 - plain)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"model": "elbows"}, "model: unknown masking model 'elbows'; choose one of: face, face_mesh"),
        ({"model": "face", "confidence": 1.5}, "confidence: must be a number in [0.0, 1.0], got 1.5"),
        ({"model": "face", "max_detections": 0}, "max_detections: must be an integer in [1, 20], got 0"),
        ({"model": "face", "padding": -1}, "padding: must be an integer in [0, 256], got -1"),
        ({"model": "face", "blur": 161}, "blur: must be an integer in [0, 160], got 161"),
    ],
)
def test_parameters_are_checked(inputs, message):
    with pytest.raises(InvalidInputError) as info:
        MaskingParams.from_inputs(**inputs)
    assert message in str(info.value)


def test_model_names_are_forgiving():
    assert MaskingParams.from_inputs("Face-Mesh").model == "face_mesh"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("face", ("face", False, ())),
        ("Eyes", ("eyes", False, ())),
        ("her mouth", ("lips", False, ())),
        ("hands", ("hands", False, ())),
        ("people", ("person", False, ())),
        ("the background", ("person", True, ())),
        ("hair", (TEXT_MODEL, False, ("hair",))),
        ("a purple hat, red scarf ,", (TEXT_MODEL, False, ("a purple hat", "red scarf"))),
    ],
)
def test_mask_prompts_pick_a_detector_or_the_text_model(prompt, expected):
    assert resolve_prompt(prompt) == expected


def test_prompt_and_model_are_one_or_the_other():
    for inputs in ({"model": None}, {"model": "face", "prompt": "eyes"}):
        with pytest.raises(InvalidInputError) as info:
            MaskingParams.from_inputs(**inputs, fields=("mask_model", "mask_prompt"))
        assert str(info.value).startswith("mask_model: send a masking model or a mask_prompt")
    with pytest.raises(InvalidInputError, match="mask_prompt: is empty"):
        MaskingParams.from_inputs(None, " , ", fields=("mask_model", "mask_prompt"))
    background = MaskingParams.from_inputs(None, "background", invert=True)
    assert (background.model, background.invert) == ("person", False)


def test_text_prompts_without_a_text_model_are_refused_with_the_words_that_work(detector_repository):
    repository, _ = detector_repository
    run = onnx_runner({name: repository / name / "1" / "model.onnx" for name in DETECTOR_GRAPHS})
    masker = Masker(run, {}, ready=lambda model: False)
    with pytest.raises(InvalidInputError) as info:
        masker(np.zeros((64, 64, 3), np.uint8), MaskingParams.from_inputs(None, "a purple hat"))
    message = str(info.value)
    assert info.value.field == "prompt" and "no detector answers 'a purple hat'" in message
    assert "face, faces, eye, eyes" in message and "triton-inpaint export clipseg" in message
