"""The memory estimate against what onnxruntime really uses, and the refusal it leads to."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.pipelines.memory import (
    FIXED_BYTES,
    call_bytes,
    check_request,
    default_budget,
    for_runtime,
    largest_fitting,
    network_shapes,
    parse_size,
    request_bytes,
)
from triton_inpaint.pipelines.spec import PipelineSpec

# One call of one exported network in a fresh interpreter; prints the growth of its peak RSS over the
# loaded session. VmHWM, reset after the session is built (clear_refs 5), not ru_maxrss: the latter keeps
# the forking parent's (pytest's) peak across exec, and the session's own build has a peak of its own.
_MEASURE = textwrap.dedent("""
    import json, re, sys
    import numpy as np, onnxruntime as ort
    def peak():
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
    path, role, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        shape = {
            "latent_sample": (batch, 4, size // 8, size // 8),
            "sample": (batch, 3, size, size) if role == "vae_encoder"
                      else (batch, spec.shape[1], size // 8, size // 8),
            "timestep": (batch, 1),
            "encoder_hidden_states": (batch, 77, spec.shape[-1]),
        }[spec.name]
        feeds[spec.name] = rng.random(shape, dtype=np.float32)
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")
    before = peak()
    session.run(None, feeds)
    print(json.dumps(peak() - before))
""")


@pytest.fixture(scope="module")
def tiny_spec(exported_repository) -> tuple[PipelineSpec, object]:
    from tests.conftest import MODEL

    repository, _ = exported_repository
    return PipelineSpec.load(repository / f"{MODEL}_denoise" / "1"), repository


@pytest.mark.parametrize(
    ("role", "size", "batch"),
    [
        ("vae_decoder", 512, 1),
        ("vae_decoder", 768, 1),
        ("vae_encoder", 512, 1),
        ("vae_encoder", 768, 1),
        ("unet", 512, 2),
        ("unet", 768, 2),
        ("unet", 512, 8),
    ],
)
def test_the_estimate_covers_what_onnxruntime_uses_without_wasting_most_of_it(tiny_spec, role, size, batch):
    from tests.conftest import MODEL

    spec, repository = tiny_spec
    model = repository / f"{MODEL}_{role}" / "1" / "model.onnx"
    measured = json.loads(
        subprocess.run(
            [sys.executable, "-c", _MEASURE, str(model), role, str(size), str(batch)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    )
    estimated = call_bytes(spec.networks[role], role, size, size, batch)
    measured_mib, estimated_mib = measured / 2**20, estimated / 2**20
    print(
        f"{role} {size}x{size} batch {batch}: measured {measured_mib:.0f} MiB, estimated {estimated_mib:.0f}"
    )
    assert measured <= estimated <= 3.5 * measured


def test_fused_attention_grows_with_the_pixels_and_plain_attention_with_their_square(tiny_spec):
    """The served CPU graphs hold no score matrix: memory is linear in the pixels. A plain-attention
    graph's grows with their square, which the estimate still knows for such exports."""
    spec, _ = tiny_spec
    assert all(shape["fused_attention"] for shape in spec.networks.values())

    def work(networks: dict, side: int, images: int = 1) -> int:
        return request_bytes(networks, side, side, images, True) - FIXED_BYTES

    assert 3.9 < work(spec.networks, 2048) / work(spec.networks, 1024) < 4.1
    # Three more images are six more UNet rows (guidance); the VAE still runs one image at a time.
    extra_rows = call_bytes(spec.networks["unet"], "unet", 1024, 1024, 6)
    assert work(spec.networks, 1024, 4) - work(spec.networks, 1024, 1) == extra_rows
    plain = for_runtime(spec.networks, fused_attention=False, value_bytes=4)
    assert 15 < work(plain, 4096) / work(plain, 2048) < 17
    assert work(plain, 2048) > 4 * work(spec.networks, 2048)


@pytest.mark.parametrize(("width", "height", "images"), [(2048, 2048, 4), (1536, 1024, 4), (768, 2048, 1)])
def test_the_largest_fitting_size_fits_and_the_next_one_does_not(tiny_spec, width, height, images):
    spec, _ = tiny_spec
    budget = 2**30
    fits = largest_fitting(spec.networks, width, height, images, True, budget, 8)
    assert fits is not None and fits[0] <= width and fits[1] <= height
    assert request_bytes(spec.networks, *fits, images, True) <= budget
    bigger = (fits[0] + 8, fits[1] + 8)
    assert request_bytes(spec.networks, *bigger, images, True) > budget
    assert abs(fits[0] / fits[1] - width / height) < 0.05  # the aspect is kept


def test_a_request_over_the_budget_is_refused_naming_what_fits(tiny_spec):
    spec, _ = tiny_spec
    needed = check_request(spec.networks, 512, 512, 1, True, 2 * 2**30, 8)  # fits: no error
    assert needed.bytes == request_bytes(spec.networks, 512, 512, 1, True) and needed.vae_tile is None
    assert check_request(spec.networks, 2048, 2048, 4, True, None, 8).bytes > 2**30  # no budget: unchecked
    with pytest.raises(InvalidInputError) as info:
        check_request(spec.networks, 2048, 2048, 4, True, 2**30, 8)
    error = info.value
    assert error.field == "width"
    assert "2048x2048 (width x height) with num_images 4 needs about" in error.reason
    assert "more than the 1.0 GiB this model's networks may use" in error.reason
    assert "fits with num_images 4" in error.reason and "with num_images 1" in error.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6GiB", 6 * 2**30), ("512MiB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), ("4096", 4096)],
)
def test_budget_sizes_parse(text, expected):
    assert parse_size(text) == expected
    with pytest.raises(ValueError, match="is not a size"):
        parse_size("lots")


