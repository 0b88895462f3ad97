"""The four runtimes export writes (``--runtime cpu|gpu-onnxruntime|gpu-tensorrt|gpu-torch``).

What runs here, without a GPU: every runtime's configs read back through Triton's own protobuf
definitions with the fields that runtime needs; the shape profiles cover every size and image count the
controls allow; the cleaned ONNX graphs still match torch; ``export tensorrt`` refuses with a clear
message where TensorRT is missing; and the ``gpu-torch`` repository, placed on the CPU
(``--instance-kind cpu``), is served by a real Triton through the DLPack tensor path and gives
diffusers' images. What needs a GPU is measured by ``triton-inpaint bench-gpu`` (docs/runtimes.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.api import contract
from triton_inpaint.api.commands import ExitCode
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.roles import shallow_role
from triton_inpaint.api.schema import INPAINT
from triton_inpaint.cli import main as cli_main
from triton_inpaint.export.repository import ExportOptions, export_checkpoint
from triton_inpaint.export.runtimes import (
    RuntimeOptions,
    ShapeProfile,
    max_batch,
    shape_profile,
)
from triton_inpaint.export.tensorrt_build import TensorRTUnavailable, build_plans
from triton_inpaint.networks.runners import (
    TEXT_ENCODER,
    TRANSFORMER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    RunnerComponents,
)
from triton_inpaint.networks.torch_networks import load_network, torch_runner
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.server.plans import PROFILE_FILE

PROMPT = "a red apple on a wooden table"
NAME = "rt"


def _export(checkpoint: Path, repository: Path, **options: object) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_checkpoint(checkpoint, NAME, repository, ExportOptions(**options), log=lambda _: None)


def _config(repository: Path, model: str) -> mc.ModelConfig:
    """A written config read back as Triton reads it: a text-format ModelConfig message."""
    return text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def runtime_repositories(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("runtimes")
    settings = {
        "gpu-onnxruntime": {"trt_accelerator": True, "trt_cache": "/cache/trt"},
        "gpu-tensorrt": {"max_side": 1024},
        "gpu-torch": {},
    }
    exported = {}
    for runtime, options in settings.items():
        checks = _export(tiny_checkpoint, root / runtime, runtime=runtime, **options)
        exported[runtime] = (root / runtime, checks)
    return exported


# -- configs -------------------------------------------------------------------------------------


def test_gpu_onnxruntime_configs_are_native_onnxruntime_models_with_tensorrt(runtime_repositories):
    repository, _ = runtime_repositories["gpu-onnxruntime"]
    unet = _config(repository, f"{NAME}_unet")
    assert unet.platform == "onnxruntime_onnx" and unet.backend == "onnxruntime"
    assert [g.kind for g in unet.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert unet.max_batch_size == contract.NETWORK_MAX_BATCH
    assert unet.HasField("dynamic_batching")
    (accelerator,) = unet.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    parameters = dict(accelerator.parameters)
    assert parameters["precision_mode"] == "FP16"  # the default precision with the accelerator
    assert unet.parameters["precision"].string_value == "fp16"
    # The tiny VAE's config says force_upcast (diffusers' default): TensorRT builds it in fp32.
    for role in (VAE_ENCODER, VAE_DECODER):
        vae_config = _config(repository, f"{NAME}_{role}")
        (vae_accelerator,) = vae_config.optimization.execution_accelerators.gpu_execution_accelerator
        assert vae_accelerator.parameters["precision_mode"] == "FP32"
        assert vae_config.parameters["precision"].string_value == "fp32"
    assert parameters["trt_engine_cache_enable"] == "1"
    assert parameters["trt_engine_cache_path"] == f"/cache/trt/{NAME}_unet"
    # The profile in onnxruntime's syntax, batch axis first: SD's latents at 1/8 of 8..2048 px.
    assert parameters["trt_profile_min_shapes"].startswith("sample:1x9x1x1,timestep:1x1,")
    assert parameters["trt_profile_max_shapes"].startswith("sample:8x9x256x256,timestep:8x1,")
    # Native model files for the backend, no Python adapters; no CPU-optimised graph.
    assert (repository / f"{NAME}_unet" / "1" / "model.onnx").is_file()
    assert not (repository / f"{NAME}_unet" / "1" / "model.py").exists()
    assert not (repository / f"{NAME}_unet" / "1" / "model.cpu.onnx").exists()
    vae = _config(repository, f"{NAME}_vae_decoder")
    assert vae.max_batch_size == 1 and not vae.HasField("dynamic_batching")
    denoise = _config(repository, f"{NAME}_denoise")
    assert denoise.backend == "python"
    assert [g.kind for g in denoise.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert denoise.parameters["device_tensors"].string_value == "1"
    assert denoise.parameters["max_side"].string_value == "2048"


def test_gpu_tensorrt_configs_wait_for_plans_built_on_the_target_gpu(runtime_repositories):
    repository, _ = runtime_repositories["gpu-tensorrt"]
    for role in (TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET):
        model = f"{NAME}_{role}"
        config = _config(repository, model)
        assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert config.max_batch_size == max_batch(role)
        assert not config.cc_model_filenames  # filled in by export tensorrt, per compute capability
        assert (repository / model / "1" / "model.onnx").is_file()  # the cleaned graph to build from
        described = json.loads((repository / model / PROFILE_FILE).read_text())
        want = "fp32" if role in (VAE_ENCODER, VAE_DECODER) else "fp16"  # a force_upcast VAE
        assert described["precision"] == config.parameters["precision"].string_value == want
        profile = ShapeProfile.from_json(described)
        assert list(profile.min) == [tensor.name for tensor in config.input]
        for name in profile.min:  # max batch of the engine == max_batch_size of the config
            assert profile.max[name][0] == config.max_batch_size
    unet = json.loads((repository / f"{NAME}_unet" / PROFILE_FILE).read_text())
    assert unet["max"]["sample"] == [8, 9, 128, 128]  # --max-size 1024
    assert _config(repository, f"{NAME}_denoise").parameters["max_side"].string_value == "1024"


def test_gpu_torch_configs_are_python_models_on_the_gpu(runtime_repositories):
    repository, checks = runtime_repositories["gpu-torch"]
    unet = _config(repository, f"{NAME}_unet")
    assert unet.backend == "python" and not unet.platform
    assert [g.kind for g in unet.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert unet.parameters["precision"].string_value == "fp16"
    assert unet.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    # The networks called once a request give their PyTorch cache back after each call; the UNet's
    # working set stays.
    assert unet.parameters["empty_cache"].string_value == "false"
    for role in (TEXT_ENCODER, VAE_ENCODER, VAE_DECODER):
        assert _config(repository, f"{NAME}_{role}").parameters["empty_cache"].string_value == "true"
    version = repository / f"{NAME}_unet" / "1"
    assert "triton_inpaint.triton.torch_model" in (version / "model.py").read_text()
    saved = json.loads((version / "network.json").read_text())
    assert saved == {
        "role": UNET,
        "architecture": "sd",
        "precision": "fp16",
        "modules": {"unet": "diffusers.UNet2DConditionModel"},
        "dtypes": {"unet": "float16"},
        "deep_cache_branches": [0, 1, 2],
        "first_block_cache": False,
    }
    # A DeepCache shallow UNet reads the UNet's saved weights (kept once on disk) and, loaded, holds
    # only the blocks it runs.
    shallow = repository / f"{NAME}_{shallow_role(0)}" / "1"
    assert json.loads((shallow / "network.json").read_text())["weights_from"] == f"../../{NAME}_unet/1"
    assert not list(shallow.rglob("*.safetensors"))
    _, module = load_network(shallow)
    assert module.unet.mid_block is None
    full = load_network(version)[1]
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in full.parameters())
    # Loaded as stored: fp16 for the UNet, fp32 for a VAE whose config says force_upcast (diffusers').
    assert next(load_network(version)[1].parameters()).dtype == torch.float16
    vae = json.loads((repository / f"{NAME}_vae_decoder" / "1" / "network.json").read_text())
    assert vae["dtypes"] == {"vae": "float32"}
    assert next(load_network(repository / f"{NAME}_vae_decoder" / "1")[1].parameters()).dtype == torch.float32
    # The weights are stored as served: fp16 halves them (a VAE that must stay fp32 stays fp32).
    from safetensors import safe_open

    with safe_open(str(next((version / "unet").glob("*.safetensors"))), "pt") as weights:
        assert {str(weights.get_tensor(key).dtype) for key in weights.keys()} == {"torch.float16"}  # noqa: SIM118
    # Export loaded every saved network back and ran it against the pipeline's module: fp16 weights
    # round at about 1e-3 on these tiny random networks, nothing more.
    assert {check.submodel for check in checks} == {
        TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET, *(shallow_role(b) for b in (0, 1, 2))
    }  # fmt: skip
    assert all(check.max_abs_diff < 1e-2 for check in checks), checks


def test_cpu_runtime_configs_are_unchanged_python_onnxruntime_models(exported_repository):
    repository, _ = exported_repository
    unet = _config(repository, "tiny_unet")
    assert unet.backend == "python" and [g.kind for g in unet.instance_group] == [
        mc.ModelInstanceGroup.KIND_CPU
    ]
    assert unet.parameters["ort_threads"].string_value == "0"
    assert "triton_inpaint.triton.onnx_model" in (repository / "tiny_unet" / "1" / "model.py").read_text()
    assert (repository / "tiny_unet" / "1" / "model.cpu.onnx").is_file()
    denoise = _config(repository, "tiny_denoise")
    assert "device_tensors" not in denoise.parameters and "max_side" not in denoise.parameters
    assert [g.kind for g in denoise.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]


def test_cleaned_gpu_graphs_still_match_torch(runtime_repositories):
    for runtime in ("gpu-onnxruntime", "gpu-tensorrt"):
        _, checks = runtime_repositories[runtime]
        assert {check.submodel for check in checks} == {
        TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET, *(shallow_role(b) for b in (0, 1, 2))
    }  # fmt: skip
        for check in checks:
            print(f"{runtime} {check.submodel}: max |onnx - torch| = {check.max_abs_diff:.2e}")
            assert check.max_abs_diff < 1e-4


def test_cleanup_folds_the_exporters_shape_arithmetic(runtime_repositories, exported_repository):
    import onnx

    cleaned = onnx.load(str(runtime_repositories["gpu-tensorrt"][0] / f"{NAME}_unet" / "1" / "model.onnx"))
    raw = onnx.load(str(exported_repository[0] / "tiny_unet" / "1" / "model.onnx"))  # the cpu export
    assert len(cleaned.graph.node) < 0.8 * len(raw.graph.node)
    assert len(cleaned.graph.value_info) > 0  # shapes inferred for the intermediate tensors


# -- shape profiles ------------------------------------------------------------------------------


def _sd_spec() -> PipelineSpec:
    return PipelineSpec(vae_scale_factor=8, vae_scaling_factor=0.18215, latent_channels=4,
                        denoiser_in_channels=9, native_resolution=512)  # fmt: skip


def _flux_spec() -> PipelineSpec:
    return PipelineSpec(vae_scale_factor=8, vae_scaling_factor=0.3611, latent_channels=16,
                        denoiser_in_channels=384, native_resolution=1024, flux=True)  # fmt: skip


def _within(profile: ShapeProfile, shapes: dict[str, tuple[int, ...]]) -> bool:
    return all(
        all(low <= dim <= high for low, dim, high in zip(profile.min[n], shape, profile.max[n], strict=True))
        for n, shape in shapes.items()
    )


def test_profiles_cover_every_size_and_image_count_the_controls_allow():
    low, high = INPAINT["width"].bounds
    unet_inputs = [TensorSpec("sample", "TYPE_FP32", (9, -1, -1)), TensorSpec("timestep", "TYPE_FP32", (1,)),
                   TensorSpec("encoder_hidden_states", "TYPE_FP32", (77, 768))]  # fmt: skip
    vae_inputs = [TensorSpec("sample", "TYPE_FP32", (3, -1, -1))]
    flux_inputs = [
        TensorSpec("hidden_states", "TYPE_FP32", (-1, 384)),
        TensorSpec("img_ids", "TYPE_FP32", (-1, 3)),
    ]
    sd, flux = _sd_spec(), _flux_spec()
    profiles = {
        UNET: shape_profile(UNET, unet_inputs, sd),
        VAE_ENCODER: shape_profile(VAE_ENCODER, vae_inputs, sd),
        TRANSFORMER: shape_profile(TRANSFORMER, flux_inputs, flux),
    }
    # Every processing size a request can reach (explicit ones, and default sizes snapped to the
    # size multiple for very wide images), every image count with and without guidance.
    sides = sorted({*range(low, high + 1, 8), 8, 16, 24})
    for (width, height), num_images, cfg in product(
        product(sides[::7] + [high], repeat=2), (1, 2, 3, 4), (1, 2)
    ):
        rows = num_images * cfg
        assert _within(profiles[UNET], {"sample": (rows, 9, height // 8, width // 8), "timestep": (rows, 1),
                                        "encoder_hidden_states": (rows, 77, 768)})  # fmt: skip
        assert _within(profiles[VAE_ENCODER], {"sample": (1, 3, height, width)})
        if width % 16 == 0 and height % 16 == 0:
            tokens = (height // 16) * (width // 16)
            assert _within(profiles[TRANSFORMER], {"hidden_states": (num_images, tokens, 384),
                                                   "img_ids": (num_images, tokens, 3)})  # fmt: skip
    assert profiles[UNET].opt["sample"] == (2, 9, 64, 64)  # native 512 px, one image under guidance
    assert profiles[TRANSFORMER].opt["hidden_states"] == (1, 4096, 384)  # FLUX at its native 1024 px


_DTYPE_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _recorded_precisions(repository: Path, model: str, runtime: str) -> set[str]:
    """Every place an export records a network's precision: its config, the TensorRT accelerator's
    precision_mode, the plan's profile, the torch modules' stored dtypes."""
    config = _config(repository, model)
    found = {config.parameters["precision"].string_value}
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        found.add(accelerator.parameters["precision_mode"].lower())
    if runtime == "gpu-tensorrt":
        found.add(json.loads((repository / model / PROFILE_FILE).read_text())["precision"])
    if runtime == "gpu-torch":
        dtypes = json.loads((repository / model / "1" / "network.json").read_text())["dtypes"]
        found |= {_DTYPE_PRECISIONS[dtype] for dtype in dtypes.values()}
    return found


@pytest.mark.parametrize("runtime", ["gpu-onnxruntime", "gpu-tensorrt", "gpu-torch"])
def test_flux_networks_and_force_upcast_vaes_are_never_built_in_fp16(runtime, flux_checkpoint, tmp_path):
    """FLUX Fill exported for a GPU runtime at its default (half) precision: the transformer, its halves
    and T5 in bf16 (fp32 where the runtime has no bf16), the force_upcast VAE in fp32, CLIP in fp16;
    every record of a network's precision agrees. An explicit fp16 is refused, naming the way out."""
    from triton_inpaint.networks.precision import bf16_native

    options = {"trt_accelerator": True} if runtime == "gpu-onnxruntime" else {}
    _export(flux_checkpoint, tmp_path, runtime=runtime, gpu_instances=False, **options)
    spec = PipelineSpec.load(tmp_path / f"{NAME}_denoise" / "1")
    no_bf16 = runtime == "gpu-onnxruntime"
    want = {
        role: ("fp32" if no_bf16 else "bf16") if bf16_native("flux", role)
        else "fp32" if role in (VAE_ENCODER, VAE_DECODER) else "fp16"
        for role in spec.network_tensors()
    }  # fmt: skip
    assert spec.precisions == want
    for role, precision in want.items():
        assert _recorded_precisions(tmp_path, f"{NAME}_{role}", runtime) == {precision}, role
    with pytest.raises(ValueError, match="overflow fp16 .* --allow-fp16-overflow"):
        _export(flux_checkpoint, tmp_path / "fp16", runtime=runtime, precision="fp16", **options)


