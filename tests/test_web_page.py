"""The gateway's web page in a real browser: Debian's Chromium, driven by Playwright, against a real
gateway and Triton. Paint a mask with the mouse, run, download; masks from a detector; refusals; a
Triton restart. The tests write their screenshots under build/screenshots/; to refresh the docs' own
images, point ``TRITON_INPAINT_SCREENSHOTS`` at docs/images (docs/web-page.md says how)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.conftest import BASE_MODEL, BUILTIN_REPOSITORY, LORA_ADAPTERS, MODEL, MODEL_IDS
from tests.gateway_process import GatewayProcess
from tests.helpers import png_bytes
from tests.test_detector_masks import ASTRONAUT_FACE, iou
from triton_inpaint.tools.demo import sample_bytes

pytestmark = pytest.mark.server
KEY = "page-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[1]
# A test run leaves tracked files alone: screenshots land in build/ unless a person asks for the docs'.
SCREENSHOTS = Path(os.environ.get("TRITON_INPAINT_SCREENSHOTS", REPO_ROOT / "build" / "screenshots"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SAMPLE = sample_bytes("sample.png")
# A stroke across the sample's sky and roof, in fractions of the image (start, end).
STROKE = ((0.25, 0.30), (0.65, 0.42))


def pixels(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: the README's test command installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("page-gateway")
    keys = data / "keys.txt"
    keys.write_text(f"{KEY}\n")
    process = GatewayProcess(
        triton_server.grpc_url, data / "store", "--keys", str(keys), "--rate", "100000"
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def open_page(page, gateway, key: str | None = KEY) -> None:
    page.goto(gateway.url + "/")
    if key is not None:
        page.fill("#api-key", key)
        page.press("#api-key", "Enter")
        page.locator("#api-key").dispatch_event("change")
    page.wait_for_selector("#f-positivePrompt", timeout=30_000)
    page.select_option("#f-model", MODEL_IDS[MODEL])


def paint(page, stroke=STROKE) -> None:
    """Drag the mouse across the mask canvas, from and to fractions of the image."""
    box = page.locator("#mask-layer").bounding_box()
    (x0, y0), (x1, y1) = stroke
    page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=12)
    page.mouse.up()


def download(page, selector: str) -> bytes:
    with page.expect_download() as info:
        page.click(selector)
    return Path(info.value.path()).read_bytes()


def fill_settings(page, seed: int, steps: int = 3, prompt: str = "a red door") -> None:
    page.fill("#f-positivePrompt", prompt)
    page.uncheck("#f-seed-random")
    page.fill("#f-seed", str(seed))
    page.fill("#f-steps", str(steps))


def run_and_wait(page, results: int = 1) -> None:
    before = page.locator("#history li .history-item").count()
    page.click("#run")
    page.wait_for_function(
        "n => document.querySelectorAll('#history .history-item').length > n", arg=before, timeout=120_000
    )
    assert page.locator(".result img").count() == results
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].every(i => i.complete)")


def api_inference(gateway, image: bytes, mask: bytes, seed: int, steps: int, prompt: str, **fields) -> bytes:
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL_IDS[MODEL],
        "seedImage": base64.b64encode(image).decode(), "maskImage": base64.b64encode(mask).decode(),
        "positivePrompt": prompt, "seed": seed, "steps": steps, "outputType": "base64Data", **fields,
    }  # fmt: skip
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200, body
    return base64.b64decode(body["data"][0]["imageBase64Data"])


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name, full_page=True)


def test_paint_a_mask_run_and_download_equals_the_api(page, gateway):
    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    paint(page)
    fill_settings(page, seed=4242)
    run_and_wait(page)
    assert page.inner_text(".result figcaption") == "seed 4242"
    result = download(page, ".result a[download]")
    mask = download(page, "#download-mask")
    screenshot(page, "web-page.png")

    sample, painted = pixels(SAMPLE), pixels(mask, "L")
    height, width = painted.shape
    assert (height, width) == sample.shape[:2], "the mask is sent at the image's own pixel size"
    # The stroke is white along its path and black far from it (the canvas maps to image pixels).
    (x0, y0), (x1, y1) = STROKE
    for t in (0.0, 0.5, 1.0):
        x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        assert painted[int(y * height), int(x * width)] == 255
    assert painted[:, : int(0.1 * width)].max() == 0 and painted[int(0.8 * height) :].max() == 0

    served = pixels(result)
    keep = painted == 0
    print(f"mask: {int((~keep).sum())} of {keep.size} pixels painted")
    assert np.array_equal(served[keep], sample[keep]), "pixels outside the painted area changed"
    assert not np.array_equal(served[~keep], sample[~keep]), "nothing was inpainted"
    api = pixels(api_inference(gateway, SAMPLE, mask, seed=4242, steps=3, prompt="a red door"))
    assert np.array_equal(served, api), "the page's result differs from the API's for the same mask and seed"

    # Carry the result into a second edit: it becomes the input, with a fresh mask.
    page.click(".result button:has-text('Use as input')")
    page.wait_for_function("() => document.getElementById('undo').disabled")
    paint(page, ((0.7, 0.7), (0.9, 0.8)))
    fill_settings(page, seed=7)
    run_and_wait(page)
    assert page.locator("#history .history-item").count() == 2
    second = pixels(download(page, ".result a[download]"))
    second_mask = pixels(download(page, "#download-mask"), "L")
    assert np.array_equal(second[second_mask == 0], served[second_mask == 0])


# Records what the progress area shows at every change while a task runs.
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  const bar = document.getElementById("progress-bar"), img = document.getElementById("progress-preview");
  new MutationObserver(() => window.progressSeen.push({
    value: bar.getAttribute("value"), max: bar.getAttribute("max"),
    preview: img.hidden ? "" : (img.getAttribute("src") || ""),
    text: document.getElementById("progress-text").textContent,
  })).observe(document.getElementById("progress"), {attributes: true, subtree: true, childList: true});
}"""


