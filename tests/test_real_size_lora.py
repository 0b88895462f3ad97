"""A LoRA adapter on the real SD 1.5 architecture (marker ``real_size``): the 860 M-parameter UNet and
CLIP ViT-L/14 with random weights, a rank-16 adapter on every attention projection of both, exported
with ``export onnx --lora`` as a user would (the banked UNet's weights in external data), served under
the default memory budget, and one 256x256 request with the adapter at 0.8: inside the mask within the
parity tolerance of diffusers' ``load_lora_weights`` + ``set_adapters`` on the same files, outside
exact. The figures (export time and peak memory, latency served and in diffusers, the adapter's size)
are printed and written to ``real-size-lora.json`` in the session's temporary folder.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_served_parity, decode_rgb, png_bytes
from tests.test_real_size import PROMPT, SEED, STEPS, TOLERANCE, _run_cli
from triton_inpaint.tools.benchmark import sample_request

pytestmark = pytest.mark.real_size
NAME = "sd15lora"
ADAPTER = "local:ink@1"
WEIGHT = 0.8
RANK = 16
# The networks are the real ones; the image is smaller than test_real_size's 512 px default request,
# which keeps this lane's time down (the default size and the memory budget are tested there).
SIDE = 256


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory):
    found: dict[str, object] = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "real-size-lora.json"
    path.write_text(json.dumps(found, indent=2) + "\n")
    print(f"\nreal-size LoRA figures ({path}):\n{json.dumps(found, indent=2)}")


@pytest.fixture(scope="module")
def built(tmp_path_factory, figures) -> tuple[Path, Path, Path]:
    """(checkpoint, adapter file, repository), each made by the CLI as a user would."""
    root = tmp_path_factory.mktemp("real-size-lora")
    checkpoint, adapter, repository = root / "checkpoint", root / "ink.safetensors", root / "repository"
    _run_cli("export", "tiny", "--family", "sd15-inpaint", "--size", "full", "--out", str(checkpoint))
    seconds, _ = _run_cli(
        "export", "tiny-lora", "--checkpoint", str(checkpoint), "--out", str(adapter), "--rank", str(RANK)
    )
    figures["adapter"] = {
        "rank": RANK,
        "mib": round(adapter.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 1),
    }
    seconds, peak = _run_cli(
        "export", "onnx", "--checkpoint", str(checkpoint), "--name", NAME, "--repository", str(repository),
        "--lora", f"{ADAPTER}={adapter}",
    )  # fmt: skip
    figures["export_onnx"] = {"seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2)}
    return checkpoint, adapter, repository


@pytest.fixture(scope="module")
def reference(built, figures) -> np.ndarray:
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from triton_inpaint.pipelines.spec import PipelineSpec

    checkpoint, adapter, repository = built
    spec = PipelineSpec.load(repository / f"{NAME}_denoise" / "1")
    assert spec.adapters == (ADAPTER,) and set(spec.lora_roles) == {"text_encoder", "unet"}
    pipe = StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(adapter), adapter_name="ink")
    pipe.set_adapters(["ink"], [WEIGHT])
    image, mask = sample_request(SIDE)
    started = time.monotonic()
    result = pipe(
        prompt=PROMPT, image=Image.fromarray(image), mask_image=Image.fromarray(mask),
        num_inference_steps=STEPS, strength=spec.default_strength, guidance_scale=spec.default_guidance,
        generator=torch.Generator().manual_seed(SEED), width=SIDE, height=SIDE,
    ).images[0]  # fmt: skip
    figures["latency_s"] = {"diffusers_torch": round(time.monotonic() - started, 1)}
    del pipe
    gc.collect()
    return np.asarray(result)


def test_a_real_size_adapter_is_served_equal_to_diffusers(built, reference, figures):
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.client import InpaintClient
    from triton_inpaint.server.process import TritonServer, free_port

    _, _, repository = built
    image, mask = sample_request(SIDE)
    server = TritonServer([BUILTIN_REPOSITORY, repository], free_port(), free_port(), free_port())
    server.start(timeout=900)
    try:
        with InpaintClient(server.grpc_url) as client:
            assert client.list_models()[0].adapters == (ADAPTER,)
            sent = png_bytes(image), png_bytes(mask)
            started = time.monotonic()
            size = {"width": SIDE, "height": SIDE}
            with_adapter = client.inpaint(
                NAME, *sent, PROMPT, steps=STEPS, seed=SEED, lora=[(ADAPTER, WEIGHT)], **size
            )
            figures["latency_s"]["served_grpc_with_adapter"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            without = client.inpaint(NAME, *sent, PROMPT, steps=STEPS, seed=SEED, **size)
            figures["latency_s"]["served_grpc_weight_0"] = round(time.monotonic() - started, 1)
    finally:
        server.stop()
    served = decode_rgb(with_adapter.image)
    assert_served_parity("real-size LoRA, served", served, reference, mask, image, TOLERANCE)
    moved = np.abs(served.astype(int) - decode_rgb(without.image).astype(int))[mask == 255]
    figures["adapter_moves_inside_mask_max"] = int(moved.max())
    assert moved.max() > 10  # the adapter changes the image
