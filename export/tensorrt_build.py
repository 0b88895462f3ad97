"""``triton-inpaint export tensorrt``: build the TensorRT plans of a ``gpu-tensorrt`` repository on the
GPU that will serve them.

A plan only runs on the compute capability and TensorRT version it was built with, so this is its own
step, run on the target GPU (inside NVIDIA's tritonserver container, which carries TensorRT): for every
``tensorrt_plan`` model it reads the cleaned ``1/model.onnx`` export wrote and the network's shape
profile and precision (``trt_profile.json``, from export's ``--max-size`` and each network's precision),
builds ``1/model.sm<CC>.plan`` with polygraphy (one timing cache shared by every build), writes its
record beside it (:mod:`triton_inpaint.server.plans`) and adds it to the config's ``cc_model_filenames``,
so one repository can carry plans for several GPU kinds. A plan that is current is kept; one whose
record differs (another TensorRT, precision or profile) is built again. Each plan is written to a
temporary name and renamed when complete; the config is rewritten only after.

LoRA banks and step caching need no plans of their own: a LoRA-banked network takes the adapters'
weights as an input (``lora_scales``), so one plan serves every weighting; the DeepCache shallow UNets
and FLUX's transformer halves are models of their own, each built here like any other network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_inpaint.api.commands import CommandError, ExitCode
from triton_inpaint.export.runtimes import ShapeProfile
from triton_inpaint.networks.precision import HALF
from triton_inpaint.server.plans import (
    PROFILE_FILE,
    gpu_compute_capability,
    plan_filename,
    registered_plan,
    short_version,
    stale_reason,
    tensorrt_plan_models,
    wanted_record,
    write_record,
)

TENSORRT_MISSING = (
    "export tensorrt needs TensorRT (the 'tensorrt' Python package and libnvinfer) and an NVIDIA GPU: "
    "a plan is built for the GPU that runs it. Run this command on the serving GPU, e.g. inside "
    "nvcr.io/nvidia/tritonserver:24.10-py3 (which carries TensorRT 10) with this package installed. "
    "TensorRT cannot be installed from PyPI alone (its wheels download from NVIDIA's index)."
)


class TensorRTUnavailable(CommandError):
    """TensorRT or a GPU is missing where ``export tensorrt`` runs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_INSTALLED)


@dataclass(frozen=True)
class BuiltPlan:
    model: str
    compute_capability: str
    path: Path
    seconds: float


def require_tensorrt() -> object:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the bindings without libnvinfer
        raise TensorRTUnavailable(f"{TENSORRT_MISSING} ({type(exc).__name__}: {exc})") from None
    return tensorrt


def compute_capability() -> str:
    """The serving GPU's compute capability, as Triton's ``cc_model_filenames`` keys name it (``8.9``)."""
    capability = gpu_compute_capability()
    if capability is None:
        raise TensorRTUnavailable(f"no NVIDIA GPU found (nvidia-smi did not answer); {TENSORRT_MISSING}")
    return capability


def build_plans(
    repository: Path,
    timing_cache: Path | None = None,
    workspace_gib: float | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> list[BuiltPlan]:
    """Build a plan for this GPU for every TensorRT model of ``repository`` whose plan for its compute
    capability is missing or stale (all of them with ``rebuild``): a pod's init step can run it at every
    start, and rebuilds only what changed."""
    models = tensorrt_plan_models(repository)
    if not models:
        raise ValueError(
            f"--repository {repository}: no tensorrt_plan models; export with --runtime gpu-tensorrt first"
        )
    for model_dir in models:
        for needed in (model_dir / "1" / "model.onnx", model_dir / PROFILE_FILE):
            if not needed.is_file():
                raise FileNotFoundError(f"{model_dir.name}: {needed.name} is missing; export it again")
    tensorrt = require_tensorrt()
    capability = compute_capability()
    version = short_version(tensorrt.__version__)
    timing_cache = timing_cache or repository / "trt_timing.cache"
    built = []
    wanted = plans_to_build(models, capability, version, rebuild)
    for number, (model_dir, reason) in enumerate(wanted.items(), 1):
        if reason is None:
            existing = registered_plan(model_dir, capability)
            log(f"[{number}/{len(models)}] {model_dir.name}: {existing.name} is current")
            built.append(BuiltPlan(model_dir.name, capability, existing, 0.0))
            continue
        log(f"[{number}/{len(models)}] {model_dir.name} ({reason}): building for compute capability "
            f"{capability} with TensorRT {version} ...")  # fmt: skip
        started = time.monotonic()
        target = _build_plan(model_dir, capability, timing_cache, workspace_gib)
        write_record(target, wanted_record(model_dir, capability, version))
        _register_plan(model_dir, capability, target.name)
        built.append(BuiltPlan(model_dir.name, capability, target, time.monotonic() - started))
        log(f"      {target.name}: {target.stat().st_size / 2**20:.0f} MiB in {built[-1].seconds:.0f} s")
    return built


def plans_to_build(
    models: list[Path], capability: str, tensorrt_version: str, rebuild: bool = False
) -> dict[Path, str | None]:
    """Each TensorRT model, with why its plan for ``capability`` must be built (None: it is current)."""
    return {
        model_dir: "--rebuild" if rebuild else stale_reason(model_dir, capability, tensorrt_version)
        for model_dir in models
    }


def _build_plan(model_dir: Path, capability: str, timing_cache: Path, workspace_gib: float | None) -> Path:
    """Build one network's plan from its cleaned graph and profile; written whole or not at all."""
    import tensorrt
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )

    described = json.loads((model_dir / PROFILE_FILE).read_text())
    shapes = ShapeProfile.from_json(described)
    profile = Profile()
    for name in shapes.min:
        profile.add(name, min=shapes.min[name], opt=shapes.opt[name], max=shapes.max[name])
    # fp16 / bf16 let TensorRT pick half-precision kernels where they are faster; it keeps fp32 where it
    # must. Each network's own precision (a force_upcast VAE's is fp32, FLUX's bf16).
    settings: dict[str, object] = {"profiles": [profile]}
    if described["precision"] in HALF:
        settings[described["precision"]] = True
    if timing_cache.is_file():
        settings["load_timing_cache"] = str(timing_cache)
    if workspace_gib:
        settings["memory_pool_limits"] = {tensorrt.MemoryPoolType.WORKSPACE: int(workspace_gib * 2**30)}
    network = network_from_onnx_path(str(model_dir / "1" / "model.onnx"))
    engine = engine_bytes_from_network(
        network, config=CreateConfig(**settings), save_timing_cache=str(timing_cache)
    )
    target = model_dir / "1" / plan_filename(capability)
    partial = target.with_suffix(".partial")
    partial.write_bytes(bytes(engine))
    partial.replace(target)
    return target


def _register_plan(model_dir: Path, capability: str, filename: str) -> None:
    """Add the plan to the config's ``cc_model_filenames``; the first plan built is also the default."""
    config_path = model_dir / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.cc_model_filenames[capability] = filename
    if not config.default_model_filename:
        config.default_model_filename = filename
    partial = config_path.with_suffix(".partial")
    partial.write_text(text_format.MessageToString(config))
    partial.replace(config_path)
