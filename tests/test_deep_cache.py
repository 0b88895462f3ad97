"""DeepCache (``acceleratorOptions.deepCache``) without a server: the split networks against diffusers'
own UNet forward, the loop against the reference ``DeepCacheSDHelper`` on diffusers' inpainting
pipelines (torch modules and the exported ONNX graphs), batching cached and uncached requests together,
and the plan's refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import MODEL
from tests.helpers import diffusers_deep_cache, diffusers_inpaint, irregular_mask, make_image
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.params import CacheSettings, DenoiseParams
from triton_inpaint.api.roles import UNET, shallow_role
from triton_inpaint.export.tiny import build_sd15, build_sdxl
from triton_inpaint.networks.deep_cache import (
    DeepCacheUnet,
    ShallowUnet,
    branch_count,
    check_shallow,
    feature_shapes,
)
from triton_inpaint.networks.runners import RunnerComponents, TorchComponents, onnx_runner
from triton_inpaint.pipelines.batching import advance_together
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.pipelines.steps.step_cache import CachePlan, DeepCacheSteps, plan_cache

pytestmark = pytest.mark.parity
PROMPT = "a red apple on a wooden table"
BUILDERS = {
    "sd15-inpaint": lambda: build_sd15(0, 9),
    "sd15-base": lambda: build_sd15(0, 4),
    "sdxl-inpaint": lambda: build_sdxl(0, 9),
    "sdxl-base": lambda: build_sdxl(0, 4),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request, tmp_path_factory):
    """(name, diffusers pipeline, its saved scheduler config, our pipeline over the same torch modules
    with every DeepCache branch)."""
    pipe = BUILDERS[request.param]()
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("scheduler")
    pipe.scheduler.save_pretrained(folder)
    config = __import__("json").loads((folder / "scheduler_config.json").read_text())
    branches = tuple(range(branch_count(pipe.unet)))
    spec = dataclasses.replace(
        PipelineSpec.from_diffusers(pipe), deep_cache_features=feature_shapes(pipe.unet, branches)
    )
    components = TorchComponents(pipe, deep_cache_branches=branches)
    ours = SDInpaintPipeline(components, pipe.tokenizer, config, spec, getattr(pipe, "tokenizer_2", None))
    return request.param, pipe, config, ours


def _unet_inputs(pipe, rows: int = 2, height: int = 9, width: int = 11) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    unet = pipe.unet
    inputs = [
        torch.randn(rows, unet.config.in_channels, height, width, generator=generator),
        torch.full((rows, 1), 500.0),
        torch.randn(rows, 77, unet.config.cross_attention_dim, generator=generator),
    ]
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        inputs += [
            torch.randn(rows, pooled, generator=generator),
            torch.tensor([[64.0, 96, 0, 0, 64, 96]] * rows),
        ]
    return tuple(inputs)


def test_a_shallow_unet_from_the_full_ones_feature_is_the_full_unet_at_every_branch(family):
    name, pipe, _, _ = family
    inputs = _unet_inputs(pipe)
    for branch in range(branch_count(pipe.unet)):
        assert check_shallow(pipe.unet, branch, inputs) == 0.0, f"{name} branch {branch}"


def test_each_branch_feature_has_the_declared_shape_and_is_really_read(family):
    name, pipe, _, _ = family
    inputs = _unet_inputs(pipe, height=16, width=24)
    branches = tuple(range(branch_count(pipe.unet)))
    with torch.no_grad():
        noise, *features = DeepCacheUnet(pipe.unet, branches)(*inputs)
        for (branch, channels, scale), feature in zip(
            feature_shapes(pipe.unet, branches), features, strict=True
        ):
            assert feature.shape == (2, channels, 16 // scale, 24 // scale), f"{name} branch {branch}"
            # another step's feature gives another prediction: the shallow network starts from it
            moved = ShallowUnet(pipe.unet, branch)(*inputs, feature * 1.5)
            assert (moved - noise).abs().max() > 1e-3


# (scheduler, strength, interval, branch): first- and second-order schedulers (Heun repeats timesteps,
# which the helper counts by their first position), ancestral noise, strength below 1, every block.
CASES = [
    ("DDIM", 1.0, 3, 0),
    ("Euler a", 0.6, 2, 1),
    ("DPM++ 2M", 1.0, 3, 4),
    ("Euler", 0.8, 5, 5),
    ("Heun", 1.0, 3, 2),
]


def _ours(pipeline, image, mask, scheduler, strength, **controls):
    params = DenoiseParams.from_inputs(
        PROMPT, steps=10, strength=strength, guidance_scale=7.0, seed=7, scheduler=scheduler,
        width=image.shape[1], height=image.shape[0], **controls,
    )  # fmt: skip
    return pipeline(image, mask.astype(np.float32) / 255.0, params)[0][0]


def _helper(pipe, config, image, mask, scheduler, strength, interval, branch):
    """The reference: DeepCacheSDHelper enabled on diffusers' inpainting pipeline."""
    return diffusers_deep_cache(
        pipe, interval, branch,
        lambda: diffusers_inpaint(
            pipe, config, image, mask, PROMPT, scheduler, steps=10, strength=strength, guidance=7.0, seed=7
        ),
    )  # fmt: skip


