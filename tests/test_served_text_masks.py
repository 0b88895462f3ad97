"""Mask prompts through the served CLIPSeg models (tiny random weights), and the error when none is served."""

import io
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tritonclient.grpc as grpcclient
from PIL import Image

from tests.conftest import BUILTIN_REPOSITORY, MODEL
from tests.helpers import decode_rgb, png_bytes
from tests.test_text_segmentation import PHRASES, reference_probability
from triton_inpaint.api.contract import TEXT_SEGMENTATION_MODEL
from triton_inpaint.client import InpaintClient, InpaintError
from triton_inpaint.export.masking.detectors import DETECTOR_GRAPHS
from triton_inpaint.masks.detectors import regions_from_probability

pytestmark = pytest.mark.server
ASTRONAUT = skimage.data.astronaut()
CONFIDENCE = 0.99  # the random maps are speckled; only the most confident parts are kept


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_served_text_segmentation_matches_transformers(triton_server, clipseg_weights):
    image = ASTRONAUT[100:400, 0:256]
    inputs = [
        grpcclient.InferInput("image", list(image.shape), "UINT8"),
        grpcclient.InferInput("prompt", [len(PHRASES)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(np.ascontiguousarray(image))
    inputs[1].set_data_from_numpy(np.array([p.encode() for p in PHRASES], dtype=np.object_))
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        got = client.infer(TEXT_SEGMENTATION_MODEL, inputs).as_numpy("probability")
    finally:
        client.close()
    want = reference_probability(clipseg_weights, image, PHRASES)
    diff = np.abs(got - want).max()
    print(f"served text_segmentation vs transformers: max |probability diff| {diff:.1e}")
    assert got.shape == (2, 300, 256) and diff < 1e-4


def test_mask_prompt_no_detector_answers_goes_to_clipseg(triton_server, clipseg_weights):
    with InpaintClient(triton_server.grpc_url) as client:
        result = client.mask(
            png_bytes(ASTRONAUT),
            prompt=", ".join(PHRASES),
            confidence=CONFIDENCE,
            max_detections=6,
            padding=0,
            blur=0,
        )
    want, regions = regions_from_probability(
        reference_probability(clipseg_weights, ASTRONAUT, PHRASES), PHRASES, CONFIDENCE, 6
    )
    assert result.detections == [region.as_dict() for region in regions] and len(regions) == 6
    assert np.array_equal(grey(result.mask) == 255, want)


def test_clipseg_prompt_then_inpaint(triton_server):
    with InpaintClient(triton_server.grpc_url) as client:
        result = client.inpaint(
            MODEL, png_bytes(ASTRONAUT), None, "a hat", mask_prompt="a red hat", steps=2, seed=5,
            width=128, height=128,
        )  # fmt: skip
        alone = client.mask(png_bytes(ASTRONAUT), prompt="a red hat", padding=0, blur=0)
    used = grey(result.mask)
    assert np.array_equal(used, grey(alone.mask))
    output = decode_rgb(result.image)
    outside = used == 0
    assert 0 < (~outside).mean() < 1
    assert np.array_equal(output[outside], ASTRONAUT[outside])


@pytest.fixture(scope="module")
def server_without_clipseg(exported_repository, detector_repository):
    """A second Triton serving the detectors and one inpainting model, but no text-segmentation model."""
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    detectors, _ = detector_repository
    models = ["image_masking", *DETECTOR_GRAPHS, f"inpaint_{MODEL}"]
    server = TritonServer(
        [BUILTIN_REPOSITORY, repository, detectors],
        free_port(),
        free_port(),
        free_port(),
        models=models,
    )
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


def test_without_clipseg_other_prompts_say_which_words_work(server_without_clipseg):
    with InpaintClient(server_without_clipseg.grpc_url) as client:
        assert client.mask(png_bytes(ASTRONAUT), prompt="eyes").detections  # detector words still work
        with pytest.raises(InpaintError) as masking:
            client.mask(png_bytes(ASTRONAUT), prompt="hair")
        with pytest.raises(InpaintError) as inpainting:
            client.inpaint(MODEL, png_bytes(ASTRONAUT), None, "x", mask_prompt="hair", steps=1)
    for error, field in ((masking, "prompt"), (inpainting, "mask_prompt")):
        message = str(error.value)
        assert message.startswith(f"{field}: no detector answers 'hair' and no text-segmentation model")
        assert "face, faces, eye, eyes" in message and "triton-inpaint export clipseg --weights" in message


def test_mask_cli_refuses_prompts_nothing_served_answers(server_without_clipseg, tmp_path):
    image = tmp_path / "astronaut.png"
    image.write_bytes(png_bytes(ASTRONAUT))
    out = tmp_path / "m.png"
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "mask", "--url", server_without_clipseg.grpc_url,
         "--prompt", "a purple hat", "--image", str(image), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "prompt: no detector answers 'a purple hat'" in done.stderr and "eyes" in done.stderr
    assert not out.exists()
