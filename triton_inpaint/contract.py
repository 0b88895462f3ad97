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
        }[self.data_type]


REQUEST_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("image", "TYPE_STRING", (1,), description="encoded PNG, JPEG or WEBP image"),
    TensorSpec("mask", "TYPE_STRING", (1,), description="encoded mask: white regenerates, black keeps"),
    TensorSpec("prompt", "TYPE_STRING", (1,), description="UTF-8 text describing the fill"),
    TensorSpec("negative_prompt", "TYPE_STRING", (1,), True, "UTF-8 text to steer away from"),
    TensorSpec("steps", "TYPE_INT32", (1,), True, "denoising steps, 1-100"),
    TensorSpec("strength", "TYPE_FP32", (1,), True, "0-1, how much of the masked area is regenerated"),
    TensorSpec("guidance_scale", "TYPE_FP32", (1,), True, "0-50, classifier-free guidance"),
    TensorSpec("seed", "TYPE_INT64", (1,), True, "0 to 2^63-1; random when absent"),
    TensorSpec("scheduler", "TYPE_STRING", (1,), True, "scheduler name, e.g. DDIM"),
    TensorSpec("width", "TYPE_INT32", (1,), True, "processing width, multiple of 8"),
    TensorSpec("height", "TYPE_INT32", (1,), True, "processing height, multiple of 8"),
)
RESPONSE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_image", "TYPE_STRING", (1,), description="the inpainted image, PNG"),
    TensorSpec("output_seed", "TYPE_INT64", (1,), description="the seed used"),
)

# Tensors between the steps of the ensemble.
ORIGINAL_IMAGE = TensorSpec("original_image", "TYPE_UINT8", (-1, -1, 3))
SOFT_MASK = TensorSpec("soft_mask", "TYPE_FP32", (-1, -1))
GENERATED_IMAGE = TensorSpec("generated_image", "TYPE_UINT8", (-1, -1, 3))

PREPROCESS_INPUTS = REQUEST_INPUTS[:2]
PREPROCESS_OUTPUTS = (ORIGINAL_IMAGE, SOFT_MASK)
DENOISE_INPUTS = (ORIGINAL_IMAGE, SOFT_MASK, *REQUEST_INPUTS[2:])
DENOISE_OUTPUTS = (GENERATED_IMAGE, RESPONSE_OUTPUTS[1])
POSTPROCESS_INPUTS = (GENERATED_IMAGE, ORIGINAL_IMAGE, SOFT_MASK)
POSTPROCESS_OUTPUTS = (RESPONSE_OUTPUTS[0],)

PREPROCESS_MODEL = "inpaint_preprocess"
POSTPROCESS_MODEL = "inpaint_postprocess"


def ensemble_name(checkpoint_name: str) -> str:
    return f"inpaint_{checkpoint_name}"


def denoise_name(checkpoint_name: str) -> str:
    return f"{checkpoint_name}_denoise"
