import pytest

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.params import (
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    RANDOM_SEED_LIMIT,
    SEED_RANGE,
    DenoiseParams,
)


def test_defaults_and_random_seed():
    params = DenoiseParams.from_inputs("a cat")
    assert params.steps == DEFAULT_STEPS
    assert params.strength == DEFAULT_STRENGTH
    assert params.negative_prompt is None
    assert SEED_RANGE[0] <= params.seed <= SEED_RANGE[1]
    seeds = {DenoiseParams.from_inputs("a cat").seed for _ in range(3)} | {params.seed}
    assert len(seeds) > 1, "absent seeds must be drawn at random"


def test_drawn_seeds_survive_javascripts_json_numbers():
    """A drawn seed (and each image's seed after it) is below 2^53, so JSON.parse in a JS client keeps
    it exactly and a replay gives the same image; an explicit seed may use the whole range."""
    for _ in range(200):
        params = DenoiseParams.from_inputs("a cat", num_images=4)
        assert all(seed < RANDOM_SEED_LIMIT and float(seed) == seed for seed in params.seeds)
    assert DenoiseParams.from_inputs("a cat", seed=SEED_RANGE[1]).seed == 2**63 - 1


@pytest.mark.parametrize(
    ("field", "kwargs", "allowed"),
    [
        ("steps", {"steps": 0}, "[1, 100]"),
        ("steps", {"steps": 101}, "[1, 100]"),
        ("strength", {"strength": -0.1}, "[0.0, 1.0]"),
        ("strength", {"strength": 1.01}, "[0.0, 1.0]"),
        ("guidance_scale", {"guidance_scale": 51}, "[0.0, 50.0]"),
        ("seed", {"seed": -1}, "[0, 9223372036854775807]"),
        ("width", {"width": 100}, "multiple of 8"),
        ("height", {"height": 4096}, "[64, 2048]"),
    ],
)
def test_out_of_range_names_field_and_range(field, kwargs, allowed):
    with pytest.raises(InvalidInputError) as info:
        DenoiseParams.from_inputs("a cat", **kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert allowed in str(info.value)


def test_prompt_required():
    with pytest.raises(InvalidInputError, match="prompt: is required"):
        DenoiseParams.from_inputs(None)
