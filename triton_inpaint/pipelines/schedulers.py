"""A fresh diffusers scheduler for one request, from a user-facing name (:mod:`triton_inpaint.api.schedulers`)
and the checkpoint's own scheduler config.
"""

from __future__ import annotations

from typing import Any

import diffusers

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schedulers import is_flow_matching, resolve_scheduler, scheduler_names


def build_scheduler(name: str | None, base_config: dict[str, Any]) -> diffusers.SchedulerMixin:
    """A fresh scheduler for one request; ``None`` keeps the checkpoint's own scheduler class."""
    if name is None:
        cls = getattr(diffusers, base_config["_class_name"])
        return cls.from_config(base_config)
    spec = resolve_scheduler(name)
    flow = is_flow_matching(base_config["_class_name"])
    if is_flow_matching(spec.class_name) != flow:
        kind = "flow-matching (FLUX)" if flow else "noise-prediction (SD/SDXL)"
        raise InvalidInputError(
            "scheduler",
            f"{spec.name!r} does not work with this {kind} model; "
            f"choose one of: {', '.join(scheduler_names(flow))}",
        )
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.overrides)