def test_every_family_has_its_shapes(tiny_spec):
    """SDXL's and FLUX's networks are described too (FLUX: joint attention over text and image tokens)."""
    from tests.conftest import FLUX_MODEL, SDXL_MODELS

    _, repository = tiny_spec
    for name in (FLUX_MODEL, *SDXL_MODELS.values()):
        spec = PipelineSpec.load(repository / f"{name}_denoise" / "1")
        denoiser = "transformer" if spec.flux else "unet"
        assert spec.networks[denoiser]["attention"] and spec.networks["vae_decoder"]["attention"]
        assert request_bytes(spec.networks, 1024, 1024, 2, not spec.flux) > request_bytes(
            spec.networks, 512, 512, 2, not spec.flux
        )


def test_model_processes_that_run_no_network_load_no_torch(triton_server):
    """torch costs ~250 MiB a process: only the models that run diffusers' pipeline code may map it.
    The denoise model's process, which does, shows that the check reads real mappings."""
    from pathlib import Path

    from triton_inpaint.api import contract
    from triton_inpaint.server.supervisor import stubs_of
    from triton_inpaint.tools.benchmark import process_pss

    light = {contract.PREPROCESS_MODEL, contract.POSTPROCESS_MODEL, contract.MASKING_MODEL}
    with_torch = {}
    for pid, stub in stubs_of(triton_server.pid).items():
        with_torch[stub.model] = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
        print(f"{stub.model}: torch {with_torch[stub.model]}, PSS {process_pss(pid) / 2**20:.0f} MiB")
    assert light <= set(with_torch), f"model processes: {sorted(with_torch)}"
    assert not [model for model in light if with_torch[model]], with_torch
    assert with_torch[contract.denoise_name("tiny")]


# Real-size architectures, for the budget targets: no weights are needed for the estimate, so the
# networks are built on torch's meta device (shapes only, no memory).
GIB = 2**30
# tritonserver and every model process of one checkpoint, less the weights, before any request: 1.18 GiB
# measured on the real SD 1.5 repository served on the CPU (tests/test_real_size.py, "memory_at_rest");
# 2 GiB keeps a margin for other checkpoints' processes and the detectors.
SERVER_OVERHEAD = 2 * GIB
CHART_LIMIT = 32 * GIB  # the chart's default Triton memory limit (deploy/helm/.../values.yaml)