def test_a_running_task_fills_the_progress_bar_and_shows_previews(page, gateway):
    """The page asks a model served with progress for its progress and previews (server-sent events):
    the bar counts the steps, a thumbnail shows the result so far, and the result is the API's; here
    with a soft brush and soft inpainting ticked, which the API's softInpainting equals."""
    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    page.check("#brush-soft")
    paint(page)
    fill_settings(page, seed=77, steps=8)
    page.check("#f-softInpainting")
    page.evaluate(WATCH_PROGRESS)
    run_and_wait(page)
    seen = page.evaluate("window.progressSeen")
    # Steps that arrive in one network read are drawn once: the bar shows some of them, in order,
    # up to the last step before the result.
    steps = [int(entry["value"]) for entry in seen if entry["value"] is not None]
    total = int(next(entry["max"] for entry in seen if entry["value"] is not None))
    assert steps and steps == sorted(steps) and steps[0] >= 1 and steps[-1] == total - 1, seen
    previews = [entry["preview"] for entry in seen if entry["preview"]]
    assert previews and all(uri.startswith("data:image/jpeg;base64,") for uri in previews)
    assert any(f"step {total - 1} of {total}" in entry["text"] for entry in seen)
    assert page.locator("#progress").is_hidden() and page.locator("#progress-preview").is_hidden()
    mask = download(page, "#download-mask")
    assert len(np.unique(pixels(mask, "L"))) > 10, "the soft brush paints grey levels"
    served = pixels(download(page, ".result a[download]"))
    api = pixels(api_inference(gateway, SAMPLE, mask, 77, 8, "a red door", softInpainting=True))
    assert np.array_equal(served, api), "the streamed result differs from the API's"
    plain = pixels(api_inference(gateway, SAMPLE, mask, 77, 8, "a red door"))
    assert not np.array_equal(served, plain), "soft inpainting was not sent"