@pytest.mark.parametrize(("scheduler", "strength", "interval", "branch"), CASES)
def test_deep_cache_equals_deep_cache_sd_helper(family, scheduler, strength, interval, branch):
    name, pipe, config, ours = family
    image, mask = make_image(), irregular_mask()
    got = _ours(
        ours, image, mask, scheduler, strength, deep_cache=True, deep_cache_interval=interval,
        deep_cache_branch_id=branch,
    )  # fmt: skip
    want = _helper(pipe, config, image, mask, scheduler, strength, interval, branch)
    uncached = _ours(ours, image, mask, scheduler, strength)
    diff = np.abs(got.astype(int) - want.astype(int))
    moved = np.abs(uncached.astype(int) - want.astype(int)).max()
    print(
        f"{name} {scheduler} s={strength} I={interval} B={branch}: max {diff.max()}/255 (uncached: {moved})"
    )
    assert diff.max() <= 1
    assert moved > 1  # the cache really changed the image: the comparison can fail


def test_the_exported_graphs_equal_the_helper(exported_repository, reference_pipeline, scheduler_config):
    repository, _ = exported_repository
    spec = PipelineSpec.load(repository / f"{MODEL}_denoise" / "1")
    assert spec.deep_cache_branches == (0, 1, 2)
    run = onnx_runner(
        {role: repository / f"{MODEL}_{role}" / "1" / "model.onnx" for role in spec.network_tensors()}
    )
    pipeline = SDInpaintPipeline.from_directory(
        repository / f"{MODEL}_denoise" / "1", RunnerComponents.for_spec(run, spec)
    )
    image, mask = make_image(), irregular_mask()
    for scheduler, strength, interval, branch in [("DDIM", 1.0, 3, 0), ("Euler a", 0.6, 2, 2)]:
        got = _ours(
            pipeline, image, mask, scheduler, strength, deep_cache=True, deep_cache_interval=interval,
            deep_cache_branch_id=branch,
        )  # fmt: skip
        want = _helper(
            reference_pipeline, scheduler_config, image, mask, scheduler, strength, interval, branch
        )
        diff = np.abs(got.astype(int) - want.astype(int)).max()
        print(f"onnx {scheduler} I={interval} B={branch}: max {diff}/255 against DeepCacheSDHelper")
        assert diff <= 2


