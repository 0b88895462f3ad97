"""Test images, masks and codecs shared by the tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def make_image(width: int = 160, height: int = 96, seed: int = 0) -> np.ndarray:
    """A structured image (gradients plus noise), so VAE round trips and resizes are not trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def irregular_mask(width: int = 160, height: int = 96) -> np.ndarray:
    """A non-convex polygon plus a separate ellipse: 0 or 255."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(
        [
            (0.2 * width, 0.15 * height),
            (0.55 * width, 0.3 * height),
            (0.45 * width, 0.85 * height),
            (0.3 * width, 0.5 * height),
            (0.1 * width, 0.7 * height),
        ],
        fill=255,
    )
    draw.ellipse([0.65 * width, 0.2 * height, 0.9 * width, 0.6 * height], fill=255)
    return np.asarray(mask)


def diffusers_inpaint(
    pipe,
    scheduler_config: dict,
    image: np.ndarray,
    mask: np.ndarray,
    prompt: str,
    scheduler: str,
    *,
    steps: int,
    strength: float,
    guidance: float,
    seed: int,
    **kwargs,
) -> np.ndarray:
    """The reference: a diffusers inpainting pipeline with a scheduler swapped in from the checkpoint's
    saved config (as the server does), one seeded generator, at the image's size unless told otherwise."""
    import torch

    from triton_inpaint.pipelines.schedulers import build_scheduler

    pipe.scheduler = build_scheduler(scheduler, scheduler_config)
    kwargs.setdefault("width", image.shape[1])
    kwargs.setdefault("height", image.shape[0])
    result = pipe(
        prompt=prompt,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        num_inference_steps=steps,
        strength=strength,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ).images[0]
    return np.asarray(result)


def assert_served_parity(
    label: str, served: np.ndarray, want: np.ndarray, mask: np.ndarray, image: np.ndarray, tolerance: int = 3
) -> None:
    """Inside the (binary) mask within ``tolerance``/255 of the reference; outside, the input exactly."""
    inside = mask == 255
    diff = np.abs(served.astype(int) - want.astype(int))[inside]
    print(f"{label}: inside the mask max {diff.max()}/255, mean {diff.mean():.4f}/255")
    assert diff.max() <= tolerance
    assert np.array_equal(served[~inside], image[~inside]), "pixels outside the mask must be the input's"
