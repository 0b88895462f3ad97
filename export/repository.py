"""Write one checkpoint's Triton models: its ONNX networks, the BLS denoise model and the ensemble.

Configs are built as Triton ``ModelConfig`` protobuf messages (from tritonclient) and written in text
format, so every generated config is valid by construction and names come from
:mod:`triton_inpaint.api.contract`. Everything is written into a scratch folder first and moved into the
repository only when the export and its checks succeeded: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_inpaint.api import contract
from triton_inpaint.api.commands import progress
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.api.roles import (
    DEFAULT_DEEP_CACHE_BRANCHES,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    base_role,
    shallow_role,
)
from triton_inpaint.export.adapters import load_adapters
from triton_inpaint.export.onnx_cleanup import clean_onnx
from triton_inpaint.export.onnx_export import (
    ExportCheck,
    architecture,
    export_onnx,
    unet_condition_sizes,
    verify_onnx,
    verify_saved_networks,
)
from triton_inpaint.export.runtimes import (
    RuntimeOptions,
    add_tensors,
    denoise_runtime_parameters,
    network_config,
    shape_profile,
)
from triton_inpaint.networks.deep_cache import feature_shapes
from triton_inpaint.networks.ort_sessions import optimize_for_cpu
from triton_inpaint.networks.precision import (
    FP16,
    VALUE_BYTES,
    NetworkPrecision,
    fp16_refusal,
    network_precision,
)
from triton_inpaint.networks.runners import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    network_tensors,
)
from triton_inpaint.networks.torch_networks import save_network
from triton_inpaint.pipelines.memory import for_runtime
from triton_inpaint.pipelines.previews import fit_preview_factors
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.server.plans import PROFILE_FILE

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")


@dataclass(frozen=True)
class ExportOptions:
    # One denoise instance batches up to max_inflight requests in flight (triton_inpaint.pipelines.batching);
    # more instances run separate loops that meet only at the denoiser's dynamic batcher.
    denoise_instances: int = 1
    max_inflight: int = contract.DEFAULT_MAX_INFLIGHT
    unet_instances: int = 1
    # The denoise model already batches its requests' rows; waiting at the UNet for more only adds
    # latency (a 2 ms wait on every call never batched anything at one request at a time).
    unet_queue_delay_us: int = 0
    # Intra-op threads of each network's onnxruntime session; 0 = the cores the serving process may use,
    # found at load time (triton_inpaint.networks.ort_sessions.cpu_budget), so one export fits any machine.
    ort_threads: int = 0
    # Also write each graph as onnxruntime optimises it for the CPU (model.cpu.onnx), so that a server
    # start does not optimise it again; it doubles the networks' disk size.
    cpu_graphs: bool = True
    # Which runtime serves the networks (export/runtimes.py) and its settings. precision None: half
    # precision on GPU runtimes that can take it (gpu-torch, gpu-tensorrt, gpu-onnxruntime with the
    # TensorRT accelerator), fp32 otherwise; each network's own follows (triton_inpaint.networks.precision:
    # FLUX's transformer and T5 in bf16, a force_upcast VAE in fp32). allow_fp16_overflow runs those in
    # fp16 when precision is fp16 (refused for FLUX without it).
    runtime: str = "cpu"
    precision: str | None = None
    allow_fp16_overflow: bool = False
    gpu_instances: bool = True  # GPU runtimes: KIND_GPU; False places the same models on the CPU
    trt_accelerator: bool = False
    trt_cache: str = ""
    fused_attention: bool = True  # cpu: attention as onnxruntime's MultiHeadAttention (export/attention.py)
    cuda_graphs: bool = False
    max_side: int | None = None
    # What the registry says about the model; None keeps the family's defaults.
    model_id: str | None = None
    model_aliases: tuple[str, ...] = ()  # other ids requests may name this model by
    default_steps: int | None = None
    default_guidance: float | None = None
    quiet: bool = False  # no progress bar (one shows only when stderr is a terminal anyway)
    # inpaint_<NAME>_stream and <NAME>_denoise_stream: progress and previews while a request runs.
    stream: bool = True
    default_scheduler: str | None = None
    family: str | None = None  # when given, the checkpoint must be of this family
    # LoRA adapters served with the model: (id, safetensors file), banked into its networks
    # (triton_inpaint.networks.lora); requests weight them per call.
    lora: tuple[tuple[str, Path], ...] = ()
    # Step caching (docs/controls.md#step-caching). UNet families: the DeepCache branches served, each a
    # shallow UNet beside the full one (the first block's three: the fastest, and small networks).
    # FLUX: the transformer's two halves for the first-block cache.
    deep_cache_branches: tuple[int, ...] = DEFAULT_DEEP_CACHE_BRANCHES
    first_block_cache: bool = True


def runtime_options(options: ExportOptions) -> RuntimeOptions:
    """The runtime part of ``options``, checked (a bad combination names the flags)."""
    precision = options.precision
    if precision is None:
        fp16 = options.runtime in ("gpu-torch", "gpu-tensorrt") or options.trt_accelerator
        precision = "fp16" if fp16 else "fp32"
    return RuntimeOptions(
        runtime=options.runtime,
        precision=precision,
        gpu=options.gpu_instances,
        denoiser_instances=options.unet_instances,
        denoiser_queue_delay_us=options.unet_queue_delay_us,
        ort_threads=options.ort_threads,
        trt_accelerator=options.trt_accelerator,
        trt_cache=options.trt_cache,
        cuda_graphs=options.cuda_graphs,
        max_side=options.max_side,
        fused_attention=options.fused_attention,
    )


def write_config(model_dir: Path, config: mc.ModelConfig) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


def python_model_config(
    name: str, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec], count: int = 1
) -> mc.ModelConfig:
    """A Python-backend model on CPU taking one request at a time (``max_batch_size`` 0)."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    add_tensors(config.input, inputs)
    add_tensors(config.output, outputs)
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_CPU
    group.count = count
    return config