def test_cached_and_uncached_requests_batch_per_network_and_each_gets_its_own_images(family):
    name, _, _, pipeline = family
    image, mask = make_image(96, 64, seed=3), irregular_mask(96, 64).astype(np.float32) / 255.0
    size = {"width": 96, "height": 64, "seed": 5, "strength": 1.0}
    requests = [
        DenoiseParams.from_inputs(PROMPT, steps=6, scheduler="DDIM", **size, deep_cache=True),
        DenoiseParams.from_inputs(PROMPT, steps=6, scheduler="Euler a", **size),
        DenoiseParams.from_inputs(
            PROMPT,
            steps=5,
            scheduler="DPM++ 2M",
            **size,
            deep_cache=True,
            deep_cache_interval=2,
            deep_cache_branch_id=1,
            num_images=2,
        ),  # fmt: skip
    ]
    alone = [pipeline(image, mask, params)[0] for params in requests]
    calls: list[tuple[str, int]] = []
    run = pipeline.components.run_network

    def recording(role, inputs, outputs, check=True):
        calls.append((role, next(iter(inputs.values())).shape[0]))
        return run(role, inputs, outputs, check)

    pipeline.components.run_network = recording
    try:
        jobs = [pipeline.start(image, mask, params) for params in requests]
        while not all(job.done for job in jobs):
            assert advance_together([job for job in jobs if not job.done], 8) == []
        together = [job.finish()[0] for job in jobs]
    finally:
        del pipeline.components.run_network
    for want, got in zip(alone, together, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # First tick: every request runs the full UNet, in one call of all rows (2 + 2 + 4).
    assert calls[0] == (UNET, 8)
    # Second tick: the first and third requests are cached (different branches: two shallow calls),
    # the second runs the full UNet alone.
    assert sorted(calls[1:4]) == [(UNET, 2), (shallow_role(0), 2), (shallow_role(1), 4)]
    assert [job.cached_steps for job in jobs] == [4, 0, 2]


def _plan(settings: dict, steps: int = 20, branches=(0, 1, 2), architecture: str = "sd"):
    return plan_cache(CacheSettings(**settings), architecture, steps, branches, False)


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        (
            {"deep_cache": True, "deep_cache_branch_id": 5},
            "deep_cache_branch_id",
            "serves DeepCache branches 0, 1, 2",
        ),
        ({"fbcache": True}, "fbcache", "use deep_cache instead"),
        ({"tea_cache": True}, "tea_cache", "use fbcache"),
        (
            {"deep_cache": True, "deep_cache_skip_mode": "non-uniform"},
            "deep_cache_skip_mode",
            "must be uniform",
        ),
        ({"acceleration": "turbo"}, "acceleration", "none, low, medium, high"),
        (
            {"deep_cache": True, "cache_start_step": 5, "cache_stop_step": 5},
            "cache_stop_step",
            "after it starts",
        ),
        (
            {"deep_cache": True, "cache_start_step": 2, "cache_start_step_percentage": 10},
            "cache_start_step_percentage",
            "not both",
        ),
    ],
)
def test_fields_a_model_cannot_honour_are_refused_naming_them(settings, field, words):
    with pytest.raises(InvalidInputError, match=words) as raised:
        _plan(settings)
    assert raised.value.field == field


def test_a_model_exported_without_shallow_networks_says_how_to_get_them():
    with pytest.raises(InvalidInputError, match="export it again") as raised:
        _plan({"acceleration": "medium"}, branches=())
    assert raised.value.field == "deep_cache"
    with pytest.raises(InvalidInputError, match="DeepCache is for UNet models"):
        _plan({"deep_cache": True}, architecture="flux")


def test_presets_and_explicit_fields():
    assert _plan({}) is None and _plan({"acceleration": "none"}) is None
    assert _plan({"acceleration": "high"}) == CachePlan("deep_cache", branch=0, interval=5)
    assert _plan({"acceleration": "Low", "deep_cache_interval": 4}).interval == 4  # the field wins
    assert _plan({"acceleration": "medium", "deep_cache": False}) is None  # switched off explicitly
    window = _plan({"deep_cache": True, "cache_start_step_percentage": 10, "cache_end_step_percentage": 90})
    assert (window.start, window.stop) == (2, 18)


def test_the_window_and_the_consecutive_limit_choose_full_steps():
    def full_steps(plan: CachePlan, steps: int = 12) -> list[int]:
        cache = DeepCacheSteps(plan, list(range(steps)))
        chosen = []
        for index in range(steps):
            full = cache.full(index)
            cache.feature = torch.zeros(1)  # a full step's feature is there from the first step on
            cache._count(not full)
            chosen += [index] if full else []
        return chosen

    assert full_steps(CachePlan("deep_cache", interval=3)) == [0, 3, 6, 9]
    assert full_steps(CachePlan("deep_cache", interval=3, start=4, stop=10)) == [0, 1, 2, 3, 6, 9, 10, 11]
    assert full_steps(CachePlan("deep_cache", interval=5, max_consecutive=2)) == [0, 3, 5, 8, 10]


def test_the_memory_need_counts_each_rows_cached_feature(family):
    name, _, _, pipeline = family
    mask = np.ones((64, 96), np.float32)
    plain = pipeline.plan(mask, DenoiseParams.from_inputs(PROMPT, width=96, height=64))
    cached = pipeline.plan(mask, DenoiseParams.from_inputs(PROMPT, width=96, height=64, deep_cache=True))
    _, channels, scale = pipeline.spec.deep_cache_features[0]
    rows = 2  # one image, guided
    assert cached.need.bytes - plain.need.bytes == rows * channels * (12 // scale) * (8 // scale) * 4
