"""What step caching buys and what it costs, measured side by side: ``triton-inpaint bench``'s step-cache
figures.

Step caching is a trade (speed for fidelity), so every speed figure here comes with the image distance
between the cached and the uncached result of the same request (inside the mask, where the images
differ; outside they are the input's either way):

- **per family** (:func:`families`): each family's tiny model (SD 1.5 and SDXL, inpainting and base,
  FLUX Fill), our pipeline in-process over its exported graphs, the same request uncached and with the
  ``medium`` preset, in interleaved rounds;
- **served** (in :mod:`triton_inpaint.tools.benchmark`): the bench models over gRPC, cached and not,
  and a perf_analyzer run of cached requests mixed with uncached ones;
- **real size** (:func:`real_size`, ``bench --real-size``): the real SD 1.5 architecture at 512 px,
  20 steps, served uncached and with DeepCache at interval 3, against diffusers uncached, in one run.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from triton_inpaint.api.commands import say

FAMILIES = ("sd15-inpaint", "sd15-base", "sdxl-inpaint", "flux-fill")
PRESET = "medium"  # what a user asking for "faster" first tries (DeepCache interval 3; fbcache 0.12)
REAL_SIDE, REAL_STEPS, REAL_INTERVAL = 512, 20, 3


def image_distance(cached: np.ndarray, uncached: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How far the cached image is from the uncached one where the mask regenerates: the largest and
    the mean difference (out of 255) and the PSNR (dB; higher is closer, inf when equal)."""
    inside = mask >= 128
    diff = np.abs(cached.astype(np.float64) - uncached.astype(np.float64))[inside]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return {
        "max_255": float(diff.max()) if diff.size else 0.0,
        "mean_255": round(float(diff.mean()), 3) if diff.size else 0.0,
        "psnr_db": round(10 * math.log10(255**2 / mse), 2) if mse else math.inf,
    }


def _log(message: str) -> None:
    say(f"[bench] {message}")