def move_into(scratch: Path, repository: Path) -> None:
    """Move every model folder of ``scratch`` into ``repository``, replacing models of the same name:
    the last step of an export, once everything was written and checked."""
    for model_dir in sorted(scratch.iterdir()):
        target = repository / model_dir.name
        if target.exists():
            shutil.rmtree(target)
        model_dir.rename(target)


def write_model_py(version_dir: Path, module: str) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(f"from {module} import TritonPythonModel  # noqa: F401\n")


def _flux_shapes(pipeline: object) -> dict[str, tuple[list, list]]:
    seq = pipeline.tokenizer.model_max_length
    t5_len = PipelineSpec.from_diffusers(pipeline).max_sequence_length
    latent = pipeline.vae.config.latent_channels
    config = pipeline.transformer.config
    return {
        TEXT_ENCODER: (
            [("TYPE_INT64", (seq,))],
            [("TYPE_FP32", (pipeline.text_encoder.config.hidden_size,))],
        ),
        TEXT_ENCODER_2: (
            [("TYPE_INT64", (t5_len,))],
            [("TYPE_FP32", (t5_len, pipeline.text_encoder_2.config.d_model))],
        ),
        VAE_ENCODER: ([("TYPE_FP32", (3, -1, -1))], [("TYPE_FP32", (2 * latent, -1, -1))]),
        VAE_DECODER: ([("TYPE_FP32", (latent, -1, -1))], [("TYPE_FP32", (3, -1, -1))]),
        TRANSFORMER: (
            [
                ("TYPE_FP32", (-1, config.in_channels)),
                ("TYPE_FP32", (1,)),
                ("TYPE_FP32", (1,)),
                ("TYPE_FP32", (config.pooled_projection_dim,)),
                ("TYPE_FP32", (t5_len, config.joint_attention_dim)),
                ("TYPE_FP32", (t5_len, 3)),
                ("TYPE_FP32", (-1, 3)),
            ],
            [("TYPE_FP32", (-1, config.out_channels or config.in_channels))],
        ),
    }


