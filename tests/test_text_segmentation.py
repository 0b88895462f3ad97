"""Mask prompts through CLIPSeg: the exported network against transformers, regions from its maps, export
errors. Tiny random weights: the maps mean nothing, the arithmetic is what is checked."""

import json
import shutil

import numpy as np
import pytest
import skimage.data
import torch

from triton_inpaint.api.contract import TEXT_SEGMENTATION_MODEL, TEXT_SEGMENTATION_NETWORK
from triton_inpaint.export.masking.clipseg import export_clipseg
from triton_inpaint.masks.detectors import Masker, MaskingParams, regions_from_probability
from triton_inpaint.masks.text_segmentation import TextSegmenter, load_processor, probability_maps
from triton_inpaint.networks.runners import onnx_runner

PHRASES = ("a red hat", "hair")


def reference_probability(weights, image, phrases):
    """transformers' CLIPSeg as its model card runs it, sigmoid, resized back to the image."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(weights).eval()
    processor = CLIPSegProcessor.from_pretrained(weights)
    inputs = processor(
        text=list(phrases), images=[image] * len(phrases), padding="max_length", return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits.numpy()
    return probability_maps(logits, *image.shape[:2])


@pytest.fixture(scope="module")
def segmenter(clipseg_repository, clipseg_weights):
    repository, _ = clipseg_repository
    run = onnx_runner(
        {TEXT_SEGMENTATION_NETWORK: repository / TEXT_SEGMENTATION_NETWORK / "1" / "model.onnx"}
    )
    return TextSegmenter(run, load_processor(repository / TEXT_SEGMENTATION_MODEL / "1"))


def test_export_checked_the_network_against_pytorch(clipseg_repository):
    _, check = clipseg_repository
    print(f"CLIPSeg ONNX vs PyTorch: max |diff| {check.max_abs_diff:.1e}")
    assert check.path.is_file() and check.max_abs_diff < 1e-3


def test_onnx_probabilities_match_transformers(segmenter, clipseg_weights):
    image = skimage.data.astronaut()[:300, 50:450]
    got = segmenter(image, PHRASES)
    want = reference_probability(clipseg_weights, image, PHRASES)
    diff = np.abs(got - want).max()
    print(f"text_segmentation vs transformers: max |probability diff| {diff:.1e}")
    assert got.shape == (2, 300, 400) and diff < 1e-4


def test_regions_are_the_heaviest_connected_parts_above_confidence():
    probability = np.zeros((2, 60, 80), np.float32)
    probability[0, 5:15, 5:15] = 0.9  # mass 90
    probability[0, 30:50, 40:70] = 0.6  # mass 360
    probability[0, 55:58, 0:3] = 0.3  # under the confidence
    probability[1, 20:24, 10:14] = 0.99  # mass ~16
    selected, regions = regions_from_probability(probability, ("hat", "hair"), 0.5, 2)
    assert [(r.label, r.x_min, r.y_min, r.x_max, r.y_max) for r in regions] == [
        ("hat", 40, 30, 70, 50),
        ("hat", 5, 5, 15, 15),
    ]
    assert regions[0].score == pytest.approx(0.6)
    assert selected.sum() == 20 * 30 + 10 * 10 and not selected[20:24, 10:14].any()
    selected, regions = regions_from_probability(probability, ("hat", "hair"), 0.5, 20)
    assert len(regions) == 3 and selected[20:24, 10:14].all()
    empty, none = regions_from_probability(np.zeros((1, 8, 8), np.float32), ("x",), 0.5, 5)
    assert not empty.any() and none == []


def test_masker_sends_prompts_no_detector_answers_to_the_text_model(segmenter, clipseg_weights):
    def run(model, inputs, outputs):
        assert model == TEXT_SEGMENTATION_MODEL and outputs == ["probability"]
        return [segmenter(inputs["image"], [p.decode() for p in inputs["prompt"]])]

    image = skimage.data.astronaut()
    params = MaskingParams.from_inputs(
        None, "a red hat, hair", confidence=0.99, max_detections=5, blur=0, padding=0
    )
    mask, regions = Masker(run, {})(image, params)
    want, want_regions = regions_from_probability(
        reference_probability(clipseg_weights, image, PHRASES), PHRASES, 0.99, 5
    )
    assert len(regions) == 5 and {r.label for r in regions} <= set(PHRASES)
    assert [r.as_dict() for r in regions] == [r.as_dict() for r in want_regions]
    assert np.array_equal(mask > 0, want)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config.json", "no config.json; expected a transformers CLIPSeg folder"),
        ("model_type", "config.json says model_type 'clip', expected 'clipseg'"),
        ("tokenizer.json", "the tokenizer has 2 tokens, the text model"),
        ("processor_config.json", "cannot load the CLIPSeg processor"),
    ],
)
def test_export_refuses_incomplete_weights_and_writes_nothing(clipseg_weights, tmp_path, damage, message):
    weights = tmp_path / "weights"
    shutil.copytree(clipseg_weights, weights)
    if damage == "model_type":
        config = json.loads((weights / "config.json").read_text())
        (weights / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    else:
        (weights / damage).unlink()
    repository = tmp_path / "repository"
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        export_clipseg(weights, repository, log=lambda _: None)
    assert f"--weights {weights}: {message}" in str(info.value)
    assert not repository.exists() or not any(repository.iterdir())
