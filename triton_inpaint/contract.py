"""The tensor contract between the client, the ensemble and its steps: names, types, shapes.

Names stay the same from stage to stage (``original_image`` is ``original_image`` in preprocess,
denoise and postprocess), so configs need no name mapping. The generated configs are built from these
lists; a test checks that the hand-written ``model_repository/`` configs agree with them.
"""

from __future__ import annotations

from dataclasses import dataclass


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


REQUEST_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("image", "TYPE_STRING", (1,), description="encoded PNG, JPEG or WEBP image"),
    TensorSpec("mask", "TYPE_STRING", (1,), True, "encoded mask: white regenerates, black keeps"),
    TensorSpec("mask_model", "TYPE_STRING", (1,), True, "instead of a mask: a masking model, e.g. face"),
    TensorSpec("mask_prompt", "TYPE_STRING", (1,), True, "instead of a mask: what to mask, e.g. eyes"),
    TensorSpec("mask_invert", "TYPE_BOOL", (1,), True, "regenerate what the mask keeps, and the reverse"),
    TensorSpec("mask_expand", "TYPE_INT32", (1,), True, "grow the mask by 0-64 px"),
    TensorSpec("mask_blur", "TYPE_INT32", (1,), True, "feather the mask edge over 0-160 px"),
    TensorSpec("prompt", "TYPE_STRING", (1,), description="UTF-8 text describing the fill"),
    TensorSpec("negative_prompt", "TYPE_STRING", (1,), True, "UTF-8 text to steer away from"),
    TensorSpec("steps", "TYPE_INT32", (1,), True, "denoising steps, 1-100"),
    TensorSpec("strength", "TYPE_FP32", (1,), True, "0-1, how much of the masked area is regenerated"),
    TensorSpec("guidance_scale", "TYPE_FP32", (1,), True, "0-50, classifier-free guidance"),
    TensorSpec("seed", "TYPE_INT64", (1,), True, "0 to 2^63-1; random when absent"),
    TensorSpec("scheduler", "TYPE_STRING", (1,), True, "scheduler name, e.g. DDIM"),
    TensorSpec("width", "TYPE_INT32", (1,), True, "processing width, multiple of 8"),
    TensorSpec("height", "TYPE_INT32", (1,), True, "processing height, multiple of 8"),
    TensorSpec("mask_margin", "TYPE_INT32", (1,), True, "32-128 px: inpaint a crop around the mask"),
    TensorSpec("num_images", "TYPE_INT32", (1,), True, "1-4 images, seeds seed, seed+1, ..."),
    TensorSpec("output_format", "TYPE_STRING", (1,), True, "PNG, JPG or WEBP"),
    TensorSpec("output_quality", "TYPE_INT32", (1,), True, "1-100 for JPG and WEBP"),
    TensorSpec(
        "dry_run",
        "TYPE_BOOL",
        (1,),
        True,
        "check everything (image, mask, sizes, memory) and answer no images",
    ),
)
RESPONSE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_image", "TYPE_STRING", (-1,), description="the inpainted images, one per seed"),
    TensorSpec("output_seed", "TYPE_INT64", (-1,), description="the seed of each image"),
    TensorSpec(
        "output_mask", "TYPE_STRING", (1,), description="the mask used (after invert, expand, blur), PNG"
    ),
)
_BY_NAME = {spec.name: spec for spec in REQUEST_INPUTS}


def request_inputs(*names: str) -> tuple[TensorSpec, ...]:
    return tuple(_BY_NAME[name] for name in names)


# Tensors between the steps of the ensemble.
ORIGINAL_IMAGE = TensorSpec("original_image", "TYPE_UINT8", (-1, -1, 3))
SOFT_MASK = TensorSpec("soft_mask", "TYPE_FP32", (-1, -1))
GENERATED_IMAGE = TensorSpec("generated_image", "TYPE_UINT8", (-1, -1, -1, 3))
CROP_BOX = TensorSpec("crop_box", "TYPE_INT32", (4,))

PREPROCESS_INPUTS = request_inputs(
    "image", "mask", "mask_model", "mask_prompt", "mask_invert", "mask_expand", "mask_blur"
)
PREPROCESS_OUTPUTS = (ORIGINAL_IMAGE, SOFT_MASK, RESPONSE_OUTPUTS[2])
DENOISE_INPUTS = (
    ORIGINAL_IMAGE,
    SOFT_MASK,
    *request_inputs(
        "prompt",
        "negative_prompt",
        "steps",
        "strength",
        "guidance_scale",
        "seed",
        "scheduler",
        "width",
        "height",
        "mask_margin",
        "num_images",
        "dry_run",
    ),
)
DENOISE_OUTPUTS = (GENERATED_IMAGE, CROP_BOX, RESPONSE_OUTPUTS[1])
POSTPROCESS_INPUTS = (
    GENERATED_IMAGE,
    CROP_BOX,
    ORIGINAL_IMAGE,
    SOFT_MASK,
    *request_inputs("output_format", "output_quality"),
)
POSTPROCESS_OUTPUTS = (RESPONSE_OUTPUTS[0],)

PREPROCESS_MODEL = "inpaint_preprocess"
POSTPROCESS_MODEL = "inpaint_postprocess"


def ensemble_name(checkpoint_name: str) -> str:
    return f"inpaint_{checkpoint_name}"


def denoise_name(checkpoint_name: str) -> str:
    return f"{checkpoint_name}_denoise"


# image_masking: masks from the detectors (``export detectors`` writes it beside them).
MASKING_MODEL = "image_masking"
MASKING_INPUTS: tuple[TensorSpec, ...] = (
    REQUEST_INPUTS[0],
    TensorSpec("model", "TYPE_STRING", (1,), True, "face, face_mesh, eyes, nose, lips, hands or person"),
    TensorSpec("prompt", "TYPE_STRING", (1,), True, "instead of a model: what to mask, e.g. eyes or hair"),
    TensorSpec("confidence", "TYPE_FP32", (1,), True, "0-1, minimum detection score"),
    TensorSpec("max_detections", "TYPE_INT32", (1,), True, "1-20"),
    TensorSpec("padding", "TYPE_INT32", (1,), True, "0-256 px: grow the mask"),
    TensorSpec("blur", "TYPE_INT32", (1,), True, "0-160 px: feather the mask"),
    TensorSpec("invert", "TYPE_BOOL", (1,), True, "select everything but the detections"),
)
MASKING_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("mask_image", "TYPE_STRING", (1,), description="the mask as PNG: white = selected"),
    TensorSpec(
        "detections", "TYPE_STRING", (1,), description="JSON list of x_min, y_min, x_max, y_max, score, label"
    ),
)


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
