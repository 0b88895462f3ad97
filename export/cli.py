"""``triton-inpaint export tiny|onnx|registry|detectors|clipseg``."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from triton_inpaint.api.contract import DEFAULT_MAX_INFLIGHT
from triton_inpaint.api.roles import DEFAULT_DEEP_CACHE_BRANCHES
from triton_inpaint.export.runtimes import PRECISIONS, RUNTIMES
from triton_inpaint.pipelines.spec import TINY_MODELS, TINY_SIZES


def _tiny(args: argparse.Namespace) -> int:
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.family, args.out, seed=args.seed, size=args.size)
    print(f"wrote {args.size} {args.family} checkpoint (seed {args.seed}, random weights) to {out}")
    return 0


def _tiny_lora(args: argparse.Namespace) -> int:
    from triton_inpaint.export.adapters import write_tiny_lora
    from triton_inpaint.export.repository import load_pipeline

    out = write_tiny_lora(load_pipeline(args.checkpoint), args.out, seed=args.seed, rank=args.rank)
    print(f"wrote a rank-{args.rank} random LoRA (seed {args.seed}) for {args.checkpoint} to {out}")
    return 0


def _lora_pair(text: str) -> tuple[str, Path]:
    model_id, separator, file = text.partition("=")
    if not separator or not model_id or not file:
        raise argparse.ArgumentTypeError(
            f"expected ID=FILE, e.g. local:watercolor@1=loras/w.safetensors; got {text!r}"
        )
    return model_id, Path(file)


def _onnx(args: argparse.Namespace) -> int:
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint

    started = time.monotonic()
    with warnings.catch_warnings():
        # torch's tracer warns about every Python-level shape check in diffusers; none affects the
        # exported graphs, which verify_onnx checks numerically at a shape other than the traced one.
        warnings.simplefilter("ignore")
        checks = export_checkpoint(
            args.checkpoint,
            args.name,
            args.repository,
            ExportOptions(**_batching_options(args), lora=tuple(args.lora)),
            log=lambda message: print(message, flush=True),
        )
    for check in checks:
        print(f"  {check.submodel:<13} max |onnx - torch| = {check.max_abs_diff:.2e}  ({check.path})")
    print(
        f"wrote models '{args.name}_*' and ensemble 'inpaint_{args.name}' to {args.repository} "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


def _registry(args: argparse.Namespace) -> int:
    from triton_inpaint.export.registry import export_registry

    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = export_registry(
            args.registry,
            args.repository,
            args.cache,
            log=lambda m: print(m, flush=True),
            **_batching_options(args),
        )
    print(f"{'id':<28} {'Triton model':<28} {'family':<13} {'native':>6}  defaults")
    for entry, family, native in built:
        defaults = (
            f"steps {entry.default_steps or '-'}, guidance {entry.default_guidance or '-'}, "
            f"scheduler {entry.default_scheduler or '-'}"
        )
        print(f"{entry.id:<28} inpaint_{entry.name:<20} {family:<13} {native:>6}  {defaults}")
    print(f"built {len(built)} models into {args.repository} in {time.monotonic() - started:.1f} s")
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    from triton_inpaint.export.tensorrt_build import build_plans

    started = time.monotonic()
    built = build_plans(  # without TensorRT or a GPU: TensorRTUnavailable, exit code 5
        args.repository,
        timing_cache=args.timing_cache,
        workspace_gib=args.workspace_gib,
        rebuild=args.rebuild,
        log=lambda m: print(m, flush=True),
    )
    print(
        f"built {len(built)} TensorRT plans for compute capability {built[0].compute_capability} in "
        f"{args.repository} in {time.monotonic() - started:.1f} s"
    )
    return 0


def _detectors(args: argparse.Namespace) -> int:
    from triton_inpaint.export.masking.detectors import export_detectors

    started = time.monotonic()
    checks = export_detectors(args.repository, args.cache, args.wheel, log=lambda m: print(m, flush=True))
    print(
        f"wrote {len(checks)} detector models ({', '.join(c.model for c in checks)}) to {args.repository} "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


def _clipseg(args: argparse.Namespace) -> int:
    from triton_inpaint.export.masking.clipseg import export_clipseg

    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings on Python shape checks; the check is numeric
        check = export_clipseg(args.weights, args.repository, log=lambda m: print(m, flush=True))
    print(
        f"wrote {check.model} and text_segmentation to {args.repository} in "
        f"{time.monotonic() - started:.1f} s; mask prompts beyond the detectors' words now work"
    )
    return 0


def _add_batching_options(parser: argparse.ArgumentParser) -> None:
    """How the denoise models run their requests (one place for ``onnx`` and ``registry``)."""
    parser.add_argument(
        "--denoise-instances",
        type=int,
        default=1,
        choices=range(1, 17),
        metavar="1-16",
        help="Triton instances of each denoise model; each batches its own requests in flight",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULT_MAX_INFLIGHT,
        choices=range(1, 17),
        metavar="1-16",
        help="requests one denoise instance advances together (in-flight batching); more wait in "
        "Triton's queue",
    )
    parser.add_argument(
        "--ort-threads",
        type=_threads,
        default=0,
        metavar="0-256",
        help="onnxruntime threads of each network's session; 0: the cores the server process may use "
        "(its CPU affinity and cgroup quota), read when the model loads",
    )
    parser.add_argument(
        "--no-cpu-graphs",
        dest="cpu_graphs",
        action="store_false",
        help="do not write model.cpu.onnx (the graph onnxruntime optimised for the CPU, which spares "
        "that work at every server start, at twice the disk)",
    )
    parser.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="leave out inpaint_<NAME>_stream and its denoise twin (progress and previews while a request "
        "runs): one model process less, about 370 MiB",
    )
    parser.add_argument(
        "--deep-cache-branches",
        type=_branches,
        default=DEFAULT_DEEP_CACHE_BRANCHES,
        metavar="LIST",
        help="UNet models: the DeepCache branches served (comma-separated, 0 the shallowest; 'none' for "
        "none), each a shallow UNet beside the full one (docs/controls.md#step-caching; default: "
        + ",".join(map(str, DEFAULT_DEEP_CACHE_BRANCHES)) + ")",
    )
    parser.add_argument(
        "--no-first-block-cache",
        dest="first_block_cache",
        action="store_false",
        help="FLUX models: leave out the transformer's two halves that the first-block cache runs "
        "(acceleratorOptions.fbcache is then refused)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (one shows only on a terminal anyway)"
    )


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Which runtime serves the networks (one place for ``onnx`` and ``registry``; docs/runtimes.md)."""
    group = parser.add_argument_group("runtime (docs/runtimes.md)")
    group.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="cpu",
        help="cpu: onnxruntime in Python models (any tritonserver); gpu-onnxruntime: Triton's onnxruntime "
        "backend on the GPU (NVIDIA's container); gpu-tensorrt: TensorRT plans, built afterwards on the "
        "target GPU with 'export tensorrt'; gpu-torch: the torch modules on CUDA in Python models",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="the networks' precision; default fp16 for gpu-torch, gpu-tensorrt and --trt-accelerator, "
        "else fp32. Each network's own follows (docs/runtimes.md#precision): FLUX's transformer and T5 "
        "in bf16 where fp16 is asked, a force_upcast VAE (SDXL's) in fp32",
    )
    group.add_argument(
        "--allow-fp16-overflow",
        action="store_true",
        help="with --precision fp16: run FLUX's transformer and T5 and a force_upcast VAE in fp16 too, "
        "although they may overflow it (black or NaN images, refused as non-finite)",
    )
    group.add_argument(
        "--instance-kind",
        choices=("gpu", "cpu"),
        default="gpu",
        help="where a GPU runtime's instances run: gpu (KIND_GPU), or cpu to run the same repository "
        "without a GPU (tests, CPU-only nodes)",
    )
    group.add_argument(
        "--trt-accelerator",
        action="store_true",
        help="gpu-onnxruntime: let onnxruntime hand the graphs to TensorRT (shape profiles for every "
        "size the controls allow, engine and timing caches)",
    )
    group.add_argument(
        "--trt-cache",
        default="",
        metavar="DIR",
        help="gpu-onnxruntime with --trt-accelerator: a folder on the server for engine and timing caches "
        "(one subfolder per model), e.g. a volume that outlives pods; default: onnxruntime's",
    )
    group.add_argument(
        "--no-fused-attention",
        dest="fused_attention",
        action="store_false",
        help="cpu: export attention as plain matrix products (standard ONNX ops only) instead of "
        "onnxruntime's fused MultiHeadAttention, which holds no (tokens x tokens) scores and is faster",
    )
    group.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="gpu-torch: compile each network with torch.compile(mode='reduce-overhead') (CUDA graphs)",
    )
    group.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="PX",
        help="TensorRT runtimes: the largest width/height the engines cover (default: the largest the "
        "controls allow, 2048); larger requests are refused with a clear error",
    )


