"""Masks from free text: a CLIPSeg-architecture model (transformers' ``CLIPSegForImageSegmentation``).

The network runs as the exported ONNX graph behind a runner, like every other network here; tokenizing
and image preprocessing are CLIPSeg's own processor (``CLIPSegProcessor``), loaded from the operator's
weights directory, so prompts and pixels reach the network exactly as they reach it in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from triton_inpaint.api.contract import TEXT_SEGMENTATION_NETWORK, Runner
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.masks.detection import sigmoid
from triton_inpaint.masks.detectors import MAX_PROMPT_PHRASES


def check_image(image: np.ndarray) -> np.ndarray:
    """The decoded image the model takes: uint8 (height, width, 3)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError("image", f"must be uint8 (height, width, 3), got {image.dtype} {image.shape}")
    return image


def check_phrases(prompt: np.ndarray) -> list[str]:
    """The phrases of a ``prompt`` tensor: 1 to MAX_PROMPT_PHRASES, none empty (the same limit
    ``image_masking`` applies to comma-separated prompts)."""
    phrases = [bytes(p).decode("utf-8", "replace").strip() for p in prompt.reshape(-1)]
    if not phrases or not all(phrases) or len(phrases) > MAX_PROMPT_PHRASES:
        raise InvalidInputError("prompt", f"send 1-{MAX_PROMPT_PHRASES} non-empty phrases")
    return phrases


NETWORK_INPUTS = ("input_ids", "attention_mask", "pixel_values")
NETWORK_OUTPUT = "logits"


def load_processor(directory: Path) -> object:
    """CLIPSeg's processor (tokenizer + image processor) saved beside the weights."""
    from transformers import CLIPSegProcessor

    return CLIPSegProcessor.from_pretrained(directory)


def network_inputs(processor: object, image: np.ndarray, phrases: Sequence[str]) -> dict[str, np.ndarray]:
    """The network's inputs for one image and its phrases, one batch row per phrase.

    Text is padded to the tokenizer's full length, so every request has the same shapes (what a
    TensorRT engine or a static ONNX graph wants) and the text model sees what it saw in training.
    """
    encoded = processor(
        text=list(phrases), images=[image] * len(phrases), padding="max_length", return_tensors="np"
    )
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
        "pixel_values": encoded["pixel_values"].astype(np.float32),
    }


def probability_maps(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-phrase probabilities at the image's size: sigmoid of the logits, resized bilinearly."""
    logits = logits.reshape(-1, *logits.shape[-2:])
    return np.stack(
        [
            cv2.resize(sigmoid(row).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            for row in logits
        ]
    )


class TextSegmenter:
    """Runs one image and its phrases through the CLIPSeg network."""

    def __init__(self, run: Runner, processor: object, network: str = TEXT_SEGMENTATION_NETWORK) -> None:
        self.run = run
        self.processor = processor
        self.network = network

    @classmethod
    def from_directory(cls, directory: Path, run: Runner) -> TextSegmenter:
        return cls(run, load_processor(directory))

    def __call__(self, image: np.ndarray, phrases: Sequence[str]) -> np.ndarray:
        """(phrases, H, W) float32 probabilities that each pixel shows the phrase."""
        (logits,) = self.run(self.network, network_inputs(self.processor, image, phrases), [NETWORK_OUTPUT])
        return probability_maps(logits, *image.shape[:2])