def _real_architecture(family: str) -> tuple[dict, int, int]:
    """(the served CPU graphs' network shapes, fp32 weight bytes, VAE tile side) of SD 1.5 or SDXL
    inpainting."""
    from types import SimpleNamespace

    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from triton_inpaint.export import tiny

    tokenizer = tiny.build_clip_tokenizer()
    with torch.device("meta"):
        encoders = [CLIPTextModel(tiny.full_clip_config(tokenizer, 768, 12, 12, "quick_gelu"))]
        if family == "sd15":
            unet, vae = tiny.full_sd15_unet(0, 9), tiny.full_vae(0, 0.18215, 512)
        else:
            unet, vae = tiny.full_sdxl_unet(0, 9), tiny.full_vae(0, 0.13025, 1024)
            encoders.append(
                CLIPTextModelWithProjection(tiny.full_clip_config(tokenizer, 1280, 32, 20, "gelu"))
            )
    weights = 4 * sum(p.numel() for module in (unet, vae, *encoders) for p in module.parameters())
    shapes = network_shapes(SimpleNamespace(unet=unet, vae=vae))
    return for_runtime(shapes, fused_attention=True, value_bytes=4), weights, vae.config.sample_size


@pytest.mark.parametrize(
    ("family", "side", "images"), [("sd15", 512, 1), ("sd15", 512, 4), ("sdxl", 1024, 1)]
)
@pytest.mark.parametrize("total", [24 * GIB, CHART_LIMIT], ids=["24GiB-host", "chart-default"])
def test_real_checkpoints_common_requests_fit_the_default_budget(family, side, images, total):
    networks, weights, tile = _real_architecture(family)
    budget = default_budget(total, weights + SERVER_OVERHEAD)
    need = check_request(networks, side, side, images, True, budget, 8, tile)
    assert need.vae_tile is None  # no tiling needed: the result equals diffusers' untiled pipeline
    print(f"{family} {side}px x{images} on {total / GIB:.0f} GiB: weights {weights / GIB:.1f} GiB, "
          f"needs {need.bytes / GIB:.2f} of {budget / GIB:.1f} GiB")  # fmt: skip


@pytest.mark.parametrize(("family", "side", "images"), [("sd15", 2048, 4), ("sdxl", 2048, 4)])
def test_real_checkpoints_larger_requests_are_refused_naming_what_fits(family, side, images):
    networks, weights, tile = _real_architecture(family)
    budget = default_budget(24 * GIB, weights + SERVER_OVERHEAD)
    with pytest.raises(InvalidInputError) as info:
        check_request(networks, side, side, images, True, budget, 8, tile)
    fits = largest_fitting(networks, side, side, images, True, budget, 8, tile)
    assert fits is not None and fits[0] < side
    assert f"at most {fits[0]}x{fits[1]} fits with num_images {images}" in info.value.reason
    print(info.value.reason)


def test_eden_1536_with_four_samples_fits_a_24gib_host_with_the_vae_in_tiles():
    """Eden's largest resolution with its most samples: the untiled VAE would not fit, diffusers' tiles
    (512 px for SD 1.5's VAE) do."""
    networks, weights, tile = _real_architecture("sd15")
    budget = default_budget(24 * GIB, weights + SERVER_OVERHEAD)
    assert request_bytes(networks, 1536, 1536, 4, True) > budget
    need = check_request(networks, 1536, 1536, 4, True, budget, 8, tile)
    assert need.vae_tile == 512 and need.bytes <= budget
    print(f"sd15 1536px x4: {need.bytes / GIB:.2f} of {budget / GIB:.1f} GiB with {tile} px VAE tiles")
