"""``triton-inpaint bench-gpu``: the GPU runtime measured side by side in one run, on one GPU.

On a real-size architecture with random weights (``export tiny --size full``: SD 1.5 inpainting at
512 px, or SDXL inpainting at 1024 px, so the timings are honest without downloading weights), one
request (``--steps`` steps, guidance 7, one image) timed in interleaved rounds:

- ``diffusers_fp16``: diffusers' own inpainting pipeline in fp16 on the GPU (the bar to beat);
- ``ours_in_process``: our pipeline over the ``gpu-torch`` networks loaded in-process (fp16);
- ``served_grpc``: the ``gpu-torch`` repository served by Triton, over gRPC (the same networks, the
  denoise model passing GPU tensors over DLPack);
- ``served_grpc_cached``: the same request with DeepCache (interval 3, branch 0), with the cached
  image's distance from the uncached one beside its time (step caching's price in fidelity).

Plus the UNet step alone (in-process, two rows as under guidance, and as Triton measured it while
serving), and parity at fp32: the served fp32 repository against diffusers fp32 on the same GPU
(inside the mask, and outside, where the input must come back exactly). Writes ``bench-gpu.json`` and
``bench-gpu.md`` into ``--out``. ``--device cpu --size tiny`` runs the same code without a GPU (the test
suite does, to keep the command working); its figures say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triton_inpaint.tools.benchmark import interleaved, machine, sample_request

PROMPT = "a red brick wall"
SEED = 7
GUIDANCE = 7.0
NAME = "gpubench"  # the fp16 (or, on the CPU, fp32) repository's models; NAME32: the fp32 parity copy
NAME32 = "gpubench32"
METHODS = ("diffusers_fp16", "ours_in_process", "served_grpc", "served_grpc_cached")
CACHE = {"deep_cache": True, "deep_cache_interval": 3, "deep_cache_branch_id": 0}
FAMILIES = ("sd15-inpaint", "sdxl-inpaint")


def _log(message: str) -> None:
    print(f"[bench-gpu] {message}", flush=True)


def prepare(family: str, size: str, device: str, work: Path) -> tuple[Path, Path]:
    """(checkpoint, repository with NAME and NAME32 as gpu-torch models), built unless already there."""
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    checkpoint = work / "checkpoints" / f"{family}-{size}"
    if not (checkpoint / "model_index.json").is_file():
        _log(f"writing the {size} {family} checkpoint (random weights)")
        scratch = checkpoint.with_name(f".{checkpoint.name}-partial")
        shutil.rmtree(scratch, ignore_errors=True)
        write_tiny_checkpoint(family, scratch, seed=0, size=size)
        shutil.rmtree(checkpoint, ignore_errors=True)
        scratch.rename(checkpoint)
    on_gpu = device != "cpu"
    repository = work / f"repository-{family}-{size}-{'gpu' if on_gpu else 'cpu'}"
    precisions = {NAME: "fp16" if on_gpu else "fp32", NAME32: "fp32"}
    for name, precision in precisions.items():
        if not (repository / f"inpaint_{name}" / "config.pbtxt").is_file():
            _log(f"exporting {name} (gpu-torch, {precision}) to {repository}")
            options = ExportOptions(runtime="gpu-torch", precision=precision, gpu_instances=on_gpu)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_checkpoint(checkpoint, name, repository, options, log=lambda m: _log(f"  {m}"))
    return checkpoint, repository


def _reference(family: str, checkpoint: Path, dtype: Any, device: str, scheduler: Any) -> Any:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    if family.startswith("sdxl"):
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
            checkpoint, torch_dtype=dtype, add_watermarker=False
        )
    else:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            checkpoint, torch_dtype=dtype, safety_checker=None
        )
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _in_process(repository: Path, device: str) -> Any:
    """Our pipeline over the gpu-torch networks of NAME, loaded as the Triton models load them."""
    from triton_inpaint.networks.runners import RunnerComponents
    from triton_inpaint.networks.torch_networks import load_network, torch_runner
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
    from triton_inpaint.pipelines.spec import PipelineSpec

    directory = repository / f"{NAME}_denoise" / "1"
    spec = PipelineSpec.load(directory)
    names = {role: f"{NAME}_{role}" for role in spec.network_tensors()}
    modules = {name: load_network(repository / name / "1", device)[1] for name in names.values()}
    components = RunnerComponents.for_spec(torch_runner(modules, device), spec, names, device)
    return SDInpaintPipeline.from_directory(directory, components)


def _synchronize(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize(device)


def unet_step_ms(pipeline: Any, device: str, repeats: int = 20) -> float:
    """The median time of one UNet call with two rows (one image under guidance) at native size."""
    import torch

    spec = pipeline.spec
    latent = spec.native_resolution // spec.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(2, spec.denoiser_in_channels, latent, latent, generator=generator),
        "timestep": torch.full((2, 1), 500.0),
    }
    states, pooled = pipeline.encode_prompt(PROMPT, None, True, 1)
    inputs["encoder_hidden_states"] = states
    if spec.sdxl:
        inputs["text_embeds"] = pooled
        inputs["time_ids"] = pipeline.time_ids(spec.native_resolution, spec.native_resolution, 1, True)
    inputs = {key: value.to(device) for key, value in inputs.items()}
    times = []
    for number in range(repeats + 3):
        _synchronize(device)
        started = time.perf_counter()
        pipeline.components.predict_noise(inputs)
        _synchronize(device)
        if number >= 3:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _parity(served: np.ndarray, want: np.ndarray, mask: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    inside = mask >= 128
    diff = np.abs(served.astype(int) - want.astype(int))[inside]
    return {
        "inside_max_255": int(diff.max()),
        "inside_mean_255": round(float(diff.mean()), 4),
        "outside_exact": bool(np.array_equal(served[~inside], image[~inside])),
    }


def measure_request_memory(
    pipeline: Any, image: np.ndarray, mask: np.ndarray, params: Any, device: str
) -> dict[str, float] | None:
    """The GPU memory one in-process request allocates beyond the weights, against the budget check's
    estimate for it (triton_inpaint.pipelines.memory, the export's network shapes in the served precision)."""
    import torch

    from triton_inpaint.pipelines.memory import FIXED_BYTES, request_bytes

    if device == "cpu":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    pipeline(image, mask, params)
    torch.cuda.synchronize(device)
    measured = torch.cuda.max_memory_allocated(device) - resident
    side = pipeline.spec.native_resolution
    estimated = request_bytes(pipeline.spec.networks, side, side, params.num_images, True) - FIXED_BYTES
    return {"measured_mib": round(measured / 2**20, 1), "estimated_mib": round(estimated / 2**20, 1)}


def run(
    family: str, size: str, device: str, steps: int, rounds: int, work: Path, out: Path
) -> dict[str, Any]:
    import torch

    from triton_inpaint.api.imaging import encode_image, encode_mask
    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.pipelines.schedulers import build_scheduler

    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: torch sees no CUDA GPU here; --device cpu runs the command's code"
        )
    out.mkdir(parents=True, exist_ok=True)
    started_run = time.perf_counter()
    checkpoint, repository = prepare(family, size, device, work)
    ours = _in_process(repository, device)
    native = ours.spec.native_resolution
    scheduler_name = ours.spec.default_scheduler or "DPM++ 2M"
    image, mask = sample_request(native)
    controls = {"steps": steps, "guidance_scale": GUIDANCE, "seed": SEED, "strength": 1.0}
    request = _Request(
        image=image,
        mask=mask,
        soft_mask=mask.astype(np.float32) / 255.0,
        image_png=encode_image(image),
        mask_png=encode_mask(mask),
        scheduler=scheduler_name,
        controls=controls,
        params=DenoiseParams.from_inputs(
            PROMPT, width=native, height=native, scheduler=scheduler_name, **controls
        ),
    )

    def reference(dtype: torch.dtype) -> Any:
        return _reference(
            family, checkpoint, dtype, device, build_scheduler(scheduler_name, ours.scheduler_config)
        )

    measured = _measure(ours, repository, request, reference, device, rounds)
    medians = {key: statistics.median(values) for key, values in measured["times"].items()}
    results = {
        "machine": machine() | {"gpu": torch.cuda.get_device_name(device) if device != "cpu" else None},
        "family": family,
        "size": size,
        "device": device,
        "native_resolution": native,
        "steps": steps,
        "scheduler": scheduler_name,
        "guidance_scale": GUIDANCE,
        "rounds": rounds,
        "unet_parameters_m": measured["unet_parameters_m"],
        "cold_start_s": measured["cold_start_s"],
        "seconds": measured["times"],
        "median_s": medians,
        "ratios": {
            "served_over_in_process": medians["served_grpc"] / medians["ours_in_process"],
            "ours_over_diffusers_fp16": medians["ours_in_process"] / medians["diffusers_fp16"],
            "served_over_diffusers_fp16": medians["served_grpc"] / medians["diffusers_fp16"],
            "cached_over_served": medians["served_grpc_cached"] / medians["served_grpc"],
            "cached_over_diffusers_fp16": medians["served_grpc_cached"] / medians["diffusers_fp16"],
        },
        "cache_distance": measured["cache_distance"],
        "unet_step_ms": measured["unet_step_ms"],
        "request_memory": measured["request_memory"],
        "parity_fp32_served_vs_diffusers": _parity(measured["served32"], measured["want32"], mask, image),
        "fp16_in_process_vs_diffusers_fp16_max_255": measured["fp16_max_diff"],
        "duration_s": time.perf_counter() - started_run,
    }
    (out / "bench-gpu.json").write_text(json.dumps(results, indent=2, default=list))
    (out / "bench-gpu.md").write_text(report(results))
    return results


