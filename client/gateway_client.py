"""The same calls as :class:`InpaintClient`, over the gateway's HTTP task API instead of Triton's."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from triton_inpaint.client.inpaint_client import (
    InpaintError,
    InpaintResult,
    MaskResult,
    ServerUnreachableError,
)


class GatewayClient:
    """Send tasks to a ``triton-inpaint gateway`` at ``url`` (``http://HOST:PORT``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.api_key = api_key
        self.timeout = timeout

    def close(self) -> None:
        pass

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.url}/v1", data=json.dumps(tasks).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read())
            except ValueError:
                body = {"errors": [{"message": f"HTTP {error.code}"}]}
            messages = (
                "; ".join(item.get("message", "") for item in body.get("errors", [])) or f"HTTP {error.code}"
            )
            if error.code == 503:
                raise ServerUnreachableError(messages) from None
            raise InpaintError(messages) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerUnreachableError(f"gateway at {self.url}: {exc}") from None
        if body.get("errors"):
            raise InpaintError("; ".join(item["message"] for item in body["errors"]))
        return body["data"]

    @staticmethod
    def _task(task_type: str, **fields: Any) -> dict[str, Any]:
        present = {name: value for name, value in fields.items() if value is not None}
        return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **present}

    def upload(self, image: bytes) -> str:
        """Store an image on the gateway; its UUID stands for it in later tasks."""
        (item,) = self._post([self._task("imageUpload", image=_b64(image))])
        return item["imageUUID"]

    def inpaint(
        self,
        model: str,
        image: bytes,
        mask: bytes | None,
        prompt: str,
        negative_prompt: str | None = None,
        steps: int | None = None,
        strength: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        mask_invert: bool | None = None,
        mask_expand: int | None = None,
        mask_blur: int | None = None,
        mask_margin: int | None = None,
        num_images: int | None = None,
        output_format: str | None = None,
        output_quality: int | None = None,
        mask_model: str | None = None,
        mask_prompt: str | None = None,
    ) -> InpaintResult:
        """As :meth:`InpaintClient.inpaint`: one ``imageInference`` task, images returned as base64."""
        task = self._task(
            "imageInference",
            model=model,
            seedImage=_b64(image),
            maskImage=None if mask is None else _b64(mask),
            maskModel=mask_model,
            maskPrompt=mask_prompt,
            positivePrompt=prompt,
            negativePrompt=negative_prompt,
            steps=steps,
            strength=strength,
            CFGScale=guidance_scale,
            seed=seed,
            scheduler=scheduler,
            width=width,
            height=height,
            maskInvert=mask_invert,
            maskExpand=mask_expand,
            maskBlur=mask_blur,
            maskMargin=mask_margin,
            numberResults=num_images,
            outputType="base64Data",
            outputFormat=output_format,
            outputQuality=output_quality,
        )
        items = self._post([task])
        mask_used = (
            base64.b64decode(items[0]["maskImageBase64Data"]) if "maskImageBase64Data" in items[0] else b""
        )
        return InpaintResult(
            images=[base64.b64decode(item["imageBase64Data"]) for item in items],
            seeds=[int(item["seed"]) for item in items],
            mask=mask_used,
        )

    def mask(
        self,
        image: bytes,
        model: str | None = None,
        prompt: str | None = None,
        confidence: float | None = None,
        max_detections: int | None = None,
        padding: int | None = None,
        blur: int | None = None,
        invert: bool | None = None,
    ) -> MaskResult:
        """As :meth:`InpaintClient.mask`: one ``imageMasking`` task."""
        task = self._task(
            "imageMasking",
            inputImage=_b64(image),
            model=model,
            maskPrompt=prompt,
            confidence=confidence,
            maxDetections=max_detections,
            maskPadding=padding,
            maskBlur=blur,
            invert=invert,
            outputType="base64Data",
        )
        (item,) = self._post([task])
        return MaskResult(mask=base64.b64decode(item["maskImageBase64Data"]), detections=item["detections"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
