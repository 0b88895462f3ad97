"""The hosted API's REST + WebSocket Python SDK (PyPI ``runware-sdk``) pointed at the gateway with only
its URLs and key changed. Runs in its own virtual environment (the package installs a ``runware``
module of its own, which the WebSocket-only SDK in the test environment also does), so
tests/test_runware_sdk_rest.py runs this file with that environment's interpreter: inputs as JSON in
argv[1], a JSON report on stdout, each step recording what the SDK returned or raised."""

from __future__ import annotations

import asyncio
import json
import sys

from runware import RunOptions, Runware, RunwareError

INPUT = json.loads(open(sys.argv[1]).read())  # noqa: SIM115 - a one-shot script
REPORT: dict[str, dict] = {}


async def attempt(name: str, call) -> None:
    try:
        REPORT[name] = {"ok": await call}
    except RunwareError as exc:
        REPORT[name] = {"error": {"code": exc.code, "parameter": exc.parameter, "message": str(exc)}}


def inference(**fields: object) -> dict:
    task = {
        "taskType": "imageInference", "model": INPUT["model"], "positivePrompt": INPUT["prompt"], "steps": 3,
        "width": INPUT["width"], "height": INPUT["height"], "seedImage": INPUT["image_b64"],
        "maskImage": INPUT["mask_b64"],
    }  # fmt: skip
    return task | fields


async def workflow(transport: str) -> None:
    urls = {"http_base_url": INPUT["http_url"], "ws_base_url": INPUT["ws_url"]}
    async with Runware(api_key=INPUT["key"], transport=transport, **urls) as client:
        prefix = f"{transport}_"
        await attempt(prefix + "upload", client.image_upload({"image": INPUT["image_b64"]}))
        uploaded = (REPORT[prefix + "upload"].get("ok") or [{}])[0].get("imageUUID")
        # The SDK's default delivery is async (REST: acknowledged, then getResponse polled).
        await attempt(
            prefix + "inpaint_two", client.run(inference(seedImage=uploaded, seed=7, numberResults=2))
        )
        first = (REPORT[prefix + "inpaint_two"].get("ok") or [{}])[0].get("imageUUID")
        await attempt(
            prefix + "next_edit", client.run(inference(seedImage=first, seed=9, deliveryMethod="sync"))
        )
        await attempt(prefix + "data_uri", client.run(inference(maskImage=INPUT["mask_data_uri"], seed=8)))
        await attempt(
            prefix + "masking",
            client.run({"taskType": "imageMasking", "model": "person", "inputImage": INPUT["image_b64"]}),
        )
        await attempt(
            prefix + "background",
            client.run(
                {"taskType": "removeBackground", "inputImage": INPUT["image_b64"], "outputFormat": "PNG"}
            ),
        )
        await attempt(prefix + "out_of_range", client.run(inference(steps=500)))
        await progress(client, prefix)

    async def wrong_key() -> list:
        # Over WebSocket the SDK authenticates when it connects; over REST, with each request.
        async with Runware(api_key="not-a-key", transport=transport, max_retries=0, **urls) as wrong:
            return await wrong.run(inference())

    await attempt(prefix + "wrong_key", wrong_key())


async def progress(client: Runware, prefix: str) -> None:
    """The SDK's own on_progress, fed by the gateway's progress items: over the WebSocket as frames of
    a sync task, over REST from the getResponse polls of an async task (the SDK's default delivery; a
    task long enough for the polls to find it running)."""
    seen: list[dict] = []
    options = RunOptions(on_progress=seen.append)
    if prefix == "websocket_":
        task = inference(includePreviews=True, seed=3, deliveryMethod="sync")
    else:
        # 100 steps at 512 px: seconds on the tiny model, so that polls a second apart find it running
        # on any machine (60 steps at 256 px ended before the first poll on a fast one)
        task = inference(includeProgress=True, seed=3, steps=100, width=512, height=512)
        task["seedImage"], task["maskImage"] = INPUT["image256_b64"], INPUT["mask256_b64"]
    await attempt(prefix + "progress", client.run(task, options))
    REPORT[prefix + "progress"]["seen"] = [
        {key: value for key, value in item.items() if key != "previewImages"}
        | {"previews": len(item.get("previewImages", []))}
        for item in seen
    ]


async def restart() -> None:
    """One async inference over REST while the test restarts the gateway: the SDK polls getResponse
    through the restart (its retries cover the seconds the gateway is down)."""
    urls = {"http_base_url": INPUT["http_url"], "ws_base_url": INPUT["ws_url"]}
    async with Runware(api_key=INPUT["key"], transport="rest", **urls) as client:
        # 100 steps at 256 px: seconds on the tiny model, so the restart lands while it runs.
        await attempt("restart", client.run(inference(steps=100, seed=5, width=256, height=256)))


async def main() -> None:
    if sys.argv[2:] == ["restart"]:
        await restart()
        return
    for transport in ("rest", "websocket"):
        await workflow(transport)


asyncio.run(main())
sys.stdout.write(json.dumps(REPORT))
