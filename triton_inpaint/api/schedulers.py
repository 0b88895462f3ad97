"""User-facing scheduler names mapped to diffusers scheduler classes.

We never reimplement a scheduler: a name selects a diffusers class plus config overrides, and the
scheduler is built with ``from_config`` on the checkpoint's own scheduler config, exactly as diffusers
documents swapping schedulers (:func:`triton_inpaint.pipelines.schedulers.build_scheduler`). Only the
names live here: clients and the gateway check a name without loading diffusers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from triton_inpaint.api.errors import InvalidInputError


@dataclass(frozen=True)
class SchedulerChoice:
    name: str
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SCHEDULERS: tuple[SchedulerChoice, ...] = (
    SchedulerChoice("DDIM", "DDIMScheduler"),
    SchedulerChoice("Euler", "EulerDiscreteScheduler"),
    SchedulerChoice("Euler a", "EulerAncestralDiscreteScheduler", aliases=("Euler ancestral",)),
    SchedulerChoice("Heun", "HeunDiscreteScheduler"),
    SchedulerChoice("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    SchedulerChoice(
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    SchedulerChoice("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    SchedulerChoice(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    SchedulerChoice("UniPC", "UniPCMultistepScheduler"),
    SchedulerChoice("LCM", "LCMScheduler"),
    SchedulerChoice("PNDM", "PNDMScheduler"),
    SchedulerChoice("LMS", "LMSDiscreteScheduler"),
    # Flow matching (FLUX): the only kind a flow-matching checkpoint accepts, and not for SD/SDXL.
    SchedulerChoice("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", aliases=("Flow Match Euler",)),
)


def is_flow_matching(class_name: str) -> bool:
    return class_name.startswith("FlowMatch")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_BY_KEY: dict[str, SchedulerChoice] = {}
for _spec in SCHEDULERS:
    for _name in (_spec.name, *_spec.aliases):
        _BY_KEY[_key(_name)] = _spec
    # A bare class name (as the reference API also accepts) means the class with its default config.
    _BY_KEY.setdefault(_key(_spec.class_name), SchedulerChoice(_spec.class_name, _spec.class_name))


def scheduler_names(flow_matching: bool | None = None) -> list[str]:
    """All names, or those a flow-matching (True) or noise-prediction (False) checkpoint accepts."""
    return [
        spec.name
        for spec in SCHEDULERS
        if flow_matching is None or is_flow_matching(spec.class_name) == flow_matching
    ]


def resolve_scheduler(name: str) -> SchedulerChoice:
    """Look a scheduler up by the name a user typed (case, spaces, dashes and underscores ignored)."""
    spec = _BY_KEY.get(_key(name))
    if spec is None:
        raise InvalidInputError(
            "scheduler", f"unknown scheduler {name!r}; choose one of: {', '.join(scheduler_names())}"
        )
    return spec