def _network_tensors(
    pipeline: object, spec: PipelineSpec
) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Per-network (inputs, outputs), dims without the batch axis."""
    shapes = _flux_shapes(pipeline) if spec.flux else _sd_shapes(pipeline)
    if spec.first_block_cache:  # the transformer returns its residuals; its halves run a cached step
        shapes |= _split_transformer_shapes(pipeline, shapes[TRANSFORMER])
    if spec.deep_cache_features:  # the UNet returns each branch's feature; a shallow UNet takes it
        unet_inputs, unet_outputs = shapes[UNET]
        features = [("TYPE_FP32", (channels, -1, -1)) for _, channels, _ in spec.deep_cache_features]
        shapes[UNET] = (unet_inputs, [*unet_outputs, *features])
        for (branch, _, _), feature in zip(spec.deep_cache_features, features, strict=True):
            shapes[shallow_role(branch)] = ([*unet_inputs, feature], list(unet_outputs))
    for role in shapes:
        if base_role(role) in spec.lora_roles:
            shapes[role][0].append(("TYPE_FP32", (len(spec.adapters),)))
    return _with_names(shapes, spec)


def _split_transformer_shapes(pipeline: object, whole: tuple[list, list]) -> dict[str, tuple[list, list]]:
    """FLUX's transformer with the first-block cache: its residuals (image tokens x inner width), the
    first block's image and text tokens, and its two halves (see roles.SPLIT_TRANSFORMER_TENSORS)."""
    config = pipeline.transformer.config
    inner = ("TYPE_FP32", (-1, config.num_attention_heads * config.attention_head_dim))
    text = ("TYPE_FP32", (whole[0][4][1][0], inner[1][1]))  # T5 tokens x inner width
    inputs, (prediction,) = whole
    return {
        TRANSFORMER: (inputs, [prediction, inner, inner]),
        TRANSFORMER_HEAD: ([*inputs, inner], [inner, text, inner, prediction]),
        # the first block's outputs, then timestep, guidance, pooled projections, text and image ids
        TRANSFORMER_TAIL: ([inner, text, *inputs[1:4], *inputs[5:7]], [prediction, inner]),
    }


def _sd_shapes(pipeline: object) -> dict[str, tuple[list, list]]:
    kind = architecture(pipeline)
    seq = pipeline.tokenizer.model_max_length
    latent = pipeline.vae.config.latent_channels
    states = pipeline.unet.config.cross_attention_dim
    sdxl = kind == "sdxl"
    shapes: dict[str, tuple[list, list]] = {
        TEXT_ENCODER: (
            [("TYPE_INT64", (seq,))],
            [("TYPE_FP32", (seq, pipeline.text_encoder.config.hidden_size))],
        ),
        VAE_ENCODER: ([("TYPE_FP32", (3, -1, -1))], [("TYPE_FP32", (2 * latent, -1, -1))]),
        VAE_DECODER: ([("TYPE_FP32", (latent, -1, -1))], [("TYPE_FP32", (3, -1, -1))]),
        UNET: (
            [
                ("TYPE_FP32", (pipeline.unet.config.in_channels, -1, -1)),
                ("TYPE_FP32", (1,)),
                ("TYPE_FP32", (seq, states)),
            ],
            [("TYPE_FP32", (latent, -1, -1))],
        ),
    }
    if sdxl:
        pooled, time_ids = unet_condition_sizes(pipeline)
        hidden_2 = pipeline.text_encoder_2.config.hidden_size
        shapes[TEXT_ENCODER_2] = (
            [("TYPE_INT64", (seq,))],
            [("TYPE_FP32", (seq, hidden_2)), ("TYPE_FP32", (pooled,))],
        )
        shapes[UNET][0].extend([("TYPE_FP32", (pooled,)), ("TYPE_FP32", (time_ids,))])
    return shapes


def _with_names(
    shapes: dict[str, tuple[list, list]], spec: PipelineSpec
) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    result = {}
    for role, (inputs, outputs) in shapes.items():
        input_names, output_names = spec.network_tensors()[role]
        result[role] = (
            [TensorSpec(n, t, d) for n, (t, d) in zip(input_names, inputs, strict=True)],
            [TensorSpec(n, t, d) for n, (t, d) in zip(output_names, outputs, strict=True)],
        )
    return result


def _denoise_config(
    name: str,
    checkpoint_name: str,
    options: ExportOptions,
    runtime: RuntimeOptions,
    spec: PipelineSpec,
    stream: bool = False,
) -> mc.ModelConfig:
    """``<NAME>_denoise``, or with ``stream`` its decoupled twin ``<NAME>_denoise_stream``, which answers
    with progress before its result (a model's transaction policy is fixed, and Triton serves a model
    that may be decoupled only over gRPC streams: the plain one keeps every client working)."""
    inputs = contract.DENOISE_STREAM_INPUTS if stream else contract.DENOISE_INPUTS
    outputs = contract.DENOISE_STREAM_OUTPUTS if stream else contract.DENOISE_OUTPUTS
    config = python_model_config(name, inputs, outputs, options.denoise_instances)
    denoise_runtime_parameters(config, runtime, spec)
    config.parameters["submodel_prefix"].string_value = checkpoint_name
    config.parameters["max_inflight"].string_value = str(options.max_inflight)
    config.parameters["denoiser_max_batch"].string_value = str(contract.NETWORK_MAX_BATCH)
    if stream:
        config.parameters["stream"].string_value = "1"
        config.model_transaction_policy.decoupled = True
    return config


