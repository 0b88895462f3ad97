"""The first-block cache (``acceleratorOptions.fbcache``) on FLUX Fill without a server: the split
transformer against diffusers' own forward, the loop against diffusers' ``apply_first_block_cache`` on
``FluxFillPipeline`` (torch modules and the exported ONNX graphs), and rows that decide for
themselves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import FLUX_MODEL
from tests.helpers import diffusers_first_block_cache, diffusers_inpaint, irregular_mask, make_image
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.roles import TRANSFORMER, TRANSFORMER_HEAD, TRANSFORMER_TAIL
from triton_inpaint.export.onnx_export import _flux_examples
from triton_inpaint.networks.first_block import check_split
from triton_inpaint.networks.runners import RunnerComponents, TorchComponents, onnx_runner
from triton_inpaint.pipelines.batching import advance_together, run_alone
from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

pytestmark = pytest.mark.parity
PROMPT = "a red umbrella"
IMAGE, MASK = make_image(96, 64), irregular_mask(96, 64)


@pytest.fixture(scope="module")
def reference(flux_reference):
    return flux_reference


@pytest.fixture(scope="module")
def ours(reference):
    pipe, config = reference
    spec = dataclasses.replace(PipelineSpec.from_diffusers(pipe), first_block_cache=True)
    components = TorchComponents(pipe, first_block_cache=True)
    return FluxFillInpaintPipeline(components, pipe.tokenizer, pipe.tokenizer_2, config, spec)


def _params(steps: int, strength: float, **controls) -> DenoiseParams:
    return DenoiseParams.from_inputs(
        PROMPT, steps=steps, strength=strength, guidance_scale=30.0, seed=3, width=96, height=64, **controls
    )


def _reference(reference, threshold: float, steps: int, strength: float) -> np.ndarray:
    pipe, config = reference
    spec = PipelineSpec.from_diffusers(pipe)
    return diffusers_first_block_cache(
        pipe, threshold,
        lambda: diffusers_inpaint(
            pipe, config, IMAGE, MASK, PROMPT, None, steps=steps, strength=strength, guidance=30.0, seed=3,
            max_sequence_length=spec.max_sequence_length,
        ),
    )  # fmt: skip


def test_the_halves_are_the_whole_transformer(reference):
    pipe, _ = reference
    assert check_split(pipe.transformer, _flux_examples(pipe, 2, 6, 8)[TRANSFORMER]) <= 1e-5


@pytest.mark.parametrize(("threshold", "steps", "strength"), [(0.3, 12, 1.0), (0.5, 16, 0.7), (0.05, 8, 1.0)])
def test_the_first_block_cache_equals_diffusers_apply_first_block_cache(
    reference, ours, threshold, steps, strength
):
    job = ours.start(IMAGE, MASK / 255.0, _params(steps, strength, fbcache=True, cache_distance=threshold))
    got = run_alone(job)[0][0]
    want = _reference(reference, threshold, steps, strength)
    uncached = ours(IMAGE, MASK / 255.0, _params(steps, strength))[0][0]
    diff = np.abs(got.astype(int) - want.astype(int))
    moved = np.abs(uncached.astype(int) - want.astype(int)).max()
    label = f"fbcache {threshold} steps={steps} s={strength}: {job.cached_steps} cached"
    print(f"{label}, max {diff.max()}/255 (uncached: {moved})")
    assert diff.max() <= 1
    if threshold >= 0.3:  # the cache acted: skipped steps, an image the uncached run does not make
        assert job.cached_steps >= 3 and moved > 1


def test_the_exported_graphs_equal_diffusers(exported_repository, reference):
    repository, _ = exported_repository
    spec = PipelineSpec.load(repository / f"{FLUX_MODEL}_denoise" / "1")
    assert spec.first_block_cache
    files = {
        role: repository / f"{FLUX_MODEL}_{role}" / "1" / "model.onnx" for role in spec.network_tensors()
    }
    pipeline = FluxFillInpaintPipeline.from_directory(
        repository / f"{FLUX_MODEL}_denoise" / "1", RunnerComponents.for_spec(onnx_runner(files), spec)
    )
    got = pipeline(IMAGE, MASK / 255.0, _params(12, 1.0, fbcache=True, cache_distance=0.3))[0][0]
    diff = np.abs(got.astype(int) - _reference(reference, 0.3, 12, 1.0).astype(int)).max()
    print(f"onnx fbcache 0.3: max {diff}/255 against diffusers")
    assert diff <= 2


def test_each_row_decides_for_itself_and_requests_batch_per_network(ours):
    """Two images of one request and a request without the cache advance together: each image is the
    one its seed makes alone, whether its rows skip the rest or not; calls go per network."""
    two = _params(12, 1.0, fbcache=True, cache_distance=0.3, num_images=2)
    plain = _params(12, 1.0)
    alone = [ours(IMAGE, MASK / 255.0, params)[0] for params in (two, plain)]
    single = [
        ours(IMAGE, MASK / 255.0, dataclasses.replace(two, seed=seed, num_images=1))[0][0]
        for seed in two.seeds
    ]
    calls = []
    run = ours.components.run_network

    def recording(role, inputs, outputs, check=True):
        calls.append((role, next(iter(inputs.values())).shape[0]))
        return run(role, inputs, outputs, check)

    ours.components.run_network = recording
    try:
        jobs = [ours.start(IMAGE, MASK / 255.0, params) for params in (two, plain)]
        while not all(job.done for job in jobs):
            assert advance_together([job for job in jobs if not job.done], 8) == []
        together = [job.finish()[0] for job in jobs]
    finally:
        del ours.components.run_network
    for want, got in zip(alone, together, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    for index, image in enumerate(single):  # image i of the request is seed i alone
        assert np.abs(together[0][index].astype(int) - image.astype(int)).max() <= 1
    assert calls[0] == (TRANSFORMER, 3)  # the first step of both requests: one call of every row
    assert {role for role, _ in calls} == {TRANSFORMER, TRANSFORMER_HEAD, TRANSFORMER_TAIL}
    # a tail call carries only the rows whose first block moved
    assert all(rows <= 2 for role, rows in calls if role == TRANSFORMER_TAIL)
    assert jobs[0].cached_steps > 0 and jobs[1].cached_steps == 0


def test_the_first_block_changing_less_than_the_threshold_skips_the_rest():
    from triton_inpaint.pipelines.steps.step_cache import changed

    before = torch.ones(2, 4, 3)
    now = torch.stack([torch.full((4, 3), 1.1), torch.full((4, 3), 1.5)])
    assert changed(now, before).tolist() == pytest.approx([0.1, 0.5])
