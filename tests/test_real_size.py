"""The real SD 1.5 inpainting architecture end to end: its own layer (marker ``real_size``).

A random-weight checkpoint with SD 1.5's own configs (UNet 860 M parameters, CLIP ViT-L/14, the 84 M
VAE: 4 GB), exported to ONNX as a user would (the UNet's 3.4 GB of weights in external data), served by
a real tritonserver under the default memory budget, and one 512x512 request with the default
controls (4 steps) through the client and through the gateway: outside the mask exact, inside within
the parity tolerance of diffusers' ``StableDiffusionInpaintPipeline`` on the same weights, seed and
settings. Everything is built once per session and nothing is cached across runs. The figures (export
time and peak memory, the served stack's memory, one request's latency in-process, served, through the
gateway and in diffusers) are printed and written to ``real-size.json`` in the session's temporary
folder; docs/benchmarks.md#real-size holds a run.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.gateway_process import GatewayProcess
from tests.helpers import assert_served_parity, decode_rgb, diffusers_deep_cache, png_bytes
from triton_inpaint.server.supervisor import stubs_of
from triton_inpaint.tools.benchmark import process_pss, sample_request

pytestmark = pytest.mark.real_size
NAME = "sd15full"
SIDE = 512
STEPS = 4  # few steps: the default request otherwise (default strength, guidance and scheduler)
SEED = 7
PROMPT = "a red brick wall"
TOLERANCE = 3  # out of 255, inside the mask (as the tiny models' served parity)
_PEAK_RSS = (
    "import re, sys; from triton_inpaint.cli import main; code = main(sys.argv[1:]); "
    "print('peak_rss', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(code)"
)


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory):
    found: dict[str, object] = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "real-size.json"
    path.write_text(json.dumps(found, indent=2) + "\n")
    print(f"\nreal-size figures ({path}):\n{json.dumps(found, indent=2)}")


def _run_cli(*args: str) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of one ``triton-inpaint`` command in a fresh interpreter."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    peak = int(re.search(r"peak_rss (\d+)", done.stdout)[1]) * 1024
    return time.monotonic() - started, peak


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, figures) -> Path:
    root = tmp_path_factory.mktemp("real-size")
    seconds, peak = _run_cli(
        "export", "tiny", "--family", "sd15-inpaint", "--size", "full", "--out", str(root / "checkpoint")
    )
    figures["checkpoint"] = {"seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2)}
    return root / "checkpoint"


@pytest.fixture(scope="module")
def real_repository(real_checkpoint, figures) -> Path:
    repository = real_checkpoint.parent / "repository"
    seconds, peak = _run_cli(
        "export", "onnx", "--checkpoint", str(real_checkpoint), "--name", NAME,
        "--repository", str(repository),
    )  # fmt: skip
    size = sum(path.stat().st_size for path in repository.rglob("*") if path.is_file())
    figures["export_onnx"] = {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
        "repository_gib": round(size / 2**30, 2),
    }
    return repository


@pytest.fixture(scope="module")
def request_images() -> tuple[np.ndarray, np.ndarray]:
    return sample_request(SIDE)


@pytest.fixture(scope="module")
def reference(real_checkpoint, real_repository, request_images, figures) -> np.ndarray:
    """diffusers' pipeline on the same weights, seed and settings (the export's defaults)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from triton_inpaint.pipelines.spec import PipelineSpec

    spec = PipelineSpec.load(real_repository / f"{NAME}_denoise" / "1")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(real_checkpoint, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    image, mask = request_images
    started = time.monotonic()
    result = pipe(
        prompt=PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        num_inference_steps=STEPS,
        strength=spec.default_strength,
        guidance_scale=spec.default_guidance,
        generator=torch.Generator().manual_seed(SEED),
        width=SIDE,
        height=SIDE,
    ).images[0]
    figures["latency_s"] = {"diffusers_torch": round(time.monotonic() - started, 1)}
    del pipe
    gc.collect()
    return np.asarray(result)


def test_the_export_fuses_attention_and_keeps_the_unet_weights_outside_the_graph(real_repository, figures):
    import onnx

    unet = real_repository / f"{NAME}_unet" / "1"
    graph = onnx.load(str(unet / "model.cpu.onnx"), load_external_data=False)
    kinds = {node.op_type for node in graph.graph.node}
    assert "MultiHeadAttention" in kinds and "Softmax" not in kinds, sorted(kinds)
    assert (unet / "model.onnx").stat().st_size < 2**31 < (unet / "model.cpu.onnx.data").stat().st_size
    print(f"export: {figures['export_onnx']}")


def test_in_process_pipeline_equals_diffusers(real_repository, request_images, reference, figures):
    """Our pipeline over the exported graphs in this process (onnxruntime, as the server runs them)."""
    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.masks.compositing import composite
    from triton_inpaint.networks.runners import SD_TENSORS, RunnerComponents, onnx_runner
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline

    image, mask = request_images
    paths = {role: real_repository / f"{NAME}_{role}" / "1" / "model.onnx" for role in SD_TENSORS}
    pipeline = SDInpaintPipeline.from_directory(
        real_repository / f"{NAME}_denoise" / "1", RunnerComponents(onnx_runner(paths))
    )
    params = DenoiseParams.from_inputs(
        PROMPT,
        steps=STEPS,
        seed=SEED,
        default_steps=pipeline.spec.default_steps,
        default_guidance=pipeline.spec.default_guidance,
        default_strength=pipeline.spec.default_strength,
    )
    started = time.monotonic()
    generated, box = pipeline(image, mask.astype(np.float32) / 255.0, params)
    figures["latency_s"]["ours_in_process"] = round(time.monotonic() - started, 1)
    ours = composite(image, generated[0], mask.astype(np.float32) / 255.0, box)
    del pipeline
    gc.collect()
    assert_served_parity("in-process", ours, reference, mask, image, TOLERANCE)


@pytest.fixture(scope="module")
def real_server(real_repository, reference, figures):
    """Triton serving the real repository under the default memory budget (nothing configured)."""
    import os

    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.api.sizes import BUDGET_ENV
    from triton_inpaint.server.process import TritonServer, free_port

    assert BUDGET_ENV not in os.environ
    lines: list[str] = []
    server = TritonServer(
        [BUILTIN_REPOSITORY, real_repository], free_port(), free_port(), free_port(), log=lines.append
    )
    started = time.monotonic()
    server.start(timeout=900)
    figures["server_start_s"] = round(time.monotonic() - started, 1)
    # Before any request: the weights and the processes, no work memory yet (the budget's "in use").
    figures["memory_at_rest"] = _served_stack(server.pid, real_repository)
    try:
        yield server, lines
    finally:
        server.stop()


def _served_stack(server_pid: int, repository: Path) -> dict[str, float]:
    processes = [server_pid, *stubs_of(server_pid)]
    served = sum(process_pss(pid) for pid in processes)
    weights = sum(path.stat().st_size for path in repository.glob(f"{NAME}_*/1/model.cpu.onnx*"))
    return {
        "served_stack_pss_gib": round(served / 2**30, 2),
        "weights_gib": round(weights / 2**30, 2),
        "overhead_gib": round((served - weights) / 2**30, 2),
    }


BF16_TOLERANCE = (16, 2.5)  # (max, mean) out of 255 inside the mask, as the tiny models' bf16 lane


def test_bf16_on_the_real_architecture_equals_diffusers_in_bf16(
    real_checkpoint, real_repository, request_images, reference, figures
):
    """The gpu-torch runtime's modules and calls (role modules; call_network, which keeps timesteps in
    fp32) on the real SD 1.5 weights in bf16, against diffusers' pipeline in bf16; and bf16's price, the
    distance from the fp32 reference. fp16 is not run at this size: this CPU has no fp16 arithmetic
    (diffusers took over 10 minutes for 2 steps at 256 px), bf16 it has (AVX512-BF16)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.masks.compositing import composite
    from triton_inpaint.networks.runners import TorchComponents
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
    from triton_inpaint.tools.cache_bench import image_distance

    image, mask = request_images
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        real_checkpoint, torch_dtype=torch.bfloat16, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    ours = SDInpaintPipeline.from_directory(real_repository / f"{NAME}_denoise" / "1", TorchComponents(pipe))
    spec = ours.spec
    params = DenoiseParams.from_inputs(
        PROMPT, steps=STEPS, seed=SEED, default_steps=spec.default_steps,
        default_guidance=spec.default_guidance, default_strength=spec.default_strength,
    )  # fmt: skip
    started = time.monotonic()
    generated, box = ours(image, mask.astype(np.float32) / 255.0, params)
    seconds = {"ours_in_process_bf16": round(time.monotonic() - started, 1)}
    got = composite(image, generated[0], mask.astype(np.float32) / 255.0, box)
    started = time.monotonic()
    want = pipe(
        prompt=PROMPT, image=Image.fromarray(image), mask_image=Image.fromarray(mask),
        num_inference_steps=STEPS, strength=spec.default_strength, guidance_scale=spec.default_guidance,
        generator=torch.Generator().manual_seed(SEED), width=SIDE, height=SIDE,
    ).images[0]  # fmt: skip
    seconds["diffusers_bf16"] = round(time.monotonic() - started, 1)
    del ours, pipe
    gc.collect()
    figures["bf16"] = {
        "seconds": seconds,
        "vs_diffusers_bf16": image_distance(got, np.asarray(want), mask),
        "vs_fp32_reference": image_distance(got, reference, mask),
    }
    most, mean = BF16_TOLERANCE
    distance = figures["bf16"]["vs_diffusers_bf16"]
    assert distance["max_255"] <= most and distance["mean_255"] <= mean, figures["bf16"]
    outside = mask <= 127
    assert np.array_equal(got[outside], image[outside])


@pytest.fixture(scope="module")
def served(real_server, real_repository, request_images, figures) -> np.ndarray:
    """The default request over gRPC, as decoded pixels."""
    from triton_inpaint.client import InpaintClient

    server, lines = real_server
    image, mask = request_images
    with InpaintClient(server.grpc_url) as client:
        started = time.monotonic()
        result = client.inpaint(NAME, png_bytes(image), png_bytes(mask), PROMPT, steps=STEPS, seed=SEED)
        figures["latency_s"]["served_grpc"] = round(time.monotonic() - started, 1)
    figures["memory"] = _served_stack(server.pid, real_repository)
    budgets = [re.search(r"([\d.]+ GiB) of host memory for the networks' work", line) for line in lines]
    figures["memory"]["default_budget"] = next((found[1] for found in budgets if found), None)
    return decode_rgb(result.image)


def test_the_default_request_is_served_and_equals_diffusers(served, request_images, reference):
    image, mask = request_images
    assert_served_parity("served", served, reference, mask, image, TOLERANCE)
    inside = mask == 255
    assert np.abs(served[inside].astype(int) - image[inside]).mean() > 10  # really generated


def test_the_gateway_serves_it_too(real_server, served, request_images, tmp_path, figures):
    import base64

    server, _ = real_server
    image, mask = request_images
    gateway = GatewayProcess(server.grpc_url, tmp_path / "store").start()
    try:
        task = {
            "taskType": "imageInference",
            "taskUUID": "6f0c7d2e-1c1a-4d4e-9a51-3b0b2d6f0a11",
            "positivePrompt": PROMPT,
            "model": NAME,
            "seedImage": base64.b64encode(png_bytes(image)).decode(),
            "maskImage": base64.b64encode(png_bytes(mask)).decode(),
            "width": SIDE,
            "height": SIDE,
            "steps": STEPS,
            "seed": SEED,
            "outputType": "base64Data",
            "outputFormat": "PNG",
        }
        started = time.monotonic()
        status, body = gateway.post("/v1", [task])
        figures["latency_s"]["gateway"] = round(time.monotonic() - started, 1)
        figures["memory"]["gateway_pss_gib"] = round(process_pss(gateway.pid) / 2**30, 3)
    finally:
        gateway.stop()
    assert status == 200, body
    result = decode_rgb(base64.b64decode(body["data"][0]["imageBase64Data"]))
    assert np.array_equal(result, served)


CACHE_STEPS, CACHE_INTERVAL = 6, 3  # PNDM at the default strength: 5 UNet calls, 3 of them cached


def test_deep_cache_on_the_real_unet_equals_deep_cache_sd_helper(
    real_checkpoint, real_repository, real_server, request_images, served, figures
):
    """DeepCache (acceleratorOptions.deepCache, interval 3, branch 0) on the real SD 1.5 UNet, served,
    against the reference DeepCacheSDHelper on diffusers' pipeline with the same weights and settings;
    and its price: the distance from the uncached image."""
    from triton_inpaint.client import InpaintClient
    from triton_inpaint.pipelines.spec import PipelineSpec
    from triton_inpaint.tools.cache_bench import image_distance

    spec = PipelineSpec.load(real_repository / f"{NAME}_denoise" / "1")
    server, _ = real_server
    image, mask = request_images
    cache = {"deep_cache": True, "deep_cache_interval": CACHE_INTERVAL, "deep_cache_branch_id": 0}
    with InpaintClient(server.grpc_url) as client:
        started = time.monotonic()
        cached = client.inpaint(
            NAME, png_bytes(image), png_bytes(mask), PROMPT, steps=CACHE_STEPS, seed=SEED, **cache
        )
        figures["latency_s"]["served_deep_cache"] = round(time.monotonic() - started, 1)
        uncached = client.inpaint(
            NAME, png_bytes(image), png_bytes(mask), PROMPT, steps=CACHE_STEPS, seed=SEED
        )
    want = _deep_cache_reference(real_checkpoint, image, mask, spec)
    gc.collect()  # the reference pipeline's 4 GB, before the comparison
    got = decode_rgb(cached.image)
    assert_served_parity("served DeepCache", got, want, mask, image, TOLERANCE)
    figures["deep_cache_vs_uncached"] = image_distance(got, decode_rgb(uncached.image), mask)
    assert figures["deep_cache_vs_uncached"]["max_255"] > TOLERANCE  # the cache acted


def _deep_cache_reference(checkpoint: Path, image: np.ndarray, mask: np.ndarray, spec) -> np.ndarray:
    """diffusers' pipeline on the real weights with DeepCacheSDHelper, the served request's settings."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    want = diffusers_deep_cache(
        pipe, CACHE_INTERVAL, 0,
        lambda: pipe(
            prompt=PROMPT, image=Image.fromarray(image), mask_image=Image.fromarray(mask), width=SIDE,
            height=SIDE, num_inference_steps=CACHE_STEPS, strength=spec.default_strength,
            guidance_scale=spec.default_guidance, generator=torch.Generator().manual_seed(SEED),
        ).images[0],
    )  # fmt: skip
    return np.asarray(want)
