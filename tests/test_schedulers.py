import diffusers
import pytest

from triton_inpaint.errors import InvalidInputError
from triton_inpaint.schedulers import SCHEDULERS, build_scheduler, resolve_scheduler

# As saved in a checkpoint's scheduler_config.json, which names its class.
SD15_SCHEDULER = {
    **diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).config,
    "_class_name": "PNDMScheduler",
}


@pytest.mark.parametrize("spec", SCHEDULERS, ids=lambda spec: spec.name)
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
