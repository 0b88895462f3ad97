"""What each runtime writes for a checkpoint's networks: the Triton config of every network model, and
the shape ranges (optimisation profiles) a GPU engine must cover.

The model names, tensor names, types and shapes are the same in every runtime (the denoise model never
knows which one runs its networks); only the network models' backend, placement and files differ:

- ``cpu``: Python-backend models holding onnxruntime CPU sessions (the tritonserver in nvidia-pytriton
  has no other backend);
- ``gpu-onnxruntime``: Triton's native onnxruntime backend on the GPU (NVIDIA's container), optionally
  with the TensorRT execution accelerator;
- ``gpu-tensorrt``: TensorRT plans, built on the target GPU by ``export tensorrt`` from the ONNX graphs;
- ``gpu-torch``: Python-backend models running the diffusers / transformers modules with torch on CUDA,
  which runs on the tritonserver this project already starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from triton_inpaint.api import contract
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.api.roles import TRANSFORMER, UNET, VAE_ENCODER, base_role
from triton_inpaint.api.schema import INPAINT
from triton_inpaint.networks.precision import BF16, FP16, FP32, PRECISIONS
from triton_inpaint.pipelines.spec import PipelineSpec

RUNTIMES = ("cpu", "gpu-onnxruntime", "gpu-tensorrt", "gpu-torch")
GPU_RUNTIMES = RUNTIMES[1:]
ONNX_RUNTIMES = ("cpu", "gpu-onnxruntime", "gpu-tensorrt")  # the ones that serve the ONNX graphs
DENOISERS = (UNET, TRANSFORMER)


def max_batch(role: str) -> int:
    """The largest batch a network is called with: the denoiser carries every request in flight (with
    classifier-free guidance, two rows per image); the pipelines call text encoders once per prompt and
    the VAE once per image. An engine built for more would reserve memory for batches that never come."""
    return contract.NETWORK_MAX_BATCH if base_role(role) in DENOISERS else 1


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shape of every input of one network, batch axis included (TensorRT's view)."""

    min: dict[str, tuple[int, ...]]
    opt: dict[str, tuple[int, ...]]
    max: dict[str, tuple[int, ...]]

    def option(self, which: str) -> str:
        """As onnxruntime's TensorRT provider takes it: ``name:1x4x64x64,name2:...``."""
        shapes = getattr(self, which)
        return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())

    def to_json(self) -> dict[str, dict[str, list[int]]]:
        return {
            which: {name: list(dims) for name, dims in getattr(self, which).items()}
            for which in ("min", "opt", "max")
        }

    @classmethod
    def from_json(cls, data: dict[str, dict[str, list[int]]]) -> ShapeProfile:
        return cls(
            **{which: {n: tuple(d) for n, d in data[which].items()} for which in ("min", "opt", "max")}
        )


def side_range(spec: PipelineSpec, max_side: int | None = None) -> tuple[int, int]:
    """The processing sides (pixels) a request can reach: from the size multiple (a default size
    snapped for a very wide or tall image) to the largest width/height the controls allow."""
    largest = int(INPAINT["width"].bounds[1])
    return spec.size_multiple, min(max_side or largest, largest)


