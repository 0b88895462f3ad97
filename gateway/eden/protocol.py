"""The Eden-style async API's request (``POST /v2/tasks/create`` with ``tool`` and ``args``), in pydantic:
its control fields generated from ``triton_inpaint.api.schema``, plus Eden's model, resolution and
creativity.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from triton_inpaint.api.schema import INPAINT
from triton_inpaint.gateway.validation import PROMPT_LENGTH, MaskPrompt, Name, Text, between, control_fields

# Eden-style async inpainting (``POST /v2/tasks/create`` with ``tool`` and ``args``).
EDEN_TOOL = "flux_inpainting"
EDEN_TYPES: dict[str, Any] = {
    "inpainting_prompt": Annotated[Text, Field(min_length=1, max_length=PROMPT_LENGTH[1])],
    "masking_prompt": MaskPrompt,
}
RESOLUTION_RANGE = (512, 1536)
CREATIVITY_RANGE = (0.0, 1.1)


class _EdenArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Name | None = None  # which served model; the gateway's default when absent
    resolution: Annotated[int, *between(RESOLUTION_RANGE)] = 1024  # the processing size's longer side
    creativity: Annotated[float, *between(CREATIVITY_RANGE)] = 0.85  # strength, capped at 1


InpaintingArgs = create_model(
    "InpaintingArgs", __base__=_EdenArgs, **control_fields(INPAINT, "eden", EDEN_TYPES)
)


class EdenTaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: Literal["flux_inpainting"]
    args: InpaintingArgs