def test_face_detector_mask_then_edit_with_the_brush(page, gateway, tmp_path):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(png_bytes(skimage.data.astronaut()))
    open_page(page, gateway)
    page.set_input_files("#open-file", str(photo))
    page.wait_for_selector("#stage.has-image")
    page.select_option("#mask-detector", "face")
    page.click("#make-mask")
    page.wait_for_function("() => /region/.test(document.getElementById('mask-status').textContent)")
    made = pixels(download(page, "#download-mask"), "L")
    ys, xs = np.nonzero(made > 127)
    box = (xs.min(), ys.min(), xs.max(), ys.max())
    print(f"page's face mask box {box}, IoU with the face {iou(box, ASTRONAUT_FACE):.3f}")
    assert iou(box, ASTRONAUT_FACE) >= 0.6

    task = {"taskType": "imageMasking", "taskUUID": str(uuid.uuid4()), "model": "face",
            "inputImage": base64.b64encode(photo.read_bytes()).decode(),
            "outputType": "base64Data"}  # fmt: skip
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200, body
    api_mask = pixels(base64.b64decode(body["data"][0]["maskImageBase64Data"]), "L")
    assert np.array_equal(made, api_mask), "the overlaid mask is not the detector's mask"

    paint(page, ((0.05, 0.9), (0.3, 0.95)))  # add a region by hand: the mask stays editable
    edited = pixels(download(page, "#download-mask"), "L")
    assert edited[int(0.92 * edited.shape[0]), int(0.15 * edited.shape[1])] == 255
    assert (edited >= made).all() and np.array_equal(
        edited[: edited.shape[0] // 2], made[: made.shape[0] // 2]
    )
    page.click("#undo")
    assert np.array_equal(pixels(download(page, "#download-mask"), "L"), made)
    screenshot(page, "web-page-face-mask.png")


# Values the page refuses before sending anything, each with the message the API gives for it.
REFUSED = [
    ("#f-steps", "500", {"steps": 500}),
    ("#f-steps", "2.5", {"steps": 2.5}),
    ("#f-CFGScale", "60", {"CFGScale": 60}),
    ("#f-strength", "1.5", {"strength": 1.5}),
    ("#f-seed", "-3", {"seed": -3}),
    ("#f-positivePrompt", "a", {"positivePrompt": "a"}),
    ("#f-width", "100", {"width": 100}),  # checked by the model on the server: a multiple of 8
    ("#f-outpaint-blur", "40", {"outpaint": {"blur": 40}}),
    ("#f-outpaint-left", "100", {"outpaint": {"left": 100}}),  # checked by the server: a multiple of 64
]


@pytest.mark.parametrize(("selector", "typed", "fields"), REFUSED, ids=[c[1] + str(c[2]) for c in REFUSED])
def test_a_refused_value_shows_the_apis_message(page, gateway, selector, typed, fields):
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL_IDS[MODEL],
        "seedImage": base64.b64encode(SAMPLE).decode(),
        "maskImage": base64.b64encode(sample_bytes("sample_mask.png")).decode(),
        "positivePrompt": "a red door", "steps": 2, **fields,
    }  # fmt: skip
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 400, body
    (expected,) = [error["message"] for error in body["errors"]]

    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    paint(page)
    fill_settings(page, seed=1, steps=2)
    if selector == "#f-seed":
        page.uncheck("#f-seed-random")
    if selector == "#f-width":
        page.click("summary:has-text('More')")
    if selector.startswith("#f-outpaint"):
        page.click("summary:has-text('Outpainting')")
    sent = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    page.fill(selector, typed)
    page.click("#run")
    assert page.inner_text("#form-error") == expected
    assert page.get_attribute(selector, "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == selector[1:], "the refused field gets the focus"
    assert not sent, f"the page sent a refused task: {sent}"
    if typed == "500":
        screenshot(page, "web-page-refused.png")


def test_outpaint_by_dragging_the_edges_equals_the_api(page, gateway):
    """Drag the image's right edge out and move the top one with the keyboard: the fields follow in the
    API's 64 px steps, the task needs no mask, and the result is the API's for the same outpaint."""
    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    page.click("summary:has-text('Outpainting')")
    scale = (
        page.evaluate("parseFloat(getComputedStyle(document.getElementById('mask-layer')).width)")
        / pixels(SAMPLE).shape[1]
    )
    # Opening the section scrolled the page down to it (the settings column is taller than the
    # window): bring the stage back into view before the mouse grabs its edge.
    page.locator("#stage").scroll_into_view_if_needed()
    edge = page.locator("#outpaint-frame .edge-right").bounding_box()
    x, y = edge["x"] + edge["width"] / 2, edge["y"] + edge["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 140 * scale, y, steps=8)  # 140 image pixels: the nearest step is 128
    page.mouse.up()
    assert page.input_value("#f-outpaint-right") == "128"
    page.focus("#outpaint-frame .edge-top")
    page.keyboard.press("ArrowUp")  # the top edge moves up: one step
    assert page.input_value("#f-outpaint-top") == "64"
    assert page.get_attribute("#outpaint-frame .edge-top", "aria-valuenow") == "64"
    grown = page.evaluate("parseFloat(getComputedStyle(document.getElementById('mask-layer')).marginRight)")
    assert (
        abs(
            grown
            - 128
            * page.evaluate("document.getElementById('mask-layer').clientWidth")
            / pixels(SAMPLE).shape[1]
        )
        <= 1
    ), "the stage shows the border it asks for"
    fill_settings(page, seed=99, steps=2)
    screenshot(page, "web-page-outpaint.png")
    run_and_wait(page)
    served = pixels(download(page, ".result a[download]"))
    sample = pixels(SAMPLE)
    assert served.shape == (sample.shape[0] + 64, sample.shape[1] + 128, 3)
    assert np.array_equal(served[64:, : sample.shape[1]], sample), "the image itself comes back exactly"
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL_IDS[MODEL],
        "seedImage": base64.b64encode(SAMPLE).decode(), "positivePrompt": "a red door", "seed": 99,
        "steps": 2, "outpaint": {"top": 64, "right": 128, "bottom": 0, "left": 0, "blur": 0},
        "outputType": "base64Data",
    }  # fmt: skip
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200, body
    assert np.array_equal(served, pixels(base64.b64decode(body["data"][0]["imageBase64Data"])))


def test_lora_adapters_of_the_chosen_model_equal_the_api(page, gateway):
    """The LoRA section lists the chosen model's adapters; two checked, one at its own weight, give the
    API's image for the same lora list; an out-of-range weight is refused as the API words it."""
    ink, glow = LORA_ADAPTERS[BASE_MODEL]
    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    paint(page)
    page.click("summary:has-text('LoRA adapters')")
    assert "serves no LoRA adapters" in page.inner_text("[data-section=lora]")  # the first model: tiny
    page.select_option("#f-model", MODEL_IDS[BASE_MODEL])
    assert page.locator(".lora-row label").all_inner_texts() == [ink, glow]
    page.check("#f-lora-0")
    page.fill("#f-lora-0-weight", "5")
    page.check("#f-lora-1")
    fill_settings(page, seed=11, steps=2)
    page.click("#run")
    assert page.inner_text("#form-error") == "lora[0].weight: must be in [-4.0, 4.0], got 5"
    page.fill("#f-lora-0-weight", "0.75")
    run_and_wait(page)
    served = pixels(download(page, ".result a[download]"))
    mask = download(page, "#download-mask")
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL_IDS[BASE_MODEL],
        "seedImage": base64.b64encode(SAMPLE).decode(), "maskImage": base64.b64encode(mask).decode(),
        "positivePrompt": "a red door", "seed": 11, "steps": 2, "outputType": "base64Data",
        "lora": [{"model": ink, "weight": 0.75}, {"model": glow, "weight": 1.0}],
    }  # fmt: skip
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200, body
    assert np.array_equal(served, pixels(base64.b64decode(body["data"][0]["imageBase64Data"])))


