"""The memory estimate against what onnxruntime really uses, and the refusal it leads to."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from triton_inpaint.errors import InvalidInputError
from triton_inpaint.memory import (
    FIXED_BYTES,
    call_bytes,
    check_request,
    largest_fitting,
    parse_size,
    request_bytes,
)
from triton_inpaint.pipeline_spec import PipelineSpec

# One call of one exported network in a fresh interpreter; prints the growth of its peak RSS. VmHWM,
# not ru_maxrss: the latter keeps the forking parent's (pytest's) peak across exec.
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
        ("unet", 512, 2),
        ("unet", 768, 2),
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
    estimated = call_bytes(spec.networks[role], size, size, batch)
    measured_mib, estimated_mib = measured / 2**20, estimated / 2**20
    print(
        f"{role} {size}x{size} batch {batch}: measured {measured_mib:.0f} MiB, estimated {estimated_mib:.0f}"
    )
    assert measured <= estimated <= 3.5 * measured


def test_the_estimate_grows_with_the_square_of_the_pixels_and_with_the_images(tiny_spec):
    spec, _ = tiny_spec
    small = request_bytes(spec.networks, 1024, 1024, 1, True) - FIXED_BYTES
    assert 15 < (request_bytes(spec.networks, 2048, 2048, 1, True) - FIXED_BYTES) / small < 17
    assert request_bytes(spec.networks, 1024, 1024, 4, True) > 3 * request_bytes(
        spec.networks, 1024, 1024, 1, True
    )


@pytest.mark.parametrize(("width", "height", "images"), [(2048, 2048, 4), (1536, 1024, 4), (768, 2048, 1)])
def test_the_largest_fitting_size_fits_and_the_next_one_does_not(tiny_spec, width, height, images):
    spec, _ = tiny_spec
    budget = 2 * 2**30
    fits = largest_fitting(spec.networks, width, height, images, True, budget, 8)
    assert fits is not None and fits[0] <= width and fits[1] <= height
    assert request_bytes(spec.networks, *fits, images, True) <= budget
    bigger = (fits[0] + 8, fits[1] + 8)
    assert request_bytes(spec.networks, *bigger, images, True) > budget
    assert abs(fits[0] / fits[1] - width / height) < 0.05  # the aspect is kept


def test_a_request_over_the_budget_is_refused_naming_what_fits(tiny_spec):
    spec, _ = tiny_spec
    check_request(spec.networks, 512, 512, 1, True, 2 * 2**30, 8)  # fits: no error
    check_request(spec.networks, 2048, 2048, 4, True, None, 8)  # no budget: unchecked
    with pytest.raises(InvalidInputError) as info:
        check_request(spec.networks, 2048, 2048, 4, True, 2 * 2**30, 8)
    error = info.value
    assert error.field == "width"
    assert "2048x2048 (width x height) with num_images 4 needs about" in error.reason
    assert "more than the 2.0 GiB one request may use" in error.reason
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

    from triton_inpaint import contract
    from triton_inpaint.benchmark import process_pss
    from triton_inpaint.supervisor import stubs_of

    light = {contract.PREPROCESS_MODEL, contract.POSTPROCESS_MODEL, contract.MASKING_MODEL}
    with_torch = {}
    for pid, stub in stubs_of(triton_server.pid).items():
        with_torch[stub.model] = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
        print(f"{stub.model}: torch {with_torch[stub.model]}, PSS {process_pss(pid) / 2**20:.0f} MiB")
    assert light <= set(with_torch), f"model processes: {sorted(with_torch)}"
    assert not [model for model in light if with_torch[model]], with_torch
    assert with_torch[contract.denoise_name("tiny")]
