"""In-flight batching: requests that join at different times, at different steps, with other
schedulers, guidance, strengths, image counts and sizes, advance through shared denoiser calls, and
each gets the images it gets alone (within 1/255). Every family, over its exported ONNX graphs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.conftest import BASE_MODEL, FLUX_MODEL, MODEL, SDXL_MODELS
from tests.helpers import irregular_mask, make_image
from triton_inpaint.api.errors import NonFiniteOutputError
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.networks.runners import RunnerComponents, network_tensors, onnx_runner
from triton_inpaint.pipelines.batching import InflightBatcher, advance_together
from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

MAX_ROWS = 8
IMAGE = make_image(96, 64, seed=3)
MASK = irregular_mask(96, 64).astype(np.float32) / 255.0

# Four requests per family: two start together, two join two ticks later; the last one runs at another
# size, so it forms its own bucket (its own denoiser call in the same tick).
SD_REQUESTS = [
    {"scheduler": "DDIM", "steps": 6, "guidance_scale": 7.0, "seed": 1},
    {"scheduler": "Euler a", "steps": 4, "guidance_scale": 1.0, "seed": 2},  # no CFG: half the rows
    {"scheduler": "DPM++ 2M", "steps": 5, "strength": 0.6, "seed": 3, "num_images": 2,
     "negative_prompt": "blurry"},
    {"scheduler": "UniPC", "steps": 3, "seed": 4, "width": 64, "height": 64},
]  # fmt: skip
FLUX_REQUESTS = [
    {"steps": 5, "guidance_scale": 30.0, "seed": 1},
    {"steps": 3, "guidance_scale": 5.0, "seed": 2},
    {"steps": 4, "strength": 0.7, "seed": 3, "num_images": 2},
    {"steps": 3, "seed": 4, "width": 64, "height": 64},
]
FAMILIES = [MODEL, BASE_MODEL, SDXL_MODELS["sdxl-inpaint"], FLUX_MODEL]


def _params(controls: dict) -> DenoiseParams:
    size = {"width": 96, "height": 64}
    return DenoiseParams.from_inputs("a red bowl", **{**size, **controls})


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, exported_repository):
    """(pipeline, requests, calls): the family's pipeline over its ONNX graphs, and the batch size of
    every denoiser call it makes."""
    repository, _ = exported_repository
    name = request.param
    spec = PipelineSpec.load(repository / f"{name}_denoise" / "1")
    roles = network_tensors(spec.architecture)  # tinybase and tinyxl hold LoRA banks: lora_roles
    run = onnx_runner({role: repository / f"{name}_{role}" / "1" / "model.onnx" for role in roles})
    calls: list[int] = []

    def recording(model: str, inputs: dict, outputs: list[str]) -> list:
        if model in ("unet", "transformer"):
            calls.append(next(iter(inputs.values())).shape[0])
        return run(model, inputs, outputs)

    components = RunnerComponents.for_spec(recording, spec)
    pipeline_class = FluxFillInpaintPipeline if spec.flux else SDInpaintPipeline
    pipeline = pipeline_class.from_directory(repository / f"{name}_denoise" / "1", components)
    requests = [_params(r) for r in (FLUX_REQUESTS if spec.flux else SD_REQUESTS)]
    return pipeline, requests, calls


def test_each_request_gets_its_own_images_whoever_shares_its_batch(served):
    pipeline, requests, calls = served
    alone = [pipeline(IMAGE, MASK, params) for params in requests]
    alone_calls = len(calls)
    calls.clear()

    jobs = [pipeline.start(IMAGE, MASK, params) for params in requests[:2]]
    for _ in range(2):
        assert advance_together(jobs, MAX_ROWS) == []
    jobs += [pipeline.start(IMAGE, MASK, params) for params in requests[2:]]  # join mid-flight
    while not all(job.done for job in jobs):
        assert advance_together([job for job in jobs if not job.done], MAX_ROWS) == []
    together = [job.finish() for job in jobs]

    for params, (want, want_box), (got, got_box) in zip(requests, alone, together, strict=True):
        assert got_box == want_box and got.shape == want.shape
        diff = np.abs(got.astype(int) - want.astype(int)).max()
        print(
            f"{pipeline.spec.family} {params.scheduler} steps={params.steps}: max {diff}/255 batched vs alone"
        )
        assert diff <= 1
    rows = [params.num_images * (2 if params.guidance_scale > 1 and not pipeline.spec.flux else 1)
            for params in requests[:2]]  # fmt: skip
    assert calls[0] == sum(rows)  # the first two requests shared the first call
    assert len(calls) < alone_calls  # fewer denoiser calls than the requests make one by one
    assert max(calls) <= MAX_ROWS


def test_a_failing_request_fails_alone(served):
    pipeline, requests, _ = served
    want, _ = pipeline(IMAGE, MASK, requests[0])
    healthy, broken = pipeline.start(IMAGE, MASK, requests[0]), pipeline.start(IMAGE, MASK, requests[1])

    def advance(prediction):
        raise RuntimeError("scheduler state lost")

    broken.advance = advance
    failures = advance_together([healthy, broken], MAX_ROWS)
    assert [(job, str(error)) for job, error in failures] == [(broken, "scheduler state lost")]
    while not healthy.done:
        assert advance_together([healthy], MAX_ROWS) == []
    assert np.abs(healthy.finish()[0].astype(int) - want.astype(int)).max() <= 1


def test_a_request_whose_prediction_is_not_finite_fails_alone_naming_the_network(served):
    """The non-finite guard on a shared denoiser call: the request whose rows come back NaN fails with
    the network and its precision named; the request beside it in the same call goes on unharmed."""
    pipeline, requests, _ = served
    want, _ = pipeline(IMAGE, MASK, requests[0])
    healthy, broken = pipeline.start(IMAGE, MASK, requests[0]), pipeline.start(IMAGE, MASK, requests[1])
    broken.latents = torch.full_like(broken.latents, float("inf"))  # what an overflow upstream leaves
    failures = advance_together([healthy, broken], MAX_ROWS)
    denoiser = "transformer" if pipeline.spec.flux else "unet"
    assert [(job, type(error)) for job, error in failures] == [(broken, NonFiniteOutputError)]
    assert str(failures[0][1]).startswith(f"{denoiser} (fp32) returned NaN or Inf values in noise_pred")
    while not healthy.done:
        assert advance_together([healthy], MAX_ROWS) == []
    assert np.abs(healthy.finish()[0].astype(int) - want.astype(int)).max() <= 1

def test_the_batcher_answers_every_request_once_with_at_most_max_active_in_flight(served):
    pipeline, requests, _ = served
    want = [pipeline(IMAGE, MASK, params)[0] for params in requests]
    batcher = InflightBatcher(MAX_ROWS, max_active=2)
    answers: dict[int, list] = {index: [] for index in range(len(requests))}
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def submit(index: int) -> None:
        batcher.acquire()
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        job = pipeline.start(IMAGE, MASK, requests[index])

        def callback(result, error):
            with lock:
                in_flight[0] -= 1
            answers[index].append((result, error))

        batcher.submit(job, callback)

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    deadline = time.monotonic() + 300
    while not all(answers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    batcher.close()
    assert most[0] <= 2
    for index, expected in enumerate(want):
        ((result, error),) = answers[index]
        assert error is None
        assert np.abs(result[0].astype(int) - expected.astype(int)).max() <= 1


def test_admission_lets_in_what_fits_and_the_next_request_waits_for_memory():
    """Requests enter while their declared memory fits the budget beside those in flight; the next one
    waits until one leaves. One alone always enters (larger ones are refused before they ask)."""
    import threading

    from triton_inpaint.pipelines.batching import Admission

    admission = Admission(max_active=4, budget=100)
    admission.enter(60)
    entered = threading.Event()
    waiter = threading.Thread(target=lambda: (admission.enter(60), entered.set()))
    waiter.start()
    assert not entered.wait(0.3)  # 60 + 60 > 100: waits, though slots are free
    admission.leave(60)
    assert entered.wait(5) and admission.reserved == 60
    waiter.join()
    admission.leave(60)
    admission.enter(500)  # alone
    assert admission.active == 1 and admission.reserved == 500
    admission.leave(500)
    assert admission.active == 0 and admission.reserved == 0