def test_runtime_options_refuse_combinations_that_cannot_work():
    with pytest.raises(ValueError, match="--precision fp16 needs a GPU runtime"):
        RuntimeOptions(runtime="cpu", precision="fp16")
    with pytest.raises(ValueError, match="needs --trt-accelerator"):
        RuntimeOptions(runtime="gpu-onnxruntime", precision="fp16")
    with pytest.raises(ValueError, match="--precision bf16 is not a precision of --runtime gpu-onnxruntime"):
        RuntimeOptions(runtime="gpu-onnxruntime", precision="bf16", trt_accelerator=True)
    with pytest.raises(ValueError, match="--precision bf16 needs a GPU runtime"):
        RuntimeOptions(runtime="cpu", precision="bf16")
    with pytest.raises(ValueError, match="--cuda-graphs is an option of --runtime gpu-torch"):
        RuntimeOptions(runtime="gpu-tensorrt", cuda_graphs=True)
    with pytest.raises(ValueError, match="--max-size 4096: use 64 to 2048"):
        RuntimeOptions(runtime="gpu-tensorrt", max_side=4096)
    with pytest.raises(ValueError, match="--runtime 'tpu'"):
        RuntimeOptions(runtime="tpu")


def test_cli_names_the_bad_runtime_flag(capsys, tmp_path):
    code = cli_main(["export", "onnx", "--checkpoint", str(tmp_path), "--name", "x", "--repository",
                     str(tmp_path / "r"), "--runtime", "cpu", "--precision", "fp16"])  # fmt: skip
    assert code == 2
    assert "--precision fp16 needs a GPU runtime" in capsys.readouterr().err


