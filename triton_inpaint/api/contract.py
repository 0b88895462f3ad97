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

OUTPUT_MASK = RESPONSE_OUTPUTS[2]
PROGRESS = TensorSpec("progress", "TYPE_INT32", (2,))
PREVIEW = TensorSpec("preview", "TYPE_STRING", (-1,))

# What only the streaming ensemble (``inpaint_<NAME>_stream``) takes: how often the denoise model
# answers with its progress before the result, and whether with previews.
STREAM_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("progress_every", "TYPE_INT32", (1,), optional=True,
               description="a progress response every this many steps; 0 (the default): only the result"),
    TensorSpec("with_previews", "TYPE_BOOL", (1,), optional=True,
               description="progress responses carry a small JPEG preview of each image"),
)  # fmt: skip

# What the streaming ensemble answers besides the result's outputs.
STREAM_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_progress", "TYPE_INT32", (2,),
               description="denoising steps taken and in all (the result: all of them)"),
    TensorSpec("output_preview", "TYPE_STRING", (-1,),
               description="progress responses with previews: a small JPEG of each image so far; else empty"),
)  # fmt: skip

# The streaming denoise model is decoupled (it answers with progress before its result), and Triton's
# ensembles take every input of a later step from that one model: so it passes on, renamed ``kept_*``,
# the tensors postprocess and the ensemble's outputs need from earlier (checked values of the output
# controls included).
KEPT_FROM_EARLIER = (ORIGINAL_IMAGE, SOFT_MASK, OUTPUT_MASK, *stage_inputs(POSTPROCESS))
KEPT_PREFIX = "kept_"


def kept(spec: TensorSpec) -> TensorSpec:
    """The denoise model's output that passes ``spec`` on."""
    return TensorSpec(KEPT_PREFIX + spec.name, spec.data_type, spec.dims)


PREPROCESS_INPUTS = stage_inputs(PREPROCESS)
PREPROCESS_OUTPUTS = (ORIGINAL_IMAGE, SOFT_MASK, OUTPUT_MASK)
DENOISE_INPUTS = (ORIGINAL_IMAGE, SOFT_MASK, *stage_inputs(DENOISE))
DENOISE_OUTPUTS = (GENERATED_IMAGE, CROP_BOX, RESPONSE_OUTPUTS[1])
# ``<NAME>_denoise_stream``: the same model, decoupled, in the streaming ensemble.
DENOISE_STREAM_INPUTS = (*DENOISE_INPUTS, OUTPUT_MASK, *stage_inputs(POSTPROCESS), *STREAM_INPUTS)
DENOISE_STREAM_OUTPUTS = (*DENOISE_OUTPUTS, PROGRESS, PREVIEW, *(kept(spec) for spec in KEPT_FROM_EARLIER))
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


STREAM_SUFFIX = "_stream"


def stream_ensemble_name(checkpoint_name: str) -> str:
    """The decoupled twin of ``inpaint_<NAME>``: the same steps, answered with progress before the result
    (gRPC streaming only, as every decoupled model)."""
    return ensemble_name(checkpoint_name) + STREAM_SUFFIX


Wiring = tuple[str, dict[str, str], dict[str, str]]  # model, {its input: tensor}, {its output: tensor}


def ensemble_steps(checkpoint_name: str, stream: bool = False) -> list[Wiring]:
    """Each step of ``inpaint_<NAME>`` (or its stream twin) with its inputs and outputs mapped to the
    ensemble's tensors. Names stay the same from step to step; in the stream twin, what passes through
    its denoise model (``kept_*``, see :data:`KEPT_FROM_EARLIER`) is what the later steps read."""

    def same(specs: tuple[TensorSpec, ...]) -> dict[str, str]:
        return {spec.name: spec.name for spec in specs}

    denoise = denoise_name(checkpoint_name)
    if not stream:
        return [
            (PREPROCESS_MODEL, same(PREPROCESS_INPUTS), same(PREPROCESS_OUTPUTS)),
            (denoise, same(DENOISE_INPUTS), same(DENOISE_OUTPUTS)),
            (POSTPROCESS_MODEL, same(POSTPROCESS_INPUTS), same(POSTPROCESS_OUTPUTS)),
        ]
    mask = {OUTPUT_MASK.name: "preprocessed_mask"}
    denoise_outputs = same(DENOISE_STREAM_OUTPUTS) | {
        PROGRESS.name: STREAM_OUTPUTS[0].name,
        PREVIEW.name: STREAM_OUTPUTS[1].name,
        kept(OUTPUT_MASK).name: OUTPUT_MASK.name,
    }
    passed_on = {spec.name: kept(spec).name for spec in KEPT_FROM_EARLIER if spec is not OUTPUT_MASK}
    return [
        (PREPROCESS_MODEL, same(PREPROCESS_INPUTS), same(PREPROCESS_OUTPUTS) | mask),
        (denoise + STREAM_SUFFIX, same(DENOISE_STREAM_INPUTS) | mask, denoise_outputs),
        (POSTPROCESS_MODEL, same(POSTPROCESS_INPUTS) | passed_on, same(POSTPROCESS_OUTPUTS)),
    ]


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