@dataclass(frozen=True)
class _Request:
    """The one request every method runs: as arrays (in process, diffusers) and as PNGs (served)."""

    image: np.ndarray
    mask: np.ndarray
    soft_mask: np.ndarray
    image_png: bytes
    mask_png: bytes
    scheduler: str
    controls: dict[str, Any]
    params: Any

    def diffusers(self, pipe: Any) -> np.ndarray:
        import torch
        from PIL import Image

        size = self.params.width
        result = pipe(
            prompt=PROMPT, image=Image.fromarray(self.image), mask_image=Image.fromarray(self.mask),
            width=size, height=size, num_inference_steps=self.controls["steps"], strength=1.0,
            guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED),
        )  # fmt: skip
        return np.asarray(result.images[0])


def _measure(
    ours: Any, repository: Path, request: _Request, reference: Any, device: str, rounds: int
) -> dict[str, Any]:
    """Serve both repositories (fp16 and fp32), time the methods interleaved, then check fp32 parity
    with the fp16 reference off the GPU first."""
    import torch

    from triton_inpaint.api.imaging import decode_image
    from triton_inpaint.client import InpaintClient
    from triton_inpaint.server.process import TritonServer, free_port, with_builtin
    from triton_inpaint.tools.cache_bench import image_distance
    from triton_inpaint.tools.perf import model_statistics, statistics_delta

    _log(f"starting Triton with {NAME} and {NAME32} (gpu-torch) on {device}")
    # The ensembles bring their steps; the networks the denoise models call through BLS are named too
    # (the step-caching ones with them).
    roles = ours.spec.network_tensors()
    models = [f"inpaint_{name}" for name in (NAME, NAME32)]
    models += [f"{name}_{role}" for name in (NAME, NAME32) for role in roles]
    server = TritonServer(with_builtin([repository]), free_port(), free_port(), free_port(), models=models)
    started = time.perf_counter()
    server.start(timeout=1200)
    found: dict[str, Any] = {"cold_start_s": time.perf_counter() - started}
    try:
        client = InpaintClient(server.grpc_url, "grpc")

        def served(name: str, **cache: Any) -> bytes:
            return client.inpaint(
                name,
                request.image_png,
                request.mask_png,
                PROMPT,
                scheduler=request.scheduler,
                **request.controls,
                **cache,
            ).image

        fp16 = reference(torch.float16 if device != "cpu" else torch.float32)
        methods = {
            "diffusers_fp16": lambda: request.diffusers(fp16),
            "ours_in_process": lambda: ours(request.image, request.soft_mask, request.params),
            "served_grpc": lambda: served(NAME),
            "served_grpc_cached": lambda: served(NAME, **CACHE),
        }
        _log(f"{rounds} interleaved rounds of {', '.join(methods)} ({request.controls['steps']} steps)")
        before = model_statistics(server.grpc_url)
        found["times"] = interleaved(methods, rounds)
        served_models = statistics_delta(before, model_statistics(server.grpc_url))
        unet_served = served_models.get(f"{NAME}_unet", {}).get("compute_ms_per_request", float("nan"))
        found["unet_step_ms"] = {"in_process": unet_step_ms(ours, device), "served": unet_served}
        found["cache_distance"] = image_distance(
            decode_image(served(NAME, **CACHE)), decode_image(served(NAME)), request.mask
        )
        generated_fp16 = ours(request.image, request.soft_mask, request.params)[0][0]
        found["request_memory"] = measure_request_memory(
            ours, request.image, request.soft_mask, request.params, device
        )
        want_fp16 = request.diffusers(fp16)
        found["fp16_max_diff"] = int(np.abs(generated_fp16.astype(int) - want_fp16.astype(int)).max())
        methods.clear()
        fp16 = None  # the fp16 reference leaves the GPU before the fp32 one comes
        if device != "cpu":
            torch.cuda.empty_cache()
        _log("parity at fp32: the served fp32 repository against diffusers fp32")
        reference32 = reference(torch.float32)
        found["unet_parameters_m"] = round(sum(p.numel() for p in reference32.unet.parameters()) / 1e6, 1)
        found["want32"] = request.diffusers(reference32)
        found["served32"] = decode_image(served(NAME32))
        client.close()
    finally:
        server.stop()
    return found