def shape_profile(
    role: str, inputs: list[TensorSpec], spec: PipelineSpec, max_side: int | None = None
) -> ShapeProfile:
    """The shapes ``role`` sees for every size and batch the controls allow (up to ``max_side``).

    Dynamic dims are, by role: pixels for the VAE encoder, latents for the VAE decoder and the UNet,
    image tokens (2x2 latent patches) for FLUX's transformer. The opt shape is the native resolution
    with one image: two rows for the UNet under guidance, one for the others.
    """
    low, high = side_range(spec, max_side)
    native = spec.native_resolution
    factor = spec.vae_scale_factor

    # A DeepCache feature is at 1/2^block of the latents (its scale: spec.deep_cache_features).
    feature_scales = {f"deep_feature_{branch}": scale for branch, _, scale in spec.deep_cache_features}

    def sized(side: int, tensor: str) -> int:
        if role == VAE_ENCODER:
            return side
        if base_role(role) == TRANSFORMER:
            return (side // factor // 2) ** 2  # a square of that side, in image tokens
        return -(-side // factor // feature_scales.get(tensor, 1))  # the feature's side rounds up

    # Classifier-free guidance doubles the UNet's rows; FLUX embeds guidance (one row per image).
    batches = {"min": 1, "opt": 2 if base_role(role) == UNET else 1, "max": max_batch(role)}
    sides = {"min": low, "opt": min(native, high), "max": high}
    profile: dict[str, dict[str, tuple[int, ...]]] = {}
    for which in ("min", "opt", "max"):
        profile[which] = {
            tensor.name: (
                batches[which], *(sized(sides[which], tensor.name) if d == -1 else d for d in tensor.dims)
            )
            for tensor in inputs
        }
    return ShapeProfile(**profile)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the network models of one export run (the runtime part of ``ExportOptions``)."""

    runtime: str = "cpu"
    # The export's precision; each network's own follows from it (triton_inpaint.networks.precision).
    precision: str = FP32
    gpu: bool = True  # KIND_GPU instances (GPU runtimes); False places them on the CPU (KIND_CPU)
    denoiser_instances: int = 1
    denoiser_queue_delay_us: int = 0
    ort_threads: int = 0  # cpu runtime: onnxruntime threads per session, 0 = the process's CPU budget
    trt_accelerator: bool = False  # gpu-onnxruntime: TensorRT execution accelerator
    trt_cache: str = ""  # gpu-onnxruntime: engine cache folder on the server ("" = beside the model)
    cuda_graphs: bool = False  # gpu-torch: torch.compile(mode="reduce-overhead")
    max_side: int | None = None  # GPU profiles: the largest side covered (None = the controls' limit)
    # cpu: attention exported as onnxruntime's fused MultiHeadAttention (export/attention.py).
    fused_attention: bool = True

    @property
    def attention_holds_no_scores(self) -> bool:
        """Whether the served networks' attention keeps no (tokens x tokens) score matrix: onnxruntime's
        fused op on the CPU, torch's SDPA kernels for gpu-torch. The portable graphs of the other GPU
        runtimes are counted as plain attention (the memory estimate's safe side)."""
        return (self.runtime == "cpu" and self.fused_attention) or self.runtime == "gpu-torch"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"--runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.runtime == "cpu" and self.precision != FP32:
            raise ValueError(
                f"--precision {self.precision} needs a GPU runtime; the cpu runtime computes in fp32"
            )
        if self.runtime == "gpu-onnxruntime" and self.precision == FP16 and not self.trt_accelerator:
            raise ValueError(
                "--precision fp16 with --runtime gpu-onnxruntime needs --trt-accelerator (TensorRT "
                "builds fp16 from the fp32 graph); without it onnxruntime's CUDA provider runs fp32"
            )
        if self.runtime == "gpu-onnxruntime" and self.precision == BF16:
            raise ValueError(
                "--precision bf16 is not a precision of --runtime gpu-onnxruntime (Triton's TensorRT "
                "accelerator takes FP32 or FP16); use --runtime gpu-tensorrt or gpu-torch for bf16"
            )
        if self.trt_accelerator and self.runtime != "gpu-onnxruntime":
            raise ValueError("--trt-accelerator is an option of --runtime gpu-onnxruntime")
        if self.cuda_graphs and self.runtime != "gpu-torch":
            raise ValueError("--cuda-graphs is an option of --runtime gpu-torch")
        if not self.fused_attention and self.runtime != "cpu":
            raise ValueError("--no-fused-attention is an option of --runtime cpu")
        low = INPAINT["width"].bounds[0]
        if self.max_side is not None and not low <= self.max_side <= INPAINT["width"].bounds[1]:
            raise ValueError(f"--max-size {self.max_side}: use {low} to {INPAINT['width'].bounds[1]}")

    @property
    def precision_runtime(self) -> str:
        """This runtime as :data:`triton_inpaint.networks.precision.RUNTIME_PRECISIONS` keys it."""
        return "gpu-onnxruntime+trt" if self.trt_accelerator else self.runtime

    @property
    def kind(self) -> int:
        gpu = self.gpu and self.runtime in GPU_RUNTIMES
        return mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU

    @property
    def uses_profiles(self) -> bool:
        """Whether the networks run as TensorRT engines built for a shape range."""
        return self.runtime == "gpu-tensorrt" or self.trt_accelerator

    @property
    def device_tensors(self) -> bool:
        """Whether the denoise model keeps tensors on its device and passes them over DLPack."""
        return self.runtime in GPU_RUNTIMES


def add_tensors(target: object, specs: Iterable[TensorSpec]) -> None:
    for spec in specs:
        entry = target.add()
        entry.name = spec.name
        entry.data_type = mc.DataType.Value(spec.data_type)
        entry.dims.extend(spec.dims)
        if spec.optional and hasattr(entry, "optional"):
            entry.optional = True


def network_config(
    name: str,
    role: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: RuntimeOptions,
    profile: ShapeProfile | None = None,
    precision: str = FP32,
) -> mc.ModelConfig:
    """The config of one network model under ``options.runtime``, running in ``precision`` (the
    network's own, triton_inpaint.networks.precision), which the config records for every runtime."""
    runtime = options.runtime
    config = mc.ModelConfig(name=name, max_batch_size=max_batch(role))
    if runtime == "gpu-onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
    elif runtime == "gpu-tensorrt":
        config.platform = "tensorrt_plan"
        config.backend = "tensorrt"
    else:
        config.backend = "python"
    add_tensors(config.input, inputs)
    add_tensors(config.output, outputs)
    group = config.instance_group.add()
    group.kind = options.kind
    denoiser = base_role(role) in DENOISERS
    group.count = options.denoiser_instances if denoiser else 1
    if denoiser:
        config.dynamic_batching.max_queue_delay_microseconds = options.denoiser_queue_delay_us
    config.parameters["precision"].string_value = precision
    if runtime == "cpu":
        config.parameters["ort_threads"].string_value = str(options.ort_threads)
    if runtime == "gpu-torch":
        config.parameters["cuda_graphs"].string_value = "true" if options.cuda_graphs else "false"
        # Each network is its own process with its own PyTorch cache. The VAE's and text encoders' run
        # once a request: their peaks are given back after each call, so that only the denoiser's
        # working set stays reserved (the memory estimate counts the denoiser and one VAE call).
        config.parameters["empty_cache"].string_value = "false" if denoiser else "true"
        # Inputs arrive in the GPU memory the caller passed, not copied to the host first.
        config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    if runtime == "gpu-onnxruntime" and options.trt_accelerator:
        if profile is None:
            raise ValueError(f"{name}: the TensorRT accelerator needs the network's shape profile")
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        settings = {
            "precision_mode": precision.upper(),
            "max_workspace_size_bytes": str(4 << 30),
            "trt_engine_cache_enable": "1",
            "trt_timing_cache_enable": "1",
            "trt_profile_min_shapes": profile.option("min"),
            "trt_profile_opt_shapes": profile.option("opt"),
            "trt_profile_max_shapes": profile.option("max"),
        }
        if options.trt_cache:
            settings["trt_engine_cache_path"] = f"{options.trt_cache.rstrip('/')}/{name}"
            settings["trt_timing_cache_path"] = options.trt_cache
        for key, value in settings.items():
            accelerator.parameters[key] = value
    return config


def denoise_runtime_parameters(config: mc.ModelConfig, options: RuntimeOptions, spec: PipelineSpec) -> None:
    """What the denoise (BLS) model of a runtime needs: on GPU runtimes it sits on the GPU and keeps
    its tensors there (DLPack); with TensorRT engines it refuses sizes beyond their profiles up front,
    naming the field, instead of failing inside the engine."""
    for group in config.instance_group:
        group.kind = options.kind
    if options.device_tensors:  # its own inputs (images, prompts) come from the CPU steps
        config.parameters["device_tensors"].string_value = "1"
    if options.uses_profiles:
        config.parameters["max_side"].string_value = str(side_range(spec, options.max_side)[1])