# -- TensorRT build ------------------------------------------------------------------------------


def test_export_tensorrt_refuses_clearly_without_tensorrt(runtime_repositories, capsys):
    repository, _ = runtime_repositories["gpu-tensorrt"]
    with pytest.raises(TensorRTUnavailable, match="needs TensorRT"):
        build_plans(repository)
    assert cli_main(["export", "tensorrt", "--repository", str(repository)]) == ExitCode.NOT_INSTALLED
    err = capsys.readouterr().err
    assert "TensorRT" in err and "nvcr.io/nvidia/tritonserver" in err
    for model in repository.glob(f"{NAME}_*/1"):  # nothing half-written
        assert not list(model.glob("*.plan")) and not list(model.glob("*.partial"))


def test_export_tensorrt_names_a_repository_without_plan_models(exported_repository, capsys):
    assert cli_main(["export", "tensorrt", "--repository", str(exported_repository[0])]) == 2
    assert "no tensorrt_plan models" in capsys.readouterr().err


# -- gpu-torch, run on the CPU -------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_cpu_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gpu-torch repository with its instances on the CPU, in fp32: the same models and data path
    (DLPack between the denoise model and torch models) as on a GPU."""
    repository = tmp_path_factory.mktemp("torch-cpu")
    _export(tiny_checkpoint, repository, runtime="gpu-torch", precision="fp32", gpu_instances=False)
    return repository


def _params(**controls: object) -> DenoiseParams:
    return DenoiseParams.from_inputs(PROMPT, **controls)


def test_gpu_torch_networks_in_process_match_diffusers(
    torch_cpu_repository, reference_pipeline, scheduler_config
):
    """The saved networks loaded as the torch model loads them, behind the tensor runner."""
    roles = (TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET)
    modules = {role: load_network(torch_cpu_repository / f"{NAME}_{role}" / "1")[1] for role in roles}
    names = {role: f"{NAME}_{role}" for role in roles}
    components = RunnerComponents(
        torch_runner({names[r]: m for r, m in modules.items()}), names, device="cpu"
    )
    ours = SDInpaintPipeline.from_directory(torch_cpu_repository / f"{NAME}_denoise" / "1", components)
    image, mask = make_image(96, 64), irregular_mask(96, 64)
    params = _params(
        steps=6, strength=0.7, guidance_scale=7.5, seed=7, scheduler="Euler a", width=96, height=64
    )
    generated, _ = ours(image, mask.astype(np.float32) / 255.0, params)
    want = diffusers_inpaint(reference_pipeline, scheduler_config, image, mask, PROMPT, "Euler a",
                             steps=6, strength=0.7, guidance=7.5, seed=7)  # fmt: skip
    diff = np.abs(generated[0].astype(int) - want.astype(int))
    print(f"gpu-torch in-process vs diffusers: max {diff.max()}/255")
    assert diff.max() <= 1


def test_engine_side_limit_refuses_before_any_network(torch_cpu_repository):
    ours = SDInpaintPipeline.from_directory(
        torch_cpu_repository / f"{NAME}_denoise" / "1", RunnerComponents(None)
    )
    ours.max_side = 128
    with pytest.raises(InvalidInputError, match="width: .*256x64.*up to 128 px"):
        ours.plan(np.ones((64, 256), np.float32), _params(seed=1, width=256, height=64))
    ours.plan(np.ones((64, 128), np.float32), _params(seed=1, width=128, height=64))  # within: planned


@pytest.fixture(scope="module")
def torch_cpu_server(torch_cpu_repository):
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.server.process import TritonServer, free_port

    server = TritonServer([BUILTIN_REPOSITORY, torch_cpu_repository], free_port(), free_port(), free_port())
    with server:
        yield server


@pytest.mark.server
@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a"])
def test_served_gpu_torch_repository_matches_diffusers(
    torch_cpu_server, reference_pipeline, scheduler_config, scheduler
):
    """Denoise model and torch models exchange torch tensors over DLPack (here in CPU memory)."""
    from triton_inpaint.client import InpaintClient

    image, mask = make_image(160, 96), irregular_mask(160, 96)
    controls = {"steps": 8, "strength": 0.75, "guidance_scale": 7.5, "seed": 99, "scheduler": scheduler}
    with InpaintClient(torch_cpu_server.grpc_url, "grpc") as client:
        result = client.inpaint(
            NAME, png_bytes(image), png_bytes(mask), PROMPT, width=160, height=96, **controls
        )
    want = diffusers_inpaint(reference_pipeline, scheduler_config, image, mask, PROMPT, scheduler,
                             steps=8, strength=0.75, guidance=7.5, seed=99)  # fmt: skip
    served = decode_rgb(result.image)
    assert_served_parity(f"gpu-torch on CPU, {scheduler}", served, want, mask, image, tolerance=1)


def test_built_plans_are_registered_per_compute_capability(tmp_path):
    """The config side of ``export tensorrt`` (the engine build itself needs TensorRT and a GPU): each
    plan is added under its compute capability, the first one is also the default, and a model whose
    plan for this GPU exists is found built (so a pod's init step rebuilds nothing)."""
    from triton_inpaint.export.tensorrt_build import _register_plan
    from triton_inpaint.server.plans import plan_filename
    from triton_inpaint.server.plans import registered_plan as _registered_plan

    model = tmp_path / "rt_unet"
    (model / "1").mkdir(parents=True)
    config = mc.ModelConfig(name="rt_unet", platform="tensorrt_plan", max_batch_size=8)
    (model / "config.pbtxt").write_text(text_format.MessageToString(config))
    assert _registered_plan(model, "9.0") is None
    for capability in ("9.0", "8.9"):
        (model / "1" / plan_filename(capability)).write_bytes(b"plan")
        _register_plan(model, capability, plan_filename(capability))
    written = _config(tmp_path, "rt_unet")
    assert dict(written.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.9": "model.sm89.plan"}
    assert written.default_model_filename == "model.sm90.plan"
    assert _registered_plan(model, "8.9") == model / "1" / "model.sm89.plan"
    (model / "1" / "model.sm89.plan").unlink()
    assert _registered_plan(model, "8.9") is None  # registered but missing: built again


def test_a_stale_plan_is_refused_by_serve_and_rebuilt_by_export_tensorrt(runtime_repositories, tmp_path):
    """Each plan's record (compute capability, TensorRT version, precision, shape profile) against what
    the model needs now: the check serve refuses with and export tensorrt rebuilds by, run here without
    TensorRT on plans registered and recorded as export tensorrt does."""
    import shutil

    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.export.tensorrt_build import _register_plan, plans_to_build
    from triton_inpaint.server.plans import (
        plan_filename,
        record_path,
        serving_refusal,
        tensorrt_plan_models,
        wanted_record,
        write_record,
    )

    repository = tmp_path / "models"
    shutil.copytree(runtime_repositories["gpu-tensorrt"][0], repository)
    models = tensorrt_plan_models(repository)
    for model_dir in models:  # "built" on an H100 with TensorRT 10.3.0 (build 26)
        plan = model_dir / "1" / plan_filename("9.0")
        plan.write_bytes(b"plan")
        write_record(plan, wanted_record(model_dir, "9.0", "10.3.0.26"))
        _register_plan(model_dir, "9.0", plan.name)
    repositories = [BUILTIN_REPOSITORY, repository]
    assert serving_refusal(repositories, "9.0", "10.3.0") is None
    assert set(plans_to_build(models, "9.0", "10.3.0").values()) == {None}  # all current: none built
    unet = repository / f"{NAME}_unet"

    # Another TensorRT: serve refuses, naming every model and the command; export tensorrt rebuilds.
    refused = serving_refusal(repositories, "9.0", "10.5.0")
    assert f"  {NAME}_unet: model.sm90.plan was built with TensorRT 10.3.0, this is 10.5.0" in refused
    assert refused.endswith(f"triton-inpaint export tensorrt --repository {repository}")
    assert all(plans_to_build(models, "9.0", "10.5.0").values())
    # Another GPU kind: no plan for it yet.
    assert plans_to_build([unet], "8.9", "10.3.0")[unet] == "no plan for compute capability 8.9"
    # Exported again with another --max-size or precision: the plan covers other shapes, or computes in
    # another precision; only that model is rebuilt.
    described = json.loads((unet / PROFILE_FILE).read_text())
    smaller = {**described["max"], "sample": [8, 9, 64, 64]}
    (unet / PROFILE_FILE).write_text(json.dumps({**described, "max": smaller}))
    reasons = plans_to_build(models, "9.0", "10.3.0")
    assert "model.sm90.plan was built for other shapes than the export's profile" in reasons[unet]
    assert [m for m, reason in reasons.items() if reason] == [unet]
    (unet / PROFILE_FILE).write_text(json.dumps({**described, "precision": "fp32"}))
    assert "was built in fp16, the export asks for fp32" in serving_refusal(repositories, "9.0", "10.3.0")
    # A plan built before records existed is not trusted.
    (unet / PROFILE_FILE).write_text(json.dumps(described))
    record_path(unet / "1" / plan_filename("9.0")).unlink()
    assert "has no build record" in plans_to_build([unet], "9.0", "10.3.0")[unet]
    # serve itself, on a "GPU" whose nvidia-smi answers compute capability 9.0: it stops before Triton.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 9.0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "serve", "--repository", str(repository)],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    heading = "error: TensorRT plans that cannot be served as they are:"
    assert f"{heading}\n  {NAME}_unet: model.sm90.plan has no build record" in done.stderr
    # Without nvidia-smi (this machine), serve says it could not check, and goes on.
    said = []
    assert serving_refusal(repositories, log=said.append) is None
    assert said == [
        "warning: TensorRT plans not checked: no nvidia-smi to tell this GPU's compute capability"
    ]


@pytest.mark.parametrize("family", ["sdxl-inpaint", "flux-fill"])
def test_gpu_torch_saves_every_family_and_reloads_the_same_networks(
    family, sdxl_checkpoints, flux_checkpoint, tmp_path
):
    """SDXL (two CLIPs, one with a projection) and FLUX Fill (CLIP pooled, T5, the transformer): the
    networks the torch model loads give exactly the images of the modules they were saved from."""
    from diffusers import FluxFillPipeline, StableDiffusionXLInpaintPipeline

    from triton_inpaint.networks.runners import TorchComponents, network_tensors
    from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline

    checkpoint = flux_checkpoint if family == "flux-fill" else sdxl_checkpoints[family]
    checks = _export(checkpoint, tmp_path, runtime="gpu-torch", precision="fp32", gpu_instances=False)
    assert all(check.max_abs_diff == 0.0 for check in checks), checks  # fp32 weights: bit for bit
    directory = tmp_path / f"{NAME}_denoise" / "1"
    spec = PipelineSpec.load(directory)
    names = {role: f"{NAME}_{role}" for role in network_tensors(spec.architecture)}
    modules = {name: load_network(tmp_path / name / "1")[1] for name in names.values()}
    loaded = RunnerComponents(torch_runner(modules), names, spec.architecture, "cpu")
    if family == "flux-fill":
        pipeline_class, reference = FluxFillInpaintPipeline, FluxFillPipeline.from_pretrained(checkpoint)
    else:
        pipeline_class = SDInpaintPipeline
        reference = StableDiffusionXLInpaintPipeline.from_pretrained(checkpoint, add_watermarker=False)
    ours = pipeline_class.from_directory(directory, loaded)
    original = pipeline_class.from_directory(directory, TorchComponents(reference))
    image, mask = make_image(96, 64), irregular_mask(96, 64).astype(np.float32) / 255.0
    params = _params(steps=3, seed=5, width=96, height=64)
    got, _ = ours(image, mask, params)
    want, _ = original(image, mask, params)
    assert np.array_equal(got, want)


def test_serve_sizes_tritons_cuda_pool_from_the_gpus_memory(runtime_repositories, exported_repository):
    """One --cuda-memory-pool-byte-size per GPU (1/32 of its memory, 512 MiB to 4 GiB) when a
    repository has models on the GPU; none for a CPU repository or when the operator set one."""
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.server.gpu_pool import cuda_pool_args

    gpu_repository, _ = runtime_repositories["gpu-torch"]
    gpus = [(0, 81559), (1, 8192), (2, 196608)]  # an H100's MiB, an 8 GB card's, a 192 GB card's
    assert cuda_pool_args([BUILTIN_REPOSITORY, gpu_repository], [], gpus) == [
        f"--cuda-memory-pool-byte-size=0:{81559 * 2**20 // 32}",  # 2.5 GiB
        "--cuda-memory-pool-byte-size=1:536870912",  # at least 512 MiB
        "--cuda-memory-pool-byte-size=2:4294967296",  # at most 4 GiB
    ]
    assert cuda_pool_args([BUILTIN_REPOSITORY, exported_repository[0]], [], gpus) == []
    assert cuda_pool_args([gpu_repository], ["--cuda-memory-pool-byte-size=0:1024"], gpus) == []