def _ensemble_config(
    checkpoint_name: str,
    spec: PipelineSpec,
    model_id: str,
    aliases: tuple[str, ...] = (),
    stream: bool = False,
) -> mc.ModelConfig:
    """``inpaint_<NAME>``, or with ``stream`` its decoupled twin that also answers with progress."""
    named = contract.stream_ensemble_name if stream else contract.ensemble_name
    name = named(checkpoint_name)
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    # What a client needs to pick a model, readable from the server (the client's list_models).
    described = {
        "model_id": model_id,
        "family": spec.family,
        "native_resolution": str(spec.native_resolution),
        "default_steps": str(spec.default_steps),
        "default_guidance": str(spec.default_guidance),
        "default_scheduler": spec.default_scheduler or "",
        "default_strength": str(spec.default_strength),
        "model_aliases": ",".join(aliases),
        "lora_adapters": ",".join(spec.adapters),
        "deep_cache_branches": ",".join(map(str, spec.deep_cache_branches)),
        "first_block_cache": "1" if spec.first_block_cache else "0",
    }
    for key, value in described.items():
        config.parameters[key].string_value = value
    add_tensors(config.input, (*contract.REQUEST_INPUTS, *(contract.STREAM_INPUTS if stream else ())))
    add_tensors(config.output, (*contract.RESPONSE_OUTPUTS, *(contract.STREAM_OUTPUTS if stream else ())))
    if stream:
        config.model_transaction_policy.decoupled = True
    for model_name, inputs, outputs in contract.ensemble_steps(checkpoint_name, stream):
        step = config.ensemble_scheduling.step.add()
        step.model_name = model_name
        step.model_version = -1
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    return config


def check_name(name: str) -> str:
    """A checkpoint name export may use: a valid Triton model name stem whose models (``inpaint_NAME``,
    ``NAME_denoise``, ``NAME_unet``...) take no name the built-in, masking or detector models use."""
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"--name {name!r}: use 1-63 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if name.endswith(contract.STREAM_SUFFIX):
        raise ValueError(
            f"--name {name!r}: a name may not end in {contract.STREAM_SUFFIX!r} (inpaint_NAME_stream is each "
            "model's streaming twin)"
        )
    roles = {role for architecture in ("sd", "sdxl", "flux") for role in network_tensors(architecture)}
    written = {contract.ensemble_name(name), contract.denoise_name(name), *(f"{name}_{r}" for r in roles)}
    taken = sorted(written & set(contract.RESERVED_MODEL_NAMES))
    if taken:
        raise ValueError(
            f"--name {name!r} is reserved: it would write {', '.join(taken)}, a model this product "
            "serves itself; choose another name"
        )
    return name


def load_pipeline(checkpoint: Path) -> object:
    """The diffusers inpainting pipeline of a checkpoint folder (SD 1.5/2, SDXL or FLUX Fill)."""
    from diffusers import FluxFillPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    if not (checkpoint / "model_index.json").is_file():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint}: no model_index.json; expected a diffusers folder"
        )
    if (checkpoint / "transformer").is_dir():
        return FluxFillPipeline.from_pretrained(checkpoint)
    if (checkpoint / "text_encoder_2").is_dir():
        return StableDiffusionXLInpaintPipeline.from_pretrained(checkpoint, add_watermarker=False)
    return StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)


