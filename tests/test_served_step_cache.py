"""Step caching served end to end: Triton's result with DeepCache equals ``DeepCacheSDHelper`` on
diffusers' pipeline; presets equal their explicit settings; cached and uncached requests share one
server; the gateway takes the hosted API's ``acceleration`` and ``acceleratorOptions`` (and refuses what
a model cannot honour, naming the field); the CLI's flags; ``GET /v1/models`` says which caches each
model serves."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from tests.conftest import BASE_MODEL, FLUX_MODEL, MODEL, SDXL_MODELS
from tests.gateway_process import GatewayProcess
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_deep_cache,
    diffusers_first_block_cache,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.client import GatewayClient, InpaintClient, InpaintError

pytestmark = pytest.mark.server
PROMPT = "a red apple on a wooden table"
TOLERANCE = 3  # out of 255, inside the mask: the parity bar
SETTINGS = {"steps": 12, "guidance_scale": 7.5, "seed": 1234, "width": 160, "height": 96}


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, triton_server):
    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    with InpaintClient(url, request.param) as c:
        yield c


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    process = GatewayProcess(
        triton_server.grpc_url, tmp_path_factory.mktemp("cache-gateway"), "--rate", "100000"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _helper_reference(pipe, config, image, mask, scheduler, strength, interval, branch):
    return diffusers_deep_cache(
        pipe, interval, branch,
        lambda: diffusers_inpaint(
            pipe, config, image, mask, PROMPT, scheduler, steps=SETTINGS["steps"], strength=strength,
            guidance=SETTINGS["guidance_scale"], seed=SETTINGS["seed"],
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("scheduler", "strength", "interval", "branch"), [("DDIM", 1.0, 3, 0), ("DPM++ 2M", 0.6, 2, 2)]
)
def test_served_deep_cache_equals_deep_cache_sd_helper(
    client, reference_pipeline, scheduler_config, scheduler, strength, interval, branch
):
    image, mask = make_image(160, 96), irregular_mask(160, 96)
    cache = {"deep_cache": True, "deep_cache_interval": interval, "deep_cache_branch_id": branch}
    result = client.inpaint(
        MODEL, png_bytes(image), png_bytes(mask), PROMPT, scheduler=scheduler, strength=strength, **SETTINGS,
        **cache,
    )  # fmt: skip
    served = decode_rgb(result.image)
    want = _helper_reference(
        reference_pipeline, scheduler_config, image, mask, scheduler, strength, interval, branch
    )
    assert_served_parity(
        f"{client.protocol} DeepCache {scheduler} I={interval} B={branch}",
        served,
        want,
        mask,
        image,
        TOLERANCE,
    )
    uncached = decode_rgb(
        client.inpaint(
            MODEL,
            png_bytes(image),
            png_bytes(mask),
            PROMPT,
            scheduler=scheduler,
            strength=strength,
            **SETTINGS,
        ).image
    )
    assert not np.array_equal(served, uncached)  # the cache acted


def test_served_first_block_cache_equals_diffusers(client, flux_reference):
    pipe, config = flux_reference
    image, mask = make_image(96, 64), irregular_mask(96, 64)
    settings = {"steps": 12, "seed": 3, "width": 96, "height": 64, "guidance_scale": 30.0}
    served = decode_rgb(
        client.inpaint(
            FLUX_MODEL,
            png_bytes(image),
            png_bytes(mask),
            PROMPT,
            fbcache=True,
            cache_distance=0.3,
            **settings,
        ).image
    )
    want = diffusers_first_block_cache(
        pipe, 0.3,
        lambda: diffusers_inpaint(
            pipe, config, image, mask, PROMPT, None, steps=12, strength=1.0, guidance=30.0, seed=3,
            max_sequence_length=32,
        ),
    )  # fmt: skip
    assert_served_parity(f"{client.protocol} first-block cache 0.3", served, want, mask, image, TOLERANCE)
    preset = client.inpaint(
        FLUX_MODEL, png_bytes(image), png_bytes(mask), PROMPT, acceleration="high", **settings
    )
    explicit = client.inpaint(
        FLUX_MODEL, png_bytes(image), png_bytes(mask), PROMPT, fbcache=True, cache_distance=0.2, **settings
    )
    assert preset.image == explicit.image


def test_a_preset_is_its_settings_and_every_unet_family_serves_it(client):
    image, mask = png_bytes(make_image(64, 64, seed=2)), png_bytes(irregular_mask(64, 64))
    for model in (MODEL, BASE_MODEL, *SDXL_MODELS.values()):
        small = {"steps": 6, "seed": 3, "width": 64, "height": 64}
        preset = client.inpaint(model, image, mask, PROMPT, acceleration="medium", **small)
        explicit = client.inpaint(
            model,
            image,
            mask,
            PROMPT,
            deep_cache=True,
            deep_cache_interval=3,
            deep_cache_branch_id=0,
            **small,
        )
        assert decode_rgb(preset.image).tolist() == decode_rgb(explicit.image).tolist(), model


def test_cached_and_uncached_requests_at_once_each_get_their_own_image(triton_server):
    image, mask = png_bytes(make_image(96, 64, seed=5)), png_bytes(irregular_mask(96, 64))
    requests = [
        {"deep_cache": True, "seed": 1},
        {"seed": 2},
        {"acceleration": "high", "seed": 3, "num_images": 2},
        {"deep_cache": True, "deep_cache_branch_id": 1, "deep_cache_interval": 2, "seed": 4},
    ]
    common = {"steps": 8, "width": 96, "height": 64, "scheduler": "Euler a"}
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        alone = [client.inpaint(MODEL, image, mask, PROMPT, **common, **r).images for r in requests]
    together: list = [None] * len(requests)

    def send(index: int) -> None:
        with InpaintClient(triton_server.grpc_url, "grpc") as own:
            together[index] = own.inpaint(MODEL, image, mask, PROMPT, **common, **requests[index]).images

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for want, got in zip(alone, together, strict=True):
        assert [decode_rgb(g).tolist() for g in got] == [decode_rgb(w).tolist() for w in want]


@pytest.mark.parametrize(
    ("model", "controls", "field", "words"),
    [
        (MODEL, {"fbcache": True}, "fbcache", "use deep_cache instead"),
        (MODEL, {"deep_cache": True, "deep_cache_branch_id": 7}, "deep_cache_branch_id", "branches 0, 1, 2"),
        (MODEL, {"tea_cache": True}, "tea_cache", "not served"),
        (FLUX_MODEL, {"deep_cache": True}, "deep_cache", "use fbcache instead"),
    ],
)
def test_a_field_the_model_cannot_honour_is_refused_naming_it(client, model, controls, field, words):
    image, mask = png_bytes(make_image(64, 64)), png_bytes(irregular_mask(64, 64))
    with pytest.raises(InpaintError, match=words) as raised:
        client.inpaint(model, image, mask, PROMPT, steps=2, width=64, height=64, **controls)
    assert field in str(raised.value)


def _task(**fields) -> dict:
    return {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": PROMPT,
        "seedImage": base64.b64encode(png_bytes(make_image(64, 64, seed=6))).decode(),
        "maskImage": base64.b64encode(png_bytes(irregular_mask(64, 64))).decode(), "steps": 6, "seed": 8,
        "width": 64, "height": 64, "outputType": "base64Data", "outputFormat": "PNG", **fields,
    }  # fmt: skip


def test_the_gateway_takes_the_hosted_apis_accelerator_options(triton_server, gateway):
    options = {
        "deepCache": True,
        "deepCacheInterval": 2,
        "deepCacheBranchId": 1,
        "cacheMaxConsecutiveSteps": 1,
    }
    status, body = gateway.post("/v1", [_task(acceleratorOptions=options)])
    assert status == 200, body
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        direct = client.inpaint(
            MODEL, png_bytes(make_image(64, 64, seed=6)), png_bytes(irregular_mask(64, 64)), PROMPT, steps=6,
            seed=8, width=64, height=64, deep_cache=True, deep_cache_interval=2, deep_cache_branch_id=1,
            cache_max_consecutive_steps=1,
        )  # fmt: skip
    (item,) = body["data"]
    assert np.array_equal(decode_rgb(base64.b64decode(item["imageBase64Data"])), decode_rgb(direct.image))
    # The gateway client sends the same fields, a preset too.
    over_client = GatewayClient(gateway.url).inpaint(
        MODEL, png_bytes(make_image(64, 64, seed=6)), png_bytes(irregular_mask(64, 64)), PROMPT, steps=6,
        seed=8, width=64, height=64, acceleration="low",
    )  # fmt: skip
    status, body = gateway.post("/v1", [_task(acceleration="low")])
    assert np.array_equal(
        decode_rgb(over_client.images[0]), decode_rgb(base64.b64decode(body["data"][0]["imageBase64Data"]))
    )


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"acceleratorOptions": {"fbcache": True}}, "acceleratorOptions.fbcache", "use deep_cache"),
        ({"acceleratorOptions": {"deepCacheInterval": 0}}, "acceleratorOptions.deepCacheInterval", "[1, 20]"),
        ({"acceleratorOptions": {"teaCache": True}}, "acceleratorOptions.teaCache", "fbcache"),
        ({"acceleratorOptions": {"deepCache": True, "speed": 2}}, "acceleratorOptions.speed", "not a field"),
        ({"acceleration": "ultra"}, "acceleration", "'none', 'low', 'medium' or 'high'"),
    ],
)
def test_the_gateways_refusals_name_the_task_field(gateway, fields, parameter, words):
    status, body = gateway.post("/v1", [_task(**fields)])
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == parameter and words in error["message"], error


def test_the_catalog_says_which_caches_each_model_serves(gateway):
    status, catalog = gateway.get_json("/v1/models")
    assert status == 200
    models = {model["name"]: model["acceleration"] for model in catalog["models"]}
    assert models[MODEL] == {
        "deepCache": True,
        "deepCacheBranchIds": [0, 1, 2],
        "fbcache": False,
        "teaCache": False,
    }
    names = {control["name"] for control in catalog["controls"]}
    assert {"acceleration", "acceleratorOptions.deepCache", "acceleratorOptions.cacheStopStep"} <= names


def test_the_cli_flags_cache_steps(triton_server, tmp_path):
    image, mask = make_image(64, 64, seed=9), irregular_mask(64, 64)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    out = tmp_path / "out.png"
    command = [
        "inpaint", "--url", triton_server.grpc_url, "--model", MODEL, "--image", str(tmp_path / "in.png"),
        "--mask", str(tmp_path / "mask.png"), "--prompt", PROMPT, "--steps", "6", "--seed", "3",
        "--deep-cache", "--deep-cache-interval", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", *command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        direct = client.inpaint(
            MODEL, png_bytes(image), png_bytes(mask), PROMPT, steps=6, seed=3, deep_cache=True,
            deep_cache_interval=2,
        )  # fmt: skip
    assert np.array_equal(decode_rgb(out.read_bytes()), decode_rgb(direct.image))


def _as_exported_before_step_caching(repository, name: str, target):
    """A copy of ``name``'s models as an export made before step caching wrote them: no shallow UNets,
    no cache inputs on the ensemble and the denoise model, no features out of the UNet, no caches in
    pipeline.json."""
    import json
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from triton_inpaint.api.schema import ACCELERATION_CONTROLS

    newer = {control.name for control in ACCELERATION_CONTROLS}
    for model in (
        f"inpaint_{name}",
        f"{name}_denoise",
        *(f"{name}_{r}" for r in ("text_encoder", "vae_encoder", "vae_decoder", "unet")),
    ):
        shutil.copytree(repository / model, target / model)
        path = target / model / "config.pbtxt"
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        kept = [tensor for tensor in config.input if tensor.name not in newer]
        del config.input[:]
        config.input.extend(kept)
        outputs = [tensor for tensor in config.output if not tensor.name.startswith("deep_feature_")]
        del config.output[:]
        config.output.extend(outputs)
        for step in config.ensemble_scheduling.step:
            for key in [key for key in step.input_map if key in newer]:
                del step.input_map[key]
        for key in ("deep_cache_branches", "first_block_cache"):
            config.parameters.pop(key, None)
        path.write_text(text_format.MessageToString(config))
    spec = target / f"{name}_denoise" / "1" / "pipeline.json"
    data = json.loads(spec.read_text())
    del data["deep_cache_features"], data["first_block_cache"]
    spec.write_text(json.dumps(data))
    return target


def test_a_model_exported_before_step_caching_refuses_its_fields_and_serves_the_rest(
    exported_repository, triton_server, tmp_path
):
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    old = _as_exported_before_step_caching(repository, MODEL, tmp_path / "old")
    server = TritonServer([BUILTIN_REPOSITORY, old], free_port(), free_port(), free_port())
    server.start(timeout=300)
    image, mask = png_bytes(make_image(64, 64, seed=7)), png_bytes(irregular_mask(64, 64))
    try:
        with InpaintClient(server.grpc_url, "grpc") as client:
            (info,) = client.list_models()
            assert info.deep_cache_branches == () and not info.first_block_cache
            served = client.inpaint(MODEL, image, mask, PROMPT, steps=3, seed=5, width=64, height=64)
            for field in ("deep_cache", "acceleration"):
                with pytest.raises(InpaintError, match="export it again") as raised:
                    client.inpaint(
                        MODEL,
                        image,
                        mask,
                        PROMPT,
                        steps=3,
                        **{field: "low" if field == "acceleration" else True},
                    )
                assert raised.value.field == field
    finally:
        server.stop()
    with InpaintClient(triton_server.grpc_url, "grpc") as client:  # the same request, today's export
        current = client.inpaint(MODEL, image, mask, PROMPT, steps=3, seed=5, width=64, height=64)
    assert served.image == current.image