def _threads(text: str) -> int:
    """``--ort-threads``: argparse's ``choices`` would list all 257 allowed values in its error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: use 0 (the cores the server may use) to 256")
    return value


def _branches(text: str) -> tuple[int, ...]:
    """``--deep-cache-branches``: ``0,1,2`` or ``none``."""
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        branches = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give branch numbers such as 0,1,2, or none") from None
    if any(not 0 <= branch <= 11 for branch in branches):
        raise argparse.ArgumentTypeError(f"{text!r}: branches are 0-11 (SD 1.5/2: 0-11, SDXL: 0-8)")
    return branches


def _batching_options(args: argparse.Namespace) -> dict[str, object]:
    names = ("denoise_instances", "max_inflight", "ort_threads", "cpu_graphs", "runtime", "precision")
    names += ("allow_fp16_overflow",)
    names += ("quiet", "stream", "deep_cache_branches", "first_block_cache")
    options = {name: getattr(args, name) for name in names}
    options |= {
        "gpu_instances": args.instance_kind == "gpu",
        "trt_accelerator": args.trt_accelerator,
        "trt_cache": args.trt_cache,
        "cuda_graphs": args.cuda_graphs,
        "fused_attention": args.fused_attention,
        "max_side": args.max_size,
    }
    return options


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="build tiny checkpoints; export checkpoints to Triton models"
    )
    commands = export.add_subparsers(
        dest="export_command",
        required=True,
        metavar="{tiny,tiny-lora,onnx,registry,tensorrt,detectors,clipseg}",
    )
    _add_tiny(commands)
    _add_tiny_lora(commands)
    _add_onnx(commands)
    _add_registry(commands)
    _add_tensorrt(commands)
    _add_detectors(commands)
    _add_clipseg(commands)


def _add_tiny(commands: argparse._SubParsersAction) -> None:
    tiny = commands.add_parser(
        "tiny",
        help="write a tiny checkpoint with seeded random weights (offline; for tests and the demo)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tiny.add_argument(
        "--family",
        choices=TINY_MODELS,
        default=TINY_MODELS[0],
        help="checkpoint family, or clipseg for text-segmentation weights (the input of 'export clipseg')",
    )
    tiny.add_argument(
        "--out", type=Path, required=True, help="folder to write (diffusers save_pretrained layout)"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; same seed, same bytes")
    tiny.add_argument(
        "--size",
        choices=TINY_SIZES,
        default="tiny",
        help="small: an SD-1.5-shaped UNet (34 M parameters) at 256 px, whose compute dominates as "
        "with real weights (sd15 families; CPU benchmarks); full: the real SD 1.5 (512 px) or SDXL "
        "(1024 px) architecture with random weights (GPU benchmarks; 4.3 / 10 GB)",
    )
    tiny.set_defaults(handler=_tiny)


def _add_tiny_lora(commands: argparse._SubParsersAction) -> None:
    tiny = commands.add_parser(
        "tiny-lora",
        help="write a small LoRA with seeded random weights for a checkpoint (offline; tests and demos)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tiny.add_argument("--checkpoint", type=Path, required=True, help="the diffusers checkpoint it adapts")
    tiny.add_argument("--out", type=Path, required=True, help=".safetensors file to write (diffusers format)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; same seed, same weights")
    tiny.add_argument("--rank", type=int, default=4, help="the adapter's rank")
    tiny.set_defaults(handler=_tiny_lora)


def _add_onnx(commands: argparse._SubParsersAction) -> None:
    onnx = commands.add_parser(
        "onnx",
        help="export a diffusers SD 1.5/2, SDXL (inpainting or base) or FLUX.1 Fill folder to Triton models",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    onnx.add_argument("--checkpoint", type=Path, required=True, help="diffusers checkpoint folder")
    onnx.add_argument(
        "--name", required=True, help="model name: models are '<name>_*', the ensemble 'inpaint_<name>'"
    )
    onnx.add_argument("--repository", type=Path, required=True, help="Triton model repository to write into")
    onnx.add_argument(
        "--lora",
        type=_lora_pair,
        action="append",
        default=[],
        metavar="ID=FILE",
        help="serve this LoRA adapter (a diffusers or kohya .safetensors) under ID, e.g. "
        "local:watercolor@1=loras/watercolor.safetensors; repeatable (docs/lora.md)",
    )
    _add_batching_options(onnx)
    _add_runtime_options(onnx)
    onnx.set_defaults(handler=_onnx)


def _add_registry(commands: argparse._SubParsersAction) -> None:
    registry = commands.add_parser(
        "registry",
        help="export every checkpoint a registry file lists into one model repository",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    registry.add_argument("--registry", type=Path, required=True, help="TOML file with [[models]] entries")
    registry.add_argument(
        "--repository", type=Path, required=True, help="Triton model repository to write into"
    )
    registry.add_argument(
        "--cache",
        type=Path,
        default=Path("build/checkpoints"),
        help="where tiny checkpoints named by 'tiny = FAMILY' entries are built",
    )
    _add_batching_options(registry)
    _add_runtime_options(registry)
    registry.set_defaults(handler=_registry)


def _add_tensorrt(commands: argparse._SubParsersAction) -> None:
    tensorrt = commands.add_parser(
        "tensorrt",
        help="build the TensorRT plans of a --runtime gpu-tensorrt repository, on the GPU that serves it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tensorrt.add_argument(
        "--repository", type=Path, required=True, help="the repository 'export --runtime gpu-tensorrt' wrote"
    )
    tensorrt.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="TensorRT timing cache shared by every build (default: trt_timing.cache in the repository)",
    )
    tensorrt.add_argument(
        "--workspace-gib", type=float, default=None, help="TensorRT's workspace limit (default: TensorRT's)"
    )
    tensorrt.add_argument(
        "--rebuild",
        action="store_true",
        help="build every plan again (default: only models with no plan for this GPU's compute capability)",
    )
    tensorrt.set_defaults(handler=_tensorrt)


def _add_detectors(commands: argparse._SubParsersAction) -> None:
    detectors = commands.add_parser(
        "detectors",
        help="convert MediaPipe's detectors (from the mediapipe 0.10.21 wheel) to ONNX Triton models",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    detectors.add_argument(
        "--repository", type=Path, required=True, help="Triton model repository to write into"
    )
    detectors.add_argument(
        "--cache", type=Path, default=Path("build/cache"), help="where the mediapipe wheel is downloaded"
    )
    detectors.add_argument(
        "--wheel", type=Path, default=None, help="a mediapipe-0.10.21 wheel already on disk (no download)"
    )
    detectors.set_defaults(handler=_detectors)


def _add_clipseg(commands: argparse._SubParsersAction) -> None:
    clipseg = commands.add_parser(
        "clipseg",
        help="export CLIPSeg weights (a transformers CLIPSegForImageSegmentation folder) for mask prompts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    clipseg.add_argument(
        "--weights",
        type=Path,
        required=True,
        help="folder with config.json, the weights, tokenizer and preprocessor files "
        "(e.g. a download of CIDAS/clipseg-rd64-refined)",
    )
    clipseg.add_argument(
        "--repository", type=Path, required=True, help="Triton model repository to write into"
    )
    clipseg.set_defaults(handler=_clipseg)