def _family_pipeline(family: str, work: Path) -> Any:
    """Our pipeline for ``family``'s tiny model over its exported ONNX graphs (built once under
    ``work``), with every step-caching network."""
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.networks.runners import RunnerComponents, onnx_runner
    from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
    from triton_inpaint.pipelines.spec import PipelineSpec

    name = "cache" + family.replace("-", "")
    repository = work / "cache-families"
    directory = repository / f"{name}_denoise" / "1"
    if not (directory / "pipeline.json").is_file():
        _log(f"building and exporting the tiny {family} model")
        checkpoint = work / "checkpoints" / name
        shutil.rmtree(checkpoint, ignore_errors=True)
        write_tiny_checkpoint(family, checkpoint, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_checkpoint(checkpoint, name, repository, ExportOptions(stream=False), log=lambda _: None)
    spec = PipelineSpec.load(directory)
    files = {role: repository / f"{name}_{role}" / "1" / "model.onnx" for role in spec.network_tensors()}
    components = RunnerComponents.for_spec(onnx_runner(files), spec)
    pipeline_class = FluxFillInpaintPipeline if spec.flux else SDInpaintPipeline
    return pipeline_class.from_directory(directory, components)


def families(
    chosen: tuple[str, ...], rounds: int, steps: int, work: Path, tick: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Per family of ``chosen``: the same request uncached and with the ``medium`` preset, our pipeline
    in-process, interleaved; the cached / uncached time and the image distance."""
    return [_family_cost(family, rounds, steps, work, tick) for family in chosen]


def _family_cost(
    family: str, rounds: int, steps: int, work: Path, tick: Callable[[str], None]
) -> dict[str, Any]:
    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.masks.compositing import composite
    from triton_inpaint.pipelines.batching import run_alone
    from triton_inpaint.tools.perf import SEED, interleaved, sample_request, spread

    pipeline = _family_pipeline(family, work)
    side = pipeline.spec.native_resolution
    image, mask = sample_request(side)
    soft = mask.astype(np.float32) / 255.0
    common = {"steps": steps, "seed": SEED, "strength": 1.0, "width": side, "height": side}
    requests = {
        "uncached": DenoiseParams.from_inputs("a red brick wall", **common),
        "cached": DenoiseParams.from_inputs("a red brick wall", acceleration=PRESET, **common),
    }
    outputs: dict[str, Any] = {}

    def run(key: str) -> Callable[[], None]:
        def call() -> None:
            job = pipeline.start(image, soft, requests[key])
            generated, box = run_alone(job)
            outputs[key] = (composite(image, generated[0], soft, box), job.cached_steps, len(job.timesteps))

        return call

    times = interleaved({key: run(key) for key in requests}, rounds, tick)
    medians = {key: float(np.median(values)) for key, values in times.items()}
    return {
        "family": family,
        "native_resolution": side,
        "steps": steps,
        "preset": PRESET,
        "cached_steps": outputs["cached"][1],
        "denoiser_steps": outputs["cached"][2],  # a second-order or PLMS schedule takes more than ``steps``
        "median_s": medians,
        "spread_s": {key: spread(values) for key, values in times.items()},
        "cached_over_uncached": medians["cached"] / medians["uncached"],
        "distance": image_distance(outputs["cached"][0], outputs["uncached"][0], mask),
    }


def real_size(work: Path, rounds: int, tick: Callable[[str], None]) -> dict[str, Any]:
    """The real SD 1.5 architecture (random weights) at 512 px, 20 steps: served uncached, served with
    DeepCache at interval 3, and diffusers uncached, in ``rounds`` interleaved rounds in one run, with
    the image distance between the served cached and uncached results."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from triton_inpaint.api.imaging import decode_image, encode_image, encode_mask
    from triton_inpaint.client import InpaintClient
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.server.process import TritonServer, free_port, with_builtin
    from triton_inpaint.tools.perf import SEED, interleaved, sample_request, spread

    name = "benchfull"
    checkpoint, repository = work / "checkpoints" / name, work / "real-size"
    if not (checkpoint / "model_index.json").is_file():
        _log("building the real SD 1.5 inpainting architecture (random weights, 4 GB)")
        write_tiny_checkpoint("sd15-inpaint", checkpoint, seed=0, size="full")
    if not (repository / f"inpaint_{name}" / "config.pbtxt").is_file():
        _log(f"exporting {name} (about a minute, 8 GB)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_checkpoint(checkpoint, name, repository, ExportOptions(stream=False), log=lambda _: None)
    image, mask = sample_request(REAL_SIDE)
    request = (encode_image(image), encode_mask(mask), "a red brick wall")
    controls = {"steps": REAL_STEPS, "seed": SEED, "strength": 1.0, "width": REAL_SIDE, "height": REAL_SIDE}
    cache = {"deep_cache": True, "deep_cache_interval": REAL_INTERVAL, "deep_cache_branch_id": 0}
    guidance = reference_guidance(repository, name)
    reference = StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    server = TritonServer(with_builtin([repository]), free_port(), free_port(), free_port())
    server.start(timeout=900)
    images: dict[str, bytes] = {}
    try:
        client = InpaintClient(server.grpc_url, "grpc", timeout=3600)

        def served(key: str, **extra: Any) -> Callable[[], None]:
            def call() -> None:
                images[key] = client.inpaint(name, *request, **controls, **extra).image

            return call

        def diffusers() -> None:
            reference(
                prompt=request[2], image=Image.fromarray(image), mask_image=Image.fromarray(mask),
                num_inference_steps=REAL_STEPS, strength=1.0, guidance_scale=guidance,
                width=REAL_SIDE, height=REAL_SIDE, generator=torch.Generator().manual_seed(SEED),
            )  # fmt: skip

        methods = {"served_uncached": served("uncached"), "served_cached": served("cached", **cache),
                   "diffusers_uncached": diffusers}  # fmt: skip
        times = interleaved(methods, rounds, tick, warm_up=False)
        client.close()
    finally:
        server.stop()
    medians = {key: float(np.median(values)) for key, values in times.items()}
    return {
        "model": f"{name} (SD 1.5 architecture, random weights)",
        "side": REAL_SIDE,
        "steps": REAL_STEPS,
        "deep_cache_interval": REAL_INTERVAL,
        "rounds": rounds,
        "seconds": times,
        "median_s": medians,
        "spread_s": {key: spread(values) for key, values in times.items()},
        "uncached_over_cached": medians["served_uncached"] / medians["served_cached"],
        "diffusers_over_cached": medians["diffusers_uncached"] / medians["served_cached"],
        "distance": image_distance(decode_image(images["cached"]), decode_image(images["uncached"]), mask),
        "at": time.strftime("%Y-%m-%d"),
    }


def reference_guidance(repository: Path, name: str) -> float:
    """The guidance the served model defaults to, for diffusers' call (the same request)."""
    from triton_inpaint.pipelines.spec import PipelineSpec

    return PipelineSpec.load(repository / f"{name}_denoise" / "1").default_guidance
