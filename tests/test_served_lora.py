"""LoRA adapters served end to end: Triton's result with ``lora`` equals diffusers' pipeline with
``load_lora_weights`` + ``set_adapters`` at the same weights (SD 1.5 base with two adapters, SDXL with
one on both text encoders); unknown adapters and bad weights are refused naming the field; requests
with different adapters batched together equal each alone."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from tests.conftest import BASE_MODEL, LORA_ADAPTERS
from tests.gateway_process import GatewayProcess
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.client import GatewayClient, InpaintClient, InpaintError

pytestmark = pytest.mark.server
PROMPT = "a quiet harbour at dawn"
REQUEST = {"steps": 8, "guidance_scale": 6.0, "seed": 5, "scheduler": "DDIM", "strength": 1.0}
INK, GLOW = LORA_ADAPTERS[BASE_MODEL]
XL_INK = LORA_ADAPTERS["tinyxl"][0]


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    process = GatewayProcess(
        triton_server.grpc_url, tmp_path_factory.mktemp("lora-gateway"), "--rate", "100000"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _reference(pipeline_class, checkpoint, lora_files, adapters: dict[str, float], **options):
    """A fresh diffusers pipeline (the session's shared ones stay without adapters) with each adapter
    loaded and weighted as diffusers users do."""
    pipe = pipeline_class.from_pretrained(checkpoint, **options)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for index, adapter in enumerate(adapters):
        names.append(f"a{index}")
        pipe.load_lora_weights(str(lora_files[adapter]), adapter_name=names[-1])
    pipe.set_adapters(names, list(adapters.values()))
    config = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    return pipe, config


def _run_reference(pipe, config, image, mask, **overrides):
    settings = {**REQUEST, **overrides}
    return diffusers_inpaint(
        pipe, config, image, mask, PROMPT, settings["scheduler"], steps=settings["steps"],
        strength=settings["strength"], guidance=settings["guidance_scale"], seed=settings["seed"],
    )  # fmt: skip


def test_two_adapters_on_sd15_equal_diffusers_set_adapters(client, tiny_base_checkpoint, lora_files):
    from diffusers import StableDiffusionInpaintPipeline

    weights = {INK: 0.8, GLOW: -0.6}
    image, mask = make_image(64, 64, seed=40), irregular_mask(64, 64)
    sent = png_bytes(image), png_bytes(mask)
    size = {"width": 64, "height": 64}  # the reference's size (the model's native one is 128)
    served = decode_rgb(
        client.inpaint(BASE_MODEL, *sent, PROMPT, lora=weights.items(), **size, **REQUEST).image
    )
    plain = decode_rgb(client.inpaint(BASE_MODEL, *sent, PROMPT, **size, **REQUEST).image)
    pipe, config = _reference(
        StableDiffusionInpaintPipeline, tiny_base_checkpoint, lora_files, weights, safety_checker=None
    )
    want = _run_reference(pipe, config, image, mask)
    assert_served_parity("sd15 base, ink 0.8 + glow -0.6", served, want, mask, image)
    # The adapters do something: without them the masked region is another image.
    inside = mask == 255
    changed = np.abs(served.astype(int) - plain.astype(int))[inside].max()
    print(f"sd15 base: the adapters move the masked region by up to {changed}/255")
    assert changed > 20


def test_an_adapter_on_both_sdxl_text_encoders_equals_diffusers(client, sdxl_checkpoints, lora_files):
    from diffusers import StableDiffusionXLInpaintPipeline

    weights = {XL_INK: 1.3}
    image, mask = make_image(96, 64, seed=41), irregular_mask(96, 64)
    served = decode_rgb(
        client.inpaint(
            "tinyxl", png_bytes(image), png_bytes(mask), PROMPT, lora=[(XL_INK, 1.3)], width=96, height=64,
            **{**REQUEST, "guidance_scale": 5.0},
        ).image
    )  # fmt: skip
    pipe, config = _reference(
        StableDiffusionXLInpaintPipeline, sdxl_checkpoints["sdxl-inpaint"], lora_files, weights,
        add_watermarker=False,
    )  # fmt: skip
    want = _run_reference(pipe, config, image, mask, guidance_scale=5.0)
    assert_served_parity("sdxl inpaint, xl-ink 1.3", served, want, mask, image)


def test_unknown_adapters_are_refused_with_the_served_ones_listed(client):
    image, mask = png_bytes(make_image(64, 64)), png_bytes(irregular_mask(64, 64))
    with pytest.raises(InpaintError) as refused:
        client.inpaint(BASE_MODEL, image, mask, PROMPT, lora=[("local:nope@1", 1.0)], steps=2)
    message = str(refused.value)
    assert "lora[0].model" in message and "'local:nope@1'" in message
    assert INK in message and GLOW in message
    with pytest.raises(InpaintError, match=r"lora\[0\]\.model: .*it serves: none"):
        client.inpaint("tiny", image, mask, PROMPT, lora=[(INK, 1.0)], steps=2)


@pytest.mark.parametrize(
    ("lora", "field"),
    [
        (f"{INK}=4.5", r"lora\[0\]\.weight: must be a number in \[-4.0, 4.0\], got 4.5"),
        (f"{INK}=abc", r"lora\[0\]\.weight: must be a number"),
        (f"{INK}=1,{INK}=0.5", r"lora\[1\]\.model: 'local:ink@1' is named twice"),
    ],
)
def test_bad_weights_and_repeats_are_refused_by_the_server(client, lora, field):
    """Sent as the raw text form (as perf_analyzer or another client would), checked by the server."""
    image, mask = png_bytes(make_image(64, 64)), png_bytes(irregular_mask(64, 64))
    with pytest.raises(InpaintError, match=field):
        client.inpaint(BASE_MODEL, image, mask, PROMPT, lora=lora, steps=2)


def test_requests_with_different_adapters_batched_together_equal_each_alone(client):
    """One denoiser call per step carries every request's rows, each with its own adapter weights."""
    image, mask = png_bytes(make_image(64, 64, seed=42)), png_bytes(irregular_mask(64, 64))
    mixes = [None, f"{INK}=1.0", f"{GLOW}=2.0,{INK}=-0.5", f"{GLOW}=0.7"]

    def run(lora):
        request = {**REQUEST, "steps": 12, "scheduler": "Euler a"}
        return decode_rgb(client.inpaint(BASE_MODEL, image, mask, PROMPT, lora=lora, **request).image)

    alone = [run(lora) for lora in mixes]
    together: list[np.ndarray | None] = [None] * len(mixes)

    def worker(index: int) -> None:
        together[index] = run(mixes[index])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(mixes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for lora, one, batched in zip(mixes, alone, together, strict=True):
        assert np.array_equal(one, batched), f"lora={lora}: batched result differs from alone"
    assert len({one.tobytes() for one in alone}) == len(mixes)  # each mix is its own image


def test_models_list_their_adapters(client):
    models = {info.name: info for info in client.list_models()}
    assert models[BASE_MODEL].adapters == LORA_ADAPTERS[BASE_MODEL]
    assert models["tinyxl"].adapters == LORA_ADAPTERS["tinyxl"]
    assert models["tiny"].adapters == ()


def test_the_gateway_takes_the_hosted_apis_lora_list(client, gateway):
    """REST with the client's lora pairs as the hosted API's [{model, weight}] list: the same image as
    over Triton; GET /v1/models lists each model's adapters and the weight range."""
    image, mask = png_bytes(make_image(64, 64, seed=43)), png_bytes(irregular_mask(64, 64))
    request = {"steps": 3, "seed": 9, "lora": [(GLOW, 1.25)]}
    over_rest = GatewayClient(gateway.url).inpaint(BASE_MODEL, image, mask, PROMPT, **request)
    direct = client.inpaint(BASE_MODEL, image, mask, PROMPT, **request)
    assert np.array_equal(decode_rgb(over_rest.images[0]), decode_rgb(direct.image))
    status, catalog = gateway.get_json("/v1/models")
    assert status == 200
    models = {model["name"]: model for model in catalog["models"]}
    assert models[BASE_MODEL]["lora"] == [INK, GLOW] and models["tiny"]["lora"] == []
    (control,) = [c for c in catalog["controls"] if c["name"] == "lora"]
    assert control["type"] == "lora" and control["weight"]["range"] == "[-4.0, 4.0]"


@pytest.mark.parametrize(
    ("lora", "parameter", "words"),
    [
        ([{"model": INK, "weight": 4.5}], "lora[0].weight", "must be in [-4.0, 4.0], got 4.5"),
        (
            [{"model": INK}, {"model": "local:nope@1"}],
            "lora[1].model",
            "it serves: local:ink@1, local:glow@1",
        ),
        ([{"model": INK, "scale": 1}], "lora[0].scale", "is not a field of this task"),
        ([{"model": f"local:x{i}@1"} for i in range(9)], "lora", "at most 8 items"),
        ([{"model": INK}, {"model": INK}], "lora[1].model", "'local:ink@1' is named twice"),
    ],
)
def test_lora_refusals_name_the_item(gateway, lora, parameter, words):
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": BASE_MODEL,
        "positivePrompt": PROMPT,
        "seedImage": base64.b64encode(png_bytes(make_image(64, 64))).decode(),
        "maskImage": base64.b64encode(png_bytes(irregular_mask(64, 64))).decode(), "steps": 2, "lora": lora,
    }  # fmt: skip
    status, body = gateway.post("/v1", [task])
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == parameter and words in error["message"], error


def test_the_cli_applies_adapters(triton_server, tmp_path, client):
    image, mask = make_image(64, 64, seed=44), irregular_mask(64, 64)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    out = tmp_path / "out.png"
    command = [
        "inpaint", "--url", triton_server.grpc_url, "--model", BASE_MODEL,
        "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", PROMPT,
        "--lora", f"{INK}=0.5,{GLOW}", "--steps", "2", "--seed", "3", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", *command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    direct = client.inpaint(
        BASE_MODEL, png_bytes(image), png_bytes(mask), PROMPT, lora=[(INK, 0.5), (GLOW, 1.0)], steps=2, seed=3
    )
    assert np.array_equal(decode_rgb(out.read_bytes()), decode_rgb(direct.image))
