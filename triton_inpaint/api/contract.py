"""The tensor contract between the client, the ensemble and its steps: names, types, shapes.

The request's tensors are its controls as declared in ``schema.py``; each ensemble step reads the
controls of its stage. Names stay the same from stage to stage (``original_image`` is ``original_image``
in preprocess, denoise and postprocess), so configs need no name mapping. Exported configs are written
from these lists, and the built-in models complete their configs from them when Triton loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from triton_inpaint.api.schema import DENOISE, INPAINT, MASK, POSTPROCESS, PREPROCESS, Control

# How library code reaches a network or another model: run(model, inputs, output names) -> outputs.
# In Triton it is BLS (``triton/io.py``); in tests, onnxruntime (``components.onnx_runner``).
Runner = Callable[[str, dict[str, Any], list[str]], list[Any]]

# The networks' largest batch (their configs' max_batch_size), which the denoise model's in-flight
# batcher fills, and the requests one denoise instance advances together by default.
NETWORK_MAX_BATCH = 8
DEFAULT_MAX_INFLIGHT = 4


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's config enum name, e.g. "TYPE_STRING"
    dims: tuple[int, ...]
    optional: bool = False
    description: str = ""

    @property
    def client_dtype(self) -> str:
        """The tritonclient datatype string (``BYTES``, ``INT32``...)."""
        return {
            "TYPE_STRING": "BYTES",
            "TYPE_FP32": "FP32",
            "TYPE_INT32": "INT32",
            "TYPE_INT64": "INT64",
            "TYPE_UINT8": "UINT8",
            "TYPE_BOOL": "BOOL",
        }[self.data_type]


def control_tensor(control: Control) -> TensorSpec:
    """A request control as the shape-[1] tensor that carries it."""
    description = control.description + (f"; {control.allowed}" if control.allowed else "")
    return TensorSpec(control.name, control.data_type, (1,), not control.required, description)


REQUEST_INPUTS: tuple[TensorSpec, ...] = tuple(control_tensor(control) for control in INPAINT)
RESPONSE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_image", "TYPE_STRING", (-1,), description="the inpainted images, one per seed"),
    TensorSpec("output_seed", "TYPE_INT64", (-1,), description="the seed of each image"),
    TensorSpec(
        "output_mask", "TYPE_STRING", (1,), description="the mask used (after invert, expand, blur), PNG"
    ),
)


def stage_inputs(stage: str) -> tuple[TensorSpec, ...]:
    """The request tensors the ensemble step ``stage`` reads: the controls it implements."""
    return tuple(control_tensor(control) for control in INPAINT.at(stage))


# Tensors between the steps of the ensemble.
ORIGINAL_IMAGE = TensorSpec("original_image", "TYPE_UINT8", (-1, -1, 3))
SOFT_MASK = TensorSpec("soft_mask", "TYPE_FP32", (-1, -1))
GENERATED_IMAGE = TensorSpec("generated_image", "TYPE_UINT8", (-1, -1, -1, 3))
CROP_BOX = TensorSpec("crop_box", "TYPE_INT32", (4,))

PREPROCESS_INPUTS = stage_inputs(PREPROCESS)
PREPROCESS_OUTPUTS = (ORIGINAL_IMAGE, SOFT_MASK, RESPONSE_OUTPUTS[2])
DENOISE_INPUTS = (ORIGINAL_IMAGE, SOFT_MASK, *stage_inputs(DENOISE))
DENOISE_OUTPUTS = (GENERATED_IMAGE, CROP_BOX, RESPONSE_OUTPUTS[1])
POSTPROCESS_INPUTS = (GENERATED_IMAGE, CROP_BOX, ORIGINAL_IMAGE, SOFT_MASK, *stage_inputs(POSTPROCESS))
POSTPROCESS_OUTPUTS = (RESPONSE_OUTPUTS[0],)

STAGE_TENSORS = {
    PREPROCESS: (PREPROCESS_INPUTS, PREPROCESS_OUTPUTS),
    DENOISE: (DENOISE_INPUTS, DENOISE_OUTPUTS),
    POSTPROCESS: (POSTPROCESS_INPUTS, POSTPROCESS_OUTPUTS),
}

PREPROCESS_MODEL = "inpaint_preprocess"
POSTPROCESS_MODEL = "inpaint_postprocess"


def ensemble_name(checkpoint_name: str) -> str:
    return f"inpaint_{checkpoint_name}"


def denoise_name(checkpoint_name: str) -> str:
    return f"{checkpoint_name}_denoise"


# image_masking: masks from the detectors (``export detectors`` writes it beside them).
MASKING_MODEL = "image_masking"
MASKING_INPUTS: tuple[TensorSpec, ...] = tuple(control_tensor(control) for control in MASK)
MASKING_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("mask_image", "TYPE_STRING", (1,), description="the mask as PNG: white = selected"),
    TensorSpec(
        "detections", "TYPE_STRING", (1,), description="JSON list of x_min, y_min, x_max, y_max, score, label"
    ),
)


# The detectors ``export detectors`` writes, which image_masking runs.
DETECTOR_MODELS = (
    "detector_face", "detector_face_landmark", "detector_palm", "detector_hand_landmark", "detector_person"
)  # fmt: skip


# text_segmentation: a CLIPSeg-architecture model for mask prompts no detector answers (``export clipseg``).
TEXT_SEGMENTATION_MODEL = "text_segmentation"
TEXT_SEGMENTATION_NETWORK = "text_segmentation_network"
TEXT_SEGMENTATION_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("image", "TYPE_UINT8", (-1, -1, 3), description="decoded RGB image"),
    TensorSpec("prompt", "TYPE_STRING", (-1,), description="UTF-8 phrases, each segmented on its own"),
)
TEXT_SEGMENTATION_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("probability", "TYPE_FP32", (-1, -1, -1), description="per phrase, per pixel, 0-1"),
)

# Models of the product's own: an exported checkpoint's models must never take one of these names.
RESERVED_MODEL_NAMES = (
    PREPROCESS_MODEL,
    POSTPROCESS_MODEL,
    MASKING_MODEL,
    TEXT_SEGMENTATION_MODEL,
    TEXT_SEGMENTATION_NETWORK,
    *DETECTOR_MODELS,
)
