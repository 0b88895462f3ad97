"""``triton-inpaint bench``: the same request measured side by side, interleaved, in one run.

For each benchmark model (the tiny test model, and a small SD-1.5-shaped one whose UNet compute
dominates as with real weights) it builds or reuses the checkpoint and its Triton models, starts
Triton with only that model (the cold start is timed) and a gateway, then measures in rounds, the
order rotating each round so no method always runs on a warmer machine: diffusers in-process, our
pipeline in-process (the same ONNX graphs through onnxruntime), served over gRPC, and through the
gateway. Then a perf_analyzer concurrency sweep against the ensemble, in rounds too, the levels'
order rotating each round, with Triton's per-model statistics around each level (where the time
goes, the UNet's achieved batch), and the memory (PSS) of the server, every model process and the
gateway. Every figure keeps its runs, and the report gives each median with its range (min-max).
Ratios are taken within the run: these machines are too noisy for absolute figures to compare
across runs.

Writes ``bench.json`` (every figure, the machine, the versions), ``bench.md`` (tables) and PNG plots
into ``--out``. ``--quick`` runs a reduced version (tiny model, fewer rounds and steps, concurrency
1 and 2) that the test suite runs to keep the command working.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from triton_inpaint.api.commands import progress, say
from triton_inpaint.api.imaging import encode_image, encode_mask
from triton_inpaint.server.supervisor import stubs_of
from triton_inpaint.tools import cache_bench, perf
from triton_inpaint.tools.perf import SEED, interleaved, rotated, sample_request, spread  # noqa: F401

PROMPT = "a red brick wall"
GUIDANCE = 7.0
# served_grpc_stream: the same request through inpaint_<NAME>_stream, with progress and a preview every step;
# served_grpc_cached: the same request with DeepCache (acceleratorOptions.deepCache, interval 3).
METHODS = (
    "diffusers", "ours_in_process", "served_grpc", "served_grpc_stream", "served_grpc_cached", "gateway",
)  # fmt: skip
CACHE = {"deep_cache": True, "deep_cache_interval": 3}


@dataclass(frozen=True)
class BenchPlan:
    sizes: tuple[str, ...]
    rounds: int  # single-request rounds, every method once a round
    steps: int
    concurrency: tuple[int, ...]
    requests_per_window: int
    sweep_rounds: int  # perf_analyzer rounds, every concurrency level once a round
    # step caching: the families whose tiny models are measured cached against uncached, and the
    # concurrency levels of the sweep of cached requests mixed with uncached ones
    cache_families: tuple[str, ...] = ()
    mixed_concurrency: tuple[int, ...] = ()


QUICK = BenchPlan(
    sizes=("tiny",), rounds=2, steps=4, concurrency=(1, 2), requests_per_window=4, sweep_rounds=2,
    cache_families=("sd15-inpaint", "flux-fill"), mixed_concurrency=(1, 2),
)  # fmt: skip
FULL = BenchPlan(
    sizes=("tiny", "small"), rounds=5, steps=10, concurrency=(1, 2, 4, 8), requests_per_window=8,
    sweep_rounds=3, cache_families=("sd15-inpaint", "sd15-base", "sdxl-inpaint", "flux-fill"),
    mixed_concurrency=(1, 4),
)  # fmt: skip
SPREAD_FIGURES = ("throughput_rps", "p50_ms", "p95_ms")


def _log(message: str) -> None:
    say(f"[bench] {message}")


def prepare_model(size: str, work: Path) -> tuple[str, Path, Path]:
    """(name, checkpoint, repository) for the ``size`` benchmark model, built unless already there."""
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    name = f"bench{size}"
    checkpoint = work / "checkpoints" / name
    repository = work / "repository"
    if not (checkpoint / "model_index.json").is_file():
        _log(f"building the {size} SD 1.5 inpainting checkpoint")
        # Written aside and moved into place, so an interrupted build is never reused half-written.
        scratch = checkpoint.with_name(f".{name}-partial")
        shutil.rmtree(scratch, ignore_errors=True)
        write_tiny_checkpoint("sd15-inpaint", scratch, seed=0, size=size)
        shutil.rmtree(checkpoint, ignore_errors=True)
        scratch.rename(checkpoint)
    if not (repository / f"inpaint_{name}" / "config.pbtxt").is_file():
        _log(f"exporting {name} to {repository}")
        with warnings.catch_warnings():  # the tracer's shape-check warnings (see ``export onnx``)
            warnings.simplefilter("ignore")
            export_checkpoint(checkpoint, name, repository, ExportOptions(), log=lambda m: _log(f"  {m}"))
    return name, checkpoint, repository


LORA_RANK = 16  # a common rank for SD 1.5 style LoRAs
LORA_WEIGHTS = (0.8, -0.5)


def prepare_lora_model(size: str, work: Path) -> tuple[str, Path]:
    """(name, repository) of the ``size`` benchmark model exported again with two random LoRA
    adapters (rank :data:`LORA_RANK`) banked in, built unless already there."""
    from triton_inpaint.export.adapters import write_tiny_lora
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint, load_pipeline

    name, checkpoint, repository = prepare_model(size, work)
    lora_name = f"{name}lora"
    if not (repository / f"inpaint_{lora_name}" / "config.pbtxt").is_file():
        _log(f"exporting {lora_name}: {name} with {len(LORA_WEIGHTS)} rank-{LORA_RANK} LoRA adapters")
        pipeline = load_pipeline(checkpoint)
        files = tuple(
            (
                f"local:bench{index}@1",
                write_tiny_lora(pipeline, work / "lora" / f"{name}-{index}.safetensors", index, LORA_RANK),
            )
            for index in range(len(LORA_WEIGHTS))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = ExportOptions(lora=files)
            export_checkpoint(checkpoint, lora_name, repository, options, log=lambda m: _log(f"  {m}"))
    return lora_name, repository


def lora_cost(size: str, plan: BenchPlan, work: Path, tick: Callable[[str], None]) -> dict[str, Any]:
    """Our pipeline in-process on the same request, interleaved: the plain export against the one
    with adapters banked in and weighted. The ratio is what serving adapters costs per request."""
    from triton_inpaint.api.lora import LoraUse, format_lora
    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.networks.runners import SD_TENSORS, RunnerComponents, onnx_runner
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
    from triton_inpaint.pipelines.spec import PipelineSpec

    name, _, repository = prepare_model(size, work)
    lora_name, _ = prepare_lora_model(size, work)

    def pipeline(model: str) -> SDInpaintPipeline:
        directory = repository / f"{model}_denoise" / "1"
        roles = PipelineSpec.load(directory).lora_roles
        paths = {r: repository / f"{model}_{r}" / "1" / "model.onnx" for r in SD_TENSORS}
        components = RunnerComponents(onnx_runner(paths), lora_roles=roles)
        return SDInpaintPipeline.from_directory(directory, components)

    plain, banked = pipeline(name), pipeline(lora_name)
    native = plain.spec.native_resolution
    image, mask = sample_request(native)
    soft = mask.astype(np.float32) / 255.0
    common = {"steps": plan.steps, "guidance_scale": GUIDANCE, "seed": SEED, "width": native,
              "height": native}  # fmt: skip
    uses = format_lora(LoraUse(a, w) for a, w in zip(banked.spec.adapters, LORA_WEIGHTS, strict=True))
    methods = {
        "plain": lambda: plain(image, soft, DenoiseParams.from_inputs(PROMPT, **common)),
        "lora": lambda: banked(image, soft, DenoiseParams.from_inputs(PROMPT, lora=uses, **common)),
    }
    times = interleaved(methods, plan.rounds, tick)
    medians = {key: _median(values) for key, values in times.items()}
    return {
        "adapters": len(LORA_WEIGHTS),
        "rank": LORA_RANK,
        "median_s": medians,
        "spread_s": {key: spread(values) for key, values in times.items()},
        "lora_over_plain": medians["lora"] / medians["plain"],
    }


def process_pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages divided among their users), 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def measure_memory(server_pid: int, gateway_pid: int | None, repository: Path, name: str) -> dict[str, Any]:
    processes = {"tritonserver": process_pss(server_pid)}
    for stub in stubs_of(server_pid).values():
        processes[stub.model] = processes.get(stub.model, 0) + process_pss(stub.pid)
    weights = sum(path.stat().st_size for path in repository.glob(f"{name}_*/1/model.onnx"))
    served = sum(processes.values())
    return {
        "processes_mib": {key: round(value / 2**20, 1) for key, value in sorted(processes.items())},
        "served_stack_mib": round(served / 2**20, 1),
        "weights_mib": round(weights / 2**20, 1),
        "served_stack_minus_weights_mib": round((served - weights) / 2**20, 1),
        "gateway_mib": round(process_pss(gateway_pid) / 2**20, 1) if gateway_pid else None,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _diffusers_call(reference: Any, image: np.ndarray, mask: np.ndarray, size: int, steps: int) -> Any:
    """The reference pipeline's call for the benchmark's request, ready to time."""
    import torch
    from PIL import Image

    def run_diffusers() -> None:
        reference(
            prompt=PROMPT, image=Image.fromarray(image), mask_image=Image.fromarray(mask), width=size,
            height=size, num_inference_steps=steps, strength=1.0, guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(SEED),
        )  # fmt: skip

    return run_diffusers


def _perf_sweep(
    name: str,
    grpc_url: str,
    plan: BenchPlan,
    data_file: Path,
    out: Path,
    tick: Callable[[str], None] = lambda _: None,
    levels: tuple[int, ...] | None = None,
    tag: str = "",
) -> list[dict[str, Any]]:
    """perf_analyzer at each concurrency (``levels``, by default the plan's) in ``plan.sweep_rounds``
    rounds, the levels' order rotating, with how many requests each UNet call carried (Triton's own
    statistics around every run, summed over a level's runs)."""
    levels = levels or plan.concurrency
    runs: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
    counted: dict[int, dict[str, dict[str, int]]] = {level: {} for level in levels}
    for number in range(plan.sweep_rounds):
        for level in rotated(levels, number):
            before = perf.model_statistics(grpc_url)
            runs[level].append(
                perf.run_perf_analyzer(
                    f"inpaint_{name}",
                    grpc_url,
                    data_file,
                    level,
                    max(plan.requests_per_window, 2 * level),
                    out / f"perf_{name}{tag}_c{level}_r{number + 1}.csv",
                    timeout=1800,
                )  # fmt: skip
            )
            perf.add_counts(counted[level], before, perf.model_statistics(grpc_url))
            tick(f"round {number + 1}/{plan.sweep_rounds} perf_analyzer at concurrency {level}")
    return [_sweep_level(name, level, runs[level], counted[level]) for level in levels]


def _sweep_level(
    name: str, level: int, runs: list[dict[str, Any]], counted: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """One level's figures: each the median of its runs, with the range of the headline ones."""
    figures: dict[str, Any] = {
        key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "stable"
    }
    figures["stable"] = all(run["stable"] for run in runs)
    models = perf.statistics_delta({}, counted)
    unet = models.get(f"{name}_unet", {})
    rows_per_request = 2 if GUIDANCE > 1 else 1  # classifier-free guidance: two rows an image
    figures["unet_rows_per_call"] = unet.get("batch_per_execution", float("nan"))
    figures["requests_per_unet_call"] = figures["unet_rows_per_call"] / rows_per_request
    # DeepCache's cached steps run a shallow UNet: its rows a call, over every branch's network
    shallow = [raw for model, raw in counted.items() if model.startswith(f"{name}_unet_shallow_")]
    if any(raw["executions"] for raw in shallow):
        rows = sum(raw["inferences"] for raw in shallow)
        figures["shallow_rows_per_call"] = rows / sum(raw["executions"] for raw in shallow)
    figures["spread"] = {key: spread([run[key] for run in runs]) for key in SPREAD_FIGURES}
    return {"concurrency": level, **figures, "runs": runs, "models": models}


def _ratios(medians: dict[str, float], sweep: list[dict[str, Any]]) -> dict[str, float]:
    c1 = sweep[0]["throughput_rps"]
    return {
        "served_over_in_process": medians["served_grpc"] / medians["ours_in_process"],
        "gateway_over_in_process": medians["gateway"] / medians["ours_in_process"],
        "ours_over_diffusers": medians["ours_in_process"] / medians["diffusers"],
        "stream_over_served": medians["served_grpc_stream"] / medians["served_grpc"],
        "cached_over_served": medians["served_grpc_cached"] / medians["served_grpc"],
        **{
            f"throughput_c{entry['concurrency']}_over_c1": entry["throughput_rps"] / c1 for entry in sweep[1:]
        },
    }


@dataclass
class _Contest:
    """What every method of one model runs: the sample request and the two in-process pipelines."""

    name: str
    repository: Path
    native: int
    scheduler: str
    controls: dict[str, Any]
    image_png: bytes
    mask_png: bytes
    unet_parameters_m: float
    in_process: dict[str, Callable[[], Any]]


def _contest(size: str, plan: BenchPlan, work: Path) -> _Contest:
    from diffusers import StableDiffusionInpaintPipeline

    from triton_inpaint.api.params import DenoiseParams
    from triton_inpaint.networks.runners import SD_TENSORS, RunnerComponents, onnx_runner
    from triton_inpaint.pipelines.schedulers import build_scheduler
    from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline

    name, checkpoint, repository = prepare_model(size, work)
    ours = SDInpaintPipeline.from_directory(
        repository / f"{name}_denoise" / "1",
        RunnerComponents(
            onnx_runner({r: repository / f"{name}_{r}" / "1" / "model.onnx" for r in SD_TENSORS})
        ),
    )  # uncached in-process: the four networks
    native = ours.spec.native_resolution
    scheduler = ours.spec.default_scheduler or "PNDM"
    image, mask = sample_request(native)
    controls = {"steps": plan.steps, "guidance_scale": GUIDANCE, "seed": SEED, "strength": 1.0}
    params = DenoiseParams.from_inputs(PROMPT, width=native, height=native, scheduler=scheduler, **controls)
    reference = StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)
    reference.scheduler = build_scheduler(scheduler, ours.scheduler_config)
    reference.set_progress_bar_config(disable=True)
    soft_mask = mask.astype(np.float32) / 255.0
    return _Contest(
        name=name,
        repository=repository,
        native=native,
        scheduler=scheduler,
        controls=controls,
        image_png=encode_image(image),
        mask_png=encode_mask(mask),
        unet_parameters_m=round(sum(p.numel() for p in reference.unet.parameters()) / 1e6, 1),
        in_process={
            "diffusers": _diffusers_call(reference, image, mask, native, plan.steps),
            "ours_in_process": lambda: ours(image, soft_mask, params),
        },
    )


def bench_model(size: str, plan: BenchPlan, work: Path, out: Path, quiet: bool = False) -> dict[str, Any]:
    from triton_inpaint.gateway.launcher import GatewayServer
    from triton_inpaint.pipelines.spec import PipelineSpec
    from triton_inpaint.server.process import TritonServer, free_port, with_builtin

    if quiet:  # diffusers' own bar while loading the reference pipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    contest = _contest(size, plan, work)
    name, repository = contest.name, contest.repository
    _log(f"{name}: starting Triton with only this model (cold start)")
    # The ensemble brings its steps; the networks the denoise model calls through BLS are named too.
    roles = PipelineSpec.load(repository / f"{name}_denoise" / "1").network_tensors()
    models = [f"inpaint_{name}", f"inpaint_{name}_stream", *(f"{name}_{role}" for role in roles)]
    server = TritonServer(with_builtin([repository]), free_port(), free_port(), free_port(), models=models)
    started = time.perf_counter()
    server.start(timeout=600)
    cold_start = time.perf_counter() - started
    gateway = None
    try:
        gateway = GatewayServer(server.grpc_url, work / "gateway", "--rate", "100000").start()
        measured = _measure_served(contest, plan, server, gateway, out, quiet)
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
    return {
        "model": name,
        "native_resolution": contest.native,
        "steps": plan.steps,
        "scheduler": contest.scheduler,
        "guidance_scale": GUIDANCE,
        "unet_parameters_m": contest.unet_parameters_m,
        "cold_start_s": cold_start,
        **measured,
    }


def _measure_served(
    contest: _Contest, plan: BenchPlan, server: Any, gateway: Any, out: Path, quiet: bool
) -> dict[str, Any]:
    """The single requests each way in interleaved rounds, the memory, the perf_analyzer sweep, and
    the sweep of cached requests mixed with uncached ones."""
    from triton_inpaint.api.imaging import decode_image
    from triton_inpaint.client import GatewayClient, InpaintClient
    from triton_inpaint.tools.cache_bench import image_distance

    name = contest.name
    request = (contest.image_png, contest.mask_png, PROMPT)
    controls = {"scheduler": contest.scheduler, **contest.controls}
    client = InpaintClient(server.grpc_url, "grpc")
    gateway_client = GatewayClient(gateway.url)
    methods = {
        **contest.in_process,
        "served_grpc": lambda: client.inpaint(name, *request, **controls),
        "served_grpc_stream": lambda: client.inpaint(
            name, *request, on_progress=lambda _: None, previews=True, **controls
        ),
        "served_grpc_cached": lambda: client.inpaint(name, *request, **controls, **CACHE),
        "gateway": lambda: gateway_client.inpaint(name, *request, **controls),
    }
    _log(f"{name}: {plan.rounds} interleaved rounds of {', '.join(methods)} ({plan.steps} steps)")
    levels = len(plan.concurrency) + len(plan.mixed_concurrency)
    bar = progress(len(methods) * (plan.rounds + 1) + levels * plan.sweep_rounds, name, "run", quiet)

    def tick(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    times = interleaved(methods, plan.rounds, tick)
    medians = {key: _median(values) for key, values in times.items()}
    cached, uncached = (decode_image(methods[key]().image) for key in ("served_grpc_cached", "served_grpc"))
    memory = measure_memory(server.pid, gateway.pid, contest.repository, name)
    values = {"image": contest.image_png, "mask": contest.mask_png, "prompt": PROMPT, **controls}
    data_file = perf.write_input_data(out / f"perf_input_{name}.json", values)
    _log(f"{name}: perf_analyzer at {plan.concurrency} in {plan.sweep_rounds} rotating rounds")
    sweep = _perf_sweep(name, server.grpc_url, plan, data_file, out, tick)
    # every other request cached: perf_analyzer takes the input file's entries in turn
    mixed_file = out / f"perf_input_{name}_mixed.json"
    mixed_file.write_text(json.dumps({"data": [*perf.input_data(values)["data"],
                                                *perf.input_data({**values, **CACHE})["data"]]}))  # fmt: skip
    mixed = _perf_sweep(name, server.grpc_url, plan, mixed_file, out, tick, plan.mixed_concurrency, "_mixed")
    bar.close()
    client.close()
    return {
        "seconds": times,
        "median_s": medians,
        "spread_s": {key: spread(values) for key, values in times.items()},
        "ratios": _ratios(medians, sweep),
        "cache_distance": image_distance(cached, uncached, decode_image(contest.mask_png)[..., 0]),
        "memory": memory,
        "sweep": sweep,
        "mixed_sweep": mixed,
    }


def machine() -> dict[str, Any]:
    versions = {}
    for package in ("triton-inpaint", "torch", "diffusers", "onnxruntime", "tritonclient", "nvidia-pytriton"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def cpu_model() -> str:
    """The processor's name as the kernel reports it (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(plan: BenchPlan, work: Path, out: Path, quiet: bool = False) -> dict[str, Any]:
    from triton_inpaint.tools.bench_report import write_report

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"machine": machine(), "plan": plan.__dict__, "models": []}
    for size in plan.sizes:
        results["models"].append(bench_model(size, plan, work, out, quiet))
        _log(f"{size}: LoRA adapters' cost, {plan.rounds} interleaved rounds in-process")
        with progress(2 * (plan.rounds + 1), f"{size} lora", unit="run", quiet=quiet) as bar:
            results["models"][-1]["lora"] = lora_cost(size, plan, work, lambda _: bar.update())
    _log(f"step caching per family ({', '.join(plan.cache_families)}), {plan.rounds} interleaved rounds")
    with progress(2 * (plan.rounds + 1) * len(plan.cache_families), "step cache", "run", quiet) as bar:
        results["step_cache"] = cache_bench.families(
            plan.cache_families, plan.rounds, plan.steps, work, lambda _: bar.update()
        )
    results["duration_s"] = time.perf_counter() - started
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=list))
    write_report(results, out)
    return results


def run_real_size(work: Path, out: Path, rounds: int, quiet: bool = False) -> dict[str, Any]:
    """``bench --real-size``: only the real-size step-cache comparison (cache_bench.real_size)."""
    from triton_inpaint.tools.bench_report import write_real_size_report

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with progress(3 * rounds, "real size", "run", quiet) as bar:
        figures = cache_bench.real_size(work, rounds, lambda _: bar.update())
    results = {"machine": machine(), "real_size": figures, "duration_s": time.perf_counter() - started}
    (out / "bench-real-size.json").write_text(json.dumps(results, indent=2, default=list))
    write_real_size_report(results, out)
    return results


def _command(args: argparse.Namespace) -> int:
    if args.real_size:
        results = run_real_size(args.work, args.out, args.rounds or 1, quiet=args.quiet)
        _log(f"wrote bench-real-size.json and .md to {args.out} in {results['duration_s']:.0f} s")
        print((args.out / "bench-real-size.md").read_text())
        return 0
    plan = QUICK if args.quick else FULL
    # a PerfAnalyzerError ends the command with its exit code
    results = run(plan, args.work, args.out, quiet=args.quiet)
    _log(f"wrote bench.json, bench.md and plots to {args.out} in {results['duration_s']:.0f} s")
    print((args.out / "bench.md").read_text())
    return 0


def add_subcommands(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure in-process vs served vs gateway, a perf_analyzer concurrency sweep, memory and "
        "cold start; writes bench.json, bench.md and plots",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "--out", type=Path, required=True, help="folder for bench.json, bench.md and the plots"
    )
    bench.add_argument(
        "--work", type=Path, default=Path("build/bench"), help="checkpoints and models, reused between runs"
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="tiny model only, two rounds, 4 steps, concurrency 1 and 2 (keeps the command working in tests)",
    )
    bench.add_argument(
        "--real-size",
        action="store_true",
        help="instead: the real SD 1.5 architecture (random weights) at 512 px, 20 steps, served uncached "
        "and with DeepCache (interval 3) against diffusers uncached, with the image distance (builds a "
        "4 GB checkpoint and an 8 GB repository under --work; about 10 minutes a round on 2 cores)",
    )
    bench.add_argument(
        "--rounds", type=int, default=None, help="--real-size: interleaved rounds (default 1)"
    )
    bench.add_argument(
        "--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)"
    )
    bench.set_defaults(handler=_command)