def test_the_speed_section_sends_a_preset_and_its_options_as_the_api_takes_them(page, gateway):
    """Step caching on the page: the acceleration preset alone (the unticked DeepCache box is not sent,
    or it would switch the preset off) gives the API's image for acceleration medium, which differs from
    the uncached one; a DeepCache interval typed as the field is sent inside acceleratorOptions."""
    open_page(page, gateway)
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    paint(page)
    fill_settings(page, seed=31, steps=6)
    page.click("summary:has-text('Speed (step caching)')")
    assert "deepCache" in " ".join(
        page.locator("[data-section=speed] input").evaluate_all("e => e.map(i => i.name)")
    )
    assert (
        page.locator("[name='acceleratorOptions.teaCache']").count() == 0
    )  # refused by the API: not offered
    page.select_option("#f-acceleration", "medium")
    run_and_wait(page)
    served = pixels(download(page, ".result a[download]"))
    mask = download(page, "#download-mask")
    assert np.array_equal(
        served, pixels(api_inference(gateway, SAMPLE, mask, 31, 6, "a red door", acceleration="medium"))
    )
    assert not np.array_equal(served, pixels(api_inference(gateway, SAMPLE, mask, 31, 6, "a red door")))
    page.check("#f-acceleratorOptions-deepCache")
    page.fill("#f-acceleratorOptions-deepCacheInterval", "2")
    page.select_option("#f-acceleration", "")
    run_and_wait(page)
    served = pixels(download(page, ".result a[download]"))
    options = {"deepCache": True, "deepCacheInterval": 2}
    assert np.array_equal(
        served, pixels(api_inference(gateway, SAMPLE, mask, 31, 6, "a red door", acceleratorOptions=options))
    )


