"""How much memory one request needs, known before any work is done, and the budget it must fit.

Exported graphs compute attention as plain matrix products, so every attention layer holds its
(batch, heads, tokens, tokens) score matrix twice (scores and softmax) at once: memory grows with the
square of the pixel count. One request at 2048x2048 with 4 images asks the tiny model's UNet for more
than 100 GB, and the kernel's OOM killer answers by killing a model process. So the denoise model
estimates a request's peak from the checkpoint's architecture (saved at export by
:func:`network_shapes`), its processing size and number of images, and refuses what does not fit the
budget before any work, naming the largest size that does.

The estimate is the largest of the networks' calls (they run one after another), each the larger of its
biggest attention layer and its biggest feature map, times the copies onnxruntime keeps alive. The
copies were measured on the tiny checkpoints (peak RSS of one call in a fresh process): 2.1-2.5 score
matrices for VAE and UNet at 512-1024 px, up to 7 full-resolution feature maps in the VAE encoder; the
factors below keep a margin over those. A test re-measures them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from triton_inpaint.errors import InvalidInputError

BYTES_PER_VALUE = 4  # float32
ATTENTION_COPIES = 3.0
FEATURE_MAP_COPIES = 8.0
FIXED_BYTES = 256 * 2**20  # latents, decoded images, buffers between the models
BUDGET_ENV = "TRITON_INPAINT_MEMORY_BUDGET"
MACHINE_FRACTION = 0.5  # of the machine's (or container's) memory, shared by the requests in flight

# A network's shape for the estimate: its attention layers as (pixels per token side, heads, extra
# tokens joined to the image's) and its largest feature map as (channels, pixels per side).
NetworkShape = dict[str, Any]


def network_shapes(pipeline: Any) -> dict[str, NetworkShape]:
    """The estimate's view of a diffusers pipeline's networks, by role (``unet``, ``transformer``,
    ``vae_encoder``, ``vae_decoder``); plain lists, saved in ``pipeline.json``."""
    vae = pipeline.vae.config
    factor = 2 ** (len(vae.block_out_channels) - 1)
    vae_attention = [[factor, 1, 0]] if getattr(vae, "mid_block_add_attention", True) else []
    shapes = {
        role: {"attention": vae_attention, "feature_map": [int(vae.block_out_channels[0]), 1]}
        for role in ("vae_encoder", "vae_decoder")
    }
    transformer = getattr(pipeline, "transformer", None)
    if transformer is not None:  # FLUX: joint attention over 2x2-packed image tokens and text tokens
        config = transformer.config
        text_tokens = min(512, int(pipeline.tokenizer_2.model_max_length))
        inner = int(config.num_attention_heads) * int(config.attention_head_dim)
        shapes["transformer"] = {
            "attention": [[2 * factor, int(config.num_attention_heads), text_tokens]],
            "feature_map": [inner, 2 * factor],
        }
        return shapes
    config = pipeline.unet.config
    levels = len(config.block_out_channels)
    heads = config.num_attention_heads or config.attention_head_dim  # diffusers' legacy naming
    heads = list(heads) if isinstance(heads, list | tuple) else [heads] * levels
    attention = [
        [factor * 2**level, int(heads[level]), 0]
        for level, kind in enumerate(config.down_block_types)
        if "CrossAttn" in kind
    ]
    if config.mid_block_type and "CrossAttn" in config.mid_block_type:
        attention.append([factor * 2 ** (levels - 1), int(heads[-1]), 0])
    shapes["unet"] = {"attention": attention, "feature_map": [int(config.block_out_channels[0]), factor]}
    return shapes


def call_bytes(shape: NetworkShape, width: int, height: int, batch: int) -> int:
    """Peak bytes of one call of a network on ``batch`` items of ``width`` x ``height`` pixels."""
    scores = max(
        (heads * (math.ceil(height / scale) * math.ceil(width / scale) + extra) ** 2
         for scale, heads, extra in shape["attention"]),
        default=0,
    )  # fmt: skip
    channels, scale = shape["feature_map"]
    features = channels * math.ceil(height / scale) * math.ceil(width / scale)
    per_item = max(ATTENTION_COPIES * scores, FEATURE_MAP_COPIES * features)
    return int(batch * per_item * BYTES_PER_VALUE)


def request_bytes(
    networks: dict[str, NetworkShape], width: int, height: int, num_images: int, guided: bool
) -> int:
    """Peak bytes of one request: the VAE runs on one image at a time, the denoiser on every image
    (twice over with classifier-free guidance, whose two halves go through in one call)."""
    batches = {"vae_encoder": 1, "vae_decoder": 1, "unet": num_images * (2 if guided else 1),
               "transformer": num_images}  # fmt: skip
    return FIXED_BYTES + max(
        call_bytes(shape, width, height, batches[role]) for role, shape in networks.items() if role in batches
    )


def largest_fitting(
    networks: dict[str, NetworkShape],
    width: int,
    height: int,
    num_images: int,
    guided: bool,
    budget: int,
    multiple: int,
) -> tuple[int, int] | None:
    """The largest (width, height) of the same aspect, in multiples of ``multiple``, whose request fits
    ``budget``; None when not even the smallest does."""
    aspect = width / height

    def size(long_side: int) -> tuple[int, int]:
        if width >= height:
            return long_side, max(multiple, round(long_side / aspect / multiple) * multiple)
        return max(multiple, round(long_side * aspect / multiple) * multiple), long_side

    low, high = 1, max(width, height) // multiple  # in units of `multiple`
    best = None
    while low <= high:
        middle = (low + high) // 2
        candidate = size(middle * multiple)
        if request_bytes(networks, *candidate, num_images, guided) <= budget:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def machine_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"6GiB"``, ``"6G"``, ``"512MiB"`` or a plain number of bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 6GiB, 512MiB or a number of bytes")
    unit = (match[2] or "B").upper()[0]
    return int(float(match[1]) * 1024 ** "BKMGT".index(unit))


def request_budget(concurrent_requests: int) -> int:
    """Bytes one request may use: ``$TRITON_INPAINT_MEMORY_BUDGET`` when set, else half the machine's
    memory shared by the requests that can run at once (the denoise model's instances)."""
    configured = os.environ.get(BUDGET_ENV)
    if configured:
        return parse_size(configured)
    return int(machine_bytes() * MACHINE_FRACTION / max(1, concurrent_requests))


def gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def check_request(
    networks: dict[str, NetworkShape] | None,
    width: int,
    height: int,
    num_images: int,
    guided: bool,
    budget: int | None,
    multiple: int,
) -> None:
    """Refuse, before any work, a request whose estimated peak exceeds ``budget``, naming the largest
    size that fits (and with one image, when more were asked for). No budget, or a checkpoint exported
    before shapes were saved (no ``networks``), checks nothing."""
    if budget is None or not networks:
        return
    needed = request_bytes(networks, width, height, num_images, guided)
    if needed <= budget:
        return
    fits = largest_fitting(networks, width, height, num_images, guided, budget, multiple)
    advice = [f"at most {fits[0]}x{fits[1]} fits with num_images {num_images}"] if fits else []
    if num_images > 1:
        single = largest_fitting(networks, width, height, 1, guided, budget, multiple)
        if single is not None and request_bytes(networks, width, height, 1, guided) <= budget:
            advice.append(f"{width}x{height} fits with num_images 1")
        elif single is not None:
            advice.append(f"at most {single[0]}x{single[1]} with num_images 1")
    raise InvalidInputError(
        "width",
        f"{width}x{height} (width x height) with num_images {num_images} needs about {gib(needed)} of "
        f"memory, more than the {gib(budget)} one request may use on this server ({BUDGET_ENV}); "
        + (", or ".join(advice) if advice else "not even the smallest size fits: raise the budget"),
    )