def export_checkpoint(
    checkpoint: Path,
    name: str,
    repository: Path,
    options: ExportOptions | None = None,
    log: object = print,
) -> list[ExportCheck]:
    """Export ``checkpoint`` (a diffusers SD 1.5/2 or SDXL folder, base or inpainting, or FLUX Fill) as
    Triton models named ``name``."""
    options = options or ExportOptions()
    check_name(name)
    runtime = runtime_options(options)  # a bad flag combination fails before the checkpoint loads
    refusal = fp16_refusal("flux" if (checkpoint / "transformer").is_dir() else "sd")
    if options.precision == FP16 and not options.allow_fp16_overflow and refusal:
        raise ValueError(refusal)
    if options.lora and runtime.runtime == "gpu-torch":
        raise ValueError(
            "LoRA adapters are served by the cpu, gpu-onnxruntime and gpu-tensorrt runtimes, not yet by "
            "gpu-torch; export without --lora or with another --runtime"
        )
    pipeline = load_pipeline(checkpoint)
    spec = _served_spec(pipeline, checkpoint, options, runtime, log)
    repository.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository.parent))
    try:
        model_dirs = {role: scratch / f"{name}_{role}" for role in spec.network_tensors()}
        checks = _write_networks(pipeline, spec, model_dirs, options, runtime, log)

        streams = (False, True) if options.stream else (False,)
        for stream in streams:
            denoise_dir = scratch / (contract.denoise_name(name) + (contract.STREAM_SUFFIX if stream else ""))
            version = denoise_dir / "1"
            write_model_py(version, "triton_inpaint.triton.denoise")
            pipeline.tokenizer.save_pretrained(version / "tokenizer")
            if spec.sdxl or spec.flux:
                pipeline.tokenizer_2.save_pretrained(version / "tokenizer_2")
            pipeline.scheduler.save_pretrained(version / "scheduler")
            spec.save(version)
            write_config(denoise_dir, _denoise_config(denoise_dir.name, name, options, runtime, spec, stream))

        model_id = options.model_id or f"local:{name}@1"
        for stream in streams:
            config = _ensemble_config(name, spec, model_id, options.model_aliases, stream)
            (scratch / config.name / "1").mkdir(parents=True)
            write_config(scratch / config.name, config)

        move_into(scratch, repository)
        return [replace(check, path=repository / check.path.relative_to(scratch)) for check in checks]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _served_spec(
    pipeline: object, checkpoint: Path, options: ExportOptions, runtime: RuntimeOptions, log: object
) -> PipelineSpec:
    """The spec the denoise model serves ``pipeline`` by: its family's defaults as ``options`` change
    them, its adapters, step caches and each network's precision; a checkpoint this export does not
    serve is refused here, before anything is written."""
    spec = replace(PipelineSpec.from_diffusers(pipeline), preview_factors=fit_preview_factors(pipeline))
    if options.lora:
        spec = replace(
            spec,
            adapters=tuple(model_id for model_id, _ in options.lora),
            lora_roles=load_adapters(pipeline, options.lora),
        )
    overrides = {
        "default_steps": options.default_steps,
        "default_guidance": options.default_guidance,
        "default_scheduler": options.default_scheduler,
    }
    spec = replace(spec, **{key: value for key, value in overrides.items() if value is not None})
    spec = _with_step_caches(pipeline, spec, options)
    precisions = network_precisions(pipeline, spec, options, runtime)
    spec = replace(
        spec,
        networks=_served_network_shapes(spec, runtime, precisions),
        precisions={role: precision.precision for role, precision in precisions.items()},
    )
    log(f"precision ({runtime.precision_runtime}): " + ", ".join(f"{r} {p}" for r, p in precisions.items()))
    if options.family is not None and options.family != spec.family:
        raise ValueError(
            f"--checkpoint {checkpoint}: expected family {options.family}, the checkpoint is {spec.family}"
        )
    if spec.flux:
        fill_channels = 2 * 4 * spec.latent_channels + 4 * spec.vae_scale_factor**2
        if spec.denoiser_in_channels != fill_channels or not pipeline.transformer.config.guidance_embeds:
            raise ValueError(
                f"--checkpoint {checkpoint}: not a FLUX Fill checkpoint (its transformer takes "
                f"{spec.denoiser_in_channels} channels, FLUX Fill takes {fill_channels} with embedded "
                "guidance); base FLUX checkpoints are not served yet"
            )
    elif spec.denoiser_in_channels not in (4, 9):
        raise ValueError(
            f"--checkpoint {checkpoint}: UNet has {spec.denoiser_in_channels} input channels; this export "
            "serves base (4) and inpainting (9) checkpoints"
        )
    return spec


def _with_step_caches(pipeline: object, spec: PipelineSpec, options: ExportOptions) -> PipelineSpec:
    """The step-caching networks this export writes (docs/controls.md#step-caching)."""
    if spec.flux:
        return replace(spec, first_block_cache=options.first_block_cache)
    branches = options.deep_cache_branches
    return replace(spec, deep_cache_features=feature_shapes(pipeline.unet, branches) if branches else ())


def _folder_mib(folder: Path) -> float:
    """A network's size on disk: its graph, external weights and optimised copy."""
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file()) / 2**20