def test_labels_shortcuts_and_mask_tools(page, gateway):
    open_page(page, gateway)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && !e.labels?.length && !e.getAttribute('aria-label'))
            .map(e => e.id || e.name)"""
    )
    assert unlabelled == [], f"controls without a label: {unlabelled}"
    page.click("#open-sample")
    page.wait_for_selector("#stage.has-image")
    page.focus("#stage")
    page.keyboard.press("]")
    assert page.input_value("#brush-size") == "50"
    page.keyboard.press("[")
    assert page.input_value("#brush-size") == "40"
    paint(page)
    painted = pixels(download(page, "#download-mask"), "L")
    page.focus("#stage")
    page.keyboard.press("Control+z")
    assert pixels(download(page, "#download-mask"), "L").max() == 0
    page.keyboard.press("Control+Shift+Z")
    assert np.array_equal(pixels(download(page, "#download-mask"), "L"), painted)
    page.keyboard.press("i")  # invert
    assert np.array_equal(pixels(download(page, "#download-mask"), "L"), 255 - painted)
    page.keyboard.press("e")
    assert page.is_checked("#tool-eraser")
    page.click("#clear-mask")
    page.fill("#f-positivePrompt", "a red door")
    page.click("#run")
    assert page.inner_text("#form-error").startswith("maskImage:")
    page.focus("#stage")
    page.keyboard.press("b")
    assert page.is_checked("#tool-brush")
    # Tab order follows the page: the key, the image tools, then the mask tools.
    order = [page.evaluate("document.activeElement.id")]
    page.focus("#api-key")
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order[1:] == ["open-file", "open-sample", "tool-brush", "brush-size"], order


def test_triton_down_shows_503_and_the_next_run_after_restart_succeeds(
    browser, exported_repository, tmp_path
):
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    ports = (free_port(), free_port(), free_port())
    models = [
        f"inpaint_{MODEL}",
        *(f"{MODEL}_{n}" for n in ("text_encoder", "unet", "vae_encoder", "vae_decoder")),
    ]

    def triton():
        return TritonServer([BUILTIN_REPOSITORY, repository], *ports, models=models).start(timeout=300)

    server = triton()
    gateway = GatewayProcess(server.grpc_url, tmp_path / "store", "--timeout", "20").start()
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    try:
        page.goto(gateway.url + "/")
        page.wait_for_selector("#f-positivePrompt", timeout=30_000)
        page.click("#open-sample")
        page.wait_for_selector("#stage.has-image")
        paint(page)
        fill_settings(page, seed=5, steps=2)
        run_and_wait(page)

        server.stop()
        page.click("#run")
        page.wait_for_function(
            "() => document.getElementById('run-error').textContent.length > 0", timeout=60_000
        )
        message = page.inner_text("#run-error")
        print(f"shown while Triton is down: {message[:160]}")
        assert message.startswith("The inpainting server is unavailable") and "is not reachable" in message
        page.wait_for_function(
            "() => document.getElementById('server-status').textContent.startsWith('Unavailable')",
            timeout=30_000,
        )
        screenshot(page, "web-page-unavailable.png")

        server = triton()
        page.wait_for_function(
            "() => document.getElementById('server-status').textContent.startsWith('Ready')", timeout=30_000
        )
        assert page.inner_text("#run-error") == "", "the old error is cleared when the server is back"
        run_and_wait(page)
        assert page.locator("#history .history-item").count() == 2
    finally:
        context.close()
        gateway.stop()
        server.stop()
