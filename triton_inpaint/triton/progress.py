"""What the denoise model answers: its result and, for a streamed request, progress before it.

``<NAME>_denoise`` answers each request once, with its result. Its decoupled twin
``<NAME>_denoise_stream`` (the same model, in ``inpaint_<NAME>_stream``) answers a request that sets
``progress_every`` also after every that many steps, carrying the steps taken and, with
``with_previews``, a small JPEG of each image so far (:mod:`triton_inpaint.pipelines.previews`).
Progress responses hold no images, so postprocess passes them through at no cost. The twin's responses
also carry, as ``kept_*``, what the later steps read from earlier ones (see
``contract.KEPT_FROM_EARLIER``); progress responses carry them empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api import contract
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import encode_image
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.schema import INPAINT, POSTPROCESS
from triton_inpaint.pipelines.previews import preview_images
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.triton.io import number, read_controls, tensor

PROGRESS_EVERY_MAX = 100
PREVIEW_QUALITY = 70
_NUMPY = {"TYPE_STRING": np.object_, "TYPE_INT32": np.int32, "TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32}


@dataclass(frozen=True)
class StreamOptions:
    every: int  # a progress response every this many steps
    previews: bool


def read_stream(request: Any, spec: PipelineSpec) -> StreamOptions | None:
    """The streamed request's progress options; None: only the result (every request through
    ``inpaint_<NAME>``, which has no such inputs)."""
    every = number(request, "progress_every")
    if every is None or every == 0:
        return None
    if isinstance(every, float) or not 1 <= every <= PROGRESS_EVERY_MAX:
        raise InvalidInputError(
            "progress_every", f"must be an integer in [0, {PROGRESS_EVERY_MAX}], got {every}"
        )
    previews = bool(number(request, "with_previews")) and spec.preview_factors is not None
    return StreamOptions(int(every), previews)


def passed_on(request: Any) -> dict[str, np.ndarray]:
    """What the denoise model passes on to the steps after it, by its tensor name: the image, the
    soft mask and the mask PNG as they came, and the output controls checked (their defaults filled
    in), so a bad output_format is refused before any step runs."""
    encoding = INPAINT.check(read_controls(request, INPAINT.at(POSTPROCESS)), POSTPROCESS)
    values = {
        name: tensor(request, name, required=True)
        for name in (contract.ORIGINAL_IMAGE.name, contract.SOFT_MASK.name, contract.OUTPUT_MASK.name)
    }
    for spec in contract.stage_inputs(POSTPROCESS):
        value = encoding[spec.name]
        values[spec.name] = np.array(
            [value.encode() if isinstance(value, str) else value], _NUMPY[spec.data_type]
        )
    return values


def _empty(kept: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The passed-on tensors as a progress response carries them: the images empty."""
    return {
        name: np.zeros((0,) * (value.ndim - 1) + value.shape[-1:], value.dtype) if value.dtype == np.uint8
        else np.zeros((0,) * value.ndim, value.dtype) if value.dtype == np.float32
        else np.array([b""], np.object_) if name == contract.OUTPUT_MASK.name
        else value
        for name, value in kept.items()
    }  # fmt: skip


def denoise_outputs(
    generated: np.ndarray,
    box: Any,
    params: DenoiseParams,
    kept: dict[str, np.ndarray] | None,
    progress: tuple[int, int],
    previews: list[bytes] | None = None,
) -> list[Any]:
    """Every output of the denoise model, for a result or a progress response; ``kept`` None: the plain
    model's outputs (the result alone)."""
    result = [
        pb_utils.Tensor(contract.GENERATED_IMAGE.name, generated),
        pb_utils.Tensor(contract.CROP_BOX.name, np.array(box, dtype=np.int32)),
        pb_utils.Tensor("output_seed", np.array(params.seeds, dtype=np.int64)),
    ]
    if kept is None:
        return result
    return [
        *result,
        pb_utils.Tensor(contract.PROGRESS.name, np.array(progress, dtype=np.int32)),
        pb_utils.Tensor(contract.PREVIEW.name, np.array(previews or [], dtype=np.object_)),
        *(pb_utils.Tensor(contract.KEPT_PREFIX + name, value) for name, value in kept.items()),
    ]


def progress_reporter(
    request: Any, params: DenoiseParams, kept: dict[str, np.ndarray], stream: StreamOptions
) -> Callable[[Any], None]:
    """What the in-flight batcher calls after each step of the request's job (but the last, which its
    result follows): a progress response every ``stream.every`` steps, not final."""
    sender = request.get_response_sender()
    empty = _empty(kept)
    factors = None

    def report(job: Any) -> None:
        nonlocal factors
        if job.index % stream.every:
            return
        previews = None
        if stream.previews:
            factors = factors or job.pipeline.spec.preview_factors
            images = preview_images(job.preview_latents(), factors)
            previews = [encode_image(image, "JPG", PREVIEW_QUALITY) for image in images]
        nothing = np.zeros((0, 1, 1, 3), np.uint8)
        outputs = denoise_outputs(nothing, job.box, params, empty, (job.index, len(job.timesteps)), previews)
        sender.send(pb_utils.InferenceResponse(output_tensors=outputs))

    return report