def network_precisions(
    pipeline: object, spec: PipelineSpec, options: ExportOptions, runtime: RuntimeOptions
) -> dict[str, NetworkPrecision]:
    """Each network's precision under ``runtime`` (triton_inpaint.networks.precision), by role."""
    force_upcast = bool(getattr(pipeline.vae.config, "force_upcast", False))
    return {
        role: network_precision(
            spec.architecture, role, runtime.precision, runtime.precision_runtime, force_upcast,
            options.allow_fp16_overflow,
        )  # fmt: skip
        for role in spec.network_tensors()
    }


def _served_network_shapes(
    spec: PipelineSpec, runtime: RuntimeOptions, precisions: dict[str, NetworkPrecision]
) -> dict:
    """The memory estimate's network shapes as ``runtime`` runs them (attention kernel, value size)."""
    return {
        role: for_runtime(
            {role: shape}, runtime.attention_holds_no_scores, VALUE_BYTES[precisions[role].precision]
        )[role]
        for role, shape in spec.networks.items()
    }


def _write_networks(
    pipeline: object,
    spec: PipelineSpec,
    model_dirs: dict[str, Path],
    options: ExportOptions,
    runtime: RuntimeOptions,
    log: object,
) -> list[ExportCheck]:
    """Each network model's files and config for ``runtime``, checked against torch."""
    roles = list(model_dirs)
    tensors = _network_tensors(pipeline, spec)
    precisions = spec.precisions
    if runtime.runtime == "gpu-torch":
        log(f"saving {', '.join(roles)} for torch ...")
        caches = (spec.deep_cache_branches, spec.first_block_cache)
        for role, model_dir in model_dirs.items():
            # A step-caching network loads its denoiser's saved weights (and keeps only the layers it runs).
            shared = model_dirs[base_role(role)] / "1" if base_role(role) != role else None
            save_network(
                pipeline, spec.architecture, role, model_dir / "1", precisions[role], caches[0], shared,
                caches[1],
            )  # fmt: skip
        directories = {role: d / "1" for role, d in model_dirs.items()}
        checks = verify_saved_networks(pipeline, directories, *caches)
        model_py = "triton_inpaint.triton.torch_model"
    else:
        log(f"exporting {', '.join(roles)} to ONNX ...")
        stages = 3 if runtime.runtime != "cpu" or options.cpu_graphs else 2
        with progress(len(roles) * stages, "export", unit="network", quiet=options.quiet) as bar:

            def step(stage: str) -> Callable[[str, Path], None]:
                def done(role: str, path: Path) -> None:
                    mib = _folder_mib(path.parent)
                    bar.set_postfix_str(f"{stage} {role} ({mib:.{0 if mib >= 10 else 1}f} MiB)")
                    bar.update()

                return done

            paths = export_onnx(
                pipeline,
                {role: d / "1" / "model.onnx" for role, d in model_dirs.items()},
                fused_attention=runtime.runtime == "cpu" and runtime.fused_attention,
                each=step("exported"),
                deep_cache_branches=spec.deep_cache_branches,
                first_block_cache=spec.first_block_cache,
            )
            if runtime.runtime == "cpu" and options.cpu_graphs:
                log("optimising the graphs for onnxruntime's CPU provider ...")
                for role, path in paths.items():
                    optimize_for_cpu(path)
                    step("optimised")(role, path)
            if runtime.runtime != "cpu":
                log("cleaning the graphs for the GPU (constant folding, shape inference) ...")
                for role, path in paths.items():
                    clean_onnx(path)
                    step("cleaned")(role, path)
            # the graphs as served, on onnxruntime's CPU provider
            checks = verify_onnx(
                pipeline, paths, step("checked"), spec.deep_cache_branches, spec.first_block_cache
            )
        model_py = "triton_inpaint.triton.onnx_model" if runtime.runtime == "cpu" else None
    for role, (inputs, outputs) in tensors.items():
        model_dir = model_dirs[role]
        profile = shape_profile(role, inputs, spec, runtime.max_side) if runtime.uses_profiles else None
        config = network_config(model_dir.name, role, inputs, outputs, runtime, profile, precisions[role])
        write_config(model_dir, config)
        if profile is not None and runtime.runtime == "gpu-tensorrt":
            described = {"precision": precisions[role], **profile.to_json()}
            (model_dir / PROFILE_FILE).write_text(json.dumps(described, indent=2) + "\n")
        if model_py is not None:
            write_model_py(model_dir / "1", model_py)
    return checks