def report(results: dict[str, Any]) -> str:
    m, r = results["median_s"], results["ratios"]
    parity = results["parity_fp32_served_vs_diffusers"]
    gpu = (
        results["machine"].get("gpu") or f"CPU ({results['machine']['cores']} cores; says nothing about GPUs)"
    )
    lines = [
        f"GPU: {gpu}; {results['family']} ({results['size']}, UNet {results['unet_parameters_m']} M) at "
        f"{results['native_resolution']} px, {results['steps']} steps, {results['scheduler']}, guidance "
        f"{results['guidance_scale']}, one image; medians of {results['rounds']} interleaved rounds.",
        "",
        "| diffusers fp16 | ours in-process (gpu-torch) | served gRPC (gpu-torch) | served / in-process | "
        "ours / diffusers fp16 | UNet step in-process | UNet step served | cold start |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {m['diffusers_fp16']:.3f} s | {m['ours_in_process']:.3f} s | {m['served_grpc']:.3f} s | "
        f"{r['served_over_in_process']:.3f} | {r['ours_over_diffusers_fp16']:.3f} | "
        f"{results['unet_step_ms']['in_process']:.1f} ms | {results['unet_step_ms']['served']:.1f} ms | "
        f"{results['cold_start_s']:.1f} s |",
        "",
        f"Parity at fp32, served vs diffusers on the same device: inside the mask max "
        f"{parity['inside_max_255']}/255 (mean {parity['inside_mean_255']}/255), outside exact: "
        f"{parity['outside_exact']}. In-process fp16 vs diffusers fp16: max "
        f"{results['fp16_in_process_vs_diffusers_fp16_max_255']}/255.",
        "",
    ]
    cache = results.get("cache_distance")
    if cache:
        lines += [
            f"Step caching (DeepCache interval 3, branch 0), served: {m['served_grpc_cached']:.3f} s, "
            f"{r['cached_over_served']:.3f} of uncached and {r['cached_over_diffusers_fp16']:.3f} of "
            f"diffusers fp16; the cached image is at max {cache['max_255']:.0f}/255, mean "
            f"{cache['mean_255']}/255, PSNR {cache['psnr_db']} dB from the uncached one inside the mask.",
            "",
        ]
    memory = results.get("request_memory")
    if memory:
        lines += [
            f"GPU memory of one in-process request beyond the weights: {memory['measured_mib']:.0f} MiB "
            f"measured, {memory['estimated_mib']:.0f} MiB estimated by the budget check.",
            "",
        ]
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> int:
    if args.prepare is not None:
        from triton_inpaint.tools import gpu_session

        gpu_session.print_calls(gpu_session.prepare(args.prepare, Path.cwd()))
        return 0
    if args.out is None:
        print(
            "error: bench-gpu needs --out (or --prepare DIR to stage a GPU machine's wheels)", file=sys.stderr
        )
        return 2
    results = run(args.family, args.size, args.device, args.steps, args.rounds, args.work, args.out)
    _log(f"wrote bench-gpu.json and bench-gpu.md to {args.out} in {results['duration_s']:.0f} s")
    print((args.out / "bench-gpu.md").read_text())
    return 0


def add_subcommands(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench-gpu",
        help="the gpu-torch runtime on a GPU: served vs in-process vs diffusers fp16, UNet step time, "
        "fp32 parity (docs/runtimes.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--out", type=Path, help="folder for bench-gpu.json and bench-gpu.md")
    bench.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="instead of measuring: download the Python 3.12 wheels a lent GPU machine lacks into DIR/part-N "
        "(at most 56 MiB each) and print the device calls that install them and run this benchmark there "
        "(docs/runtimes.md#measuring-on-a-gpu); run it from the checkout",
    )
    bench.add_argument(
        "--work",
        type=Path,
        default=Path("build/bench-gpu"),
        help="checkpoints and models, reused between runs",
    )
    bench.add_argument("--family", choices=FAMILIES, default="sd15-inpaint", help="checkpoint family")
    bench.add_argument(
        "--size",
        choices=("full", "tiny"),
        default="full",
        help="full: the real architecture with random weights (SD 1.5 at 512 px, SDXL at 1024 px)",
    )
    bench.add_argument("--device", default="cuda:0", help="cuda:N, or cpu to run the code without a GPU")
    bench.add_argument("--steps", type=int, default=20, help="denoising steps per request")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds after a warm-up")
    bench.set_defaults(handler=_command)
