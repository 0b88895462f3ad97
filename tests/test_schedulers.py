import diffusers
import pytest

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schedulers import (
    SCHEDULERS,
    is_flow_matching,
    resolve_scheduler,
    scheduler_names,
)
from triton_inpaint.pipelines.schedulers import build_scheduler

# As saved in a checkpoint's scheduler_config.json, which names its class.
SD15_SCHEDULER = {
    **diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).config,
    "_class_name": "PNDMScheduler",
}


FLUX_SCHEDULER = {
    **diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config,
    "_class_name": "FlowMatchEulerDiscreteScheduler",
}
NOISE_PREDICTION = [spec for spec in SCHEDULERS if not is_flow_matching(spec.class_name)]


@pytest.mark.parametrize("spec", NOISE_PREDICTION, ids=lambda spec: spec.name)
def test_every_name_builds_its_class_with_overrides(spec):
    scheduler = build_scheduler(spec.name, SD15_SCHEDULER)
    assert type(scheduler).__name__ == spec.class_name
    for key, value in spec.overrides.items():
        assert scheduler.config[key] == value
    # The checkpoint's noise schedule carries over.
    assert scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("ddim", "DDIM"),
        ("DPM++ 2M Karras", "DPM++ 2M Karras"),
        ("euler_ancestral", "Euler a"),
        ("EulerAncestralDiscreteScheduler", "Euler a"),
        ("dpm++-2m", "DPM++ 2M"),
    ],
)
def test_names_users_type(typed, expected):
    assert resolve_scheduler(typed).class_name == resolve_scheduler(expected).class_name


def test_bare_class_name_means_default_config():
    spec = resolve_scheduler("DPMSolverMultistepScheduler")
    assert spec.overrides == {}


def test_none_keeps_checkpoint_scheduler():
    assert type(build_scheduler(None, SD15_SCHEDULER)).__name__ == "PNDMScheduler"


def test_unknown_scheduler_lists_choices():
    with pytest.raises(InvalidInputError) as info:
        resolve_scheduler("warp drive")
    assert info.value.field == "scheduler"
    assert "DDIM" in str(info.value) and "DPM++ 2M" in str(info.value)


def test_flow_matching_checkpoints_take_flow_matching_schedulers_only():
    assert scheduler_names(flow_matching=True) == ["FlowMatch Euler"]
    scheduler = build_scheduler("flowmatch euler", FLUX_SCHEDULER)
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert scheduler.config.use_dynamic_shifting  # the checkpoint's shift settings carry over
    with pytest.raises(InvalidInputError) as info:
        build_scheduler("DPM++ 2M", FLUX_SCHEDULER)
    assert info.value.field == "scheduler" and "choose one of: FlowMatch Euler" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        build_scheduler("FlowMatch Euler", SD15_SCHEDULER)
    assert "DDIM" in str(info.value) and "FlowMatch" not in str(info.value).split("choose one of:")[1]
