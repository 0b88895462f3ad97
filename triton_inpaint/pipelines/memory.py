"""How much memory a request needs, known before any work is done, and the budget requests share.

A request needs its denoiser call (every image, twice over with classifier-free guidance) and the
larger of its VAE encoder and decoder calls (one image at a time, before and after the loop). Each
network's peak is its largest activation (channels x pixels at that level, derived from the
checkpoint's config by :func:`network_shapes` and saved at export) times the copies the runtime keeps
alive, measured on the real SD 1.5 networks and on the tiny ones (``tests/test_memory.py``,
docs/hardening.md). For a graph whose attention is plain matrix products (an export with
``--no-fused-attention``, the portable graphs of the ONNX GPU runtimes) every attention layer also
holds its (batch, heads, tokens, tokens) score matrix several times over, which grows with the square
of the pixels; the CPU runtime's graphs and torch use fused attention kernels that hold none.

The budget is what the networks may use for their work at once: by default most of the memory still
free once every model's weights are loaded (host memory, or the GPU's for the GPU runtimes). A request
whose need exceeds it is refused before any work, naming the largest size that fits; one that fits
waits, in front of the model, until the requests in flight leave it room
(:class:`triton_inpaint.pipelines.batching.Admission`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.sizes import BUDGET_ENV, gib, parse_size

BYTES_PER_VALUE = 4  # float32; a network saved in fp16 says so in its shape ("value_bytes")
ATTENTION_COPIES = 3.0  # score matrices alive at once in a plain-attention graph
# Largest activations alive at once, by network. Measured on the real SD 1.5 networks (onnxruntime,
# fused attention): the UNet held 3.3-3.6 copies at 512-1024 px and batch 2-8 (the tiny UNet up to 4.9).
# The VAE held 3-4 live copies, but onnxruntime's memory arena grows in doubling regions and held up
# to 6.1 (the decoder at 768 px: 1.9 GB live, 3.5 GB arena). FLUX's transformer is not measured yet.
FEATURE_MAP_COPIES = {"unet": 5.0, "transformer": 6.5, "vae_encoder": 6.5, "vae_decoder": 6.5}
FIXED_BYTES = 256 * 2**20  # latents, decoded images, buffers between the models
FREE_FRACTION = 0.9  # of the memory still free once every model is loaded (host, or a GPU's)

# A network's shape for the estimate, a plain dict saved in pipeline.json:
#   attention: [[pixels per token side, heads, extra tokens joined to the image's], ...]
#   feature_map: [channels, pixels per side, extra tokens] of its largest activation
#   fused_attention: whether its attention holds no score matrix (set at export, by runtime)
#   value_bytes: bytes of one activation value (4 for fp32, 2 for fp16)
NetworkShape = dict[str, Any]
VAE_ROLES = ("vae_encoder", "vae_decoder")
DENOISERS = ("unet", "transformer")


def _largest(candidates: list[tuple[int, int]]) -> list[int]:
    """The [channels, pixels per side] with the most values per pixel of the image."""
    channels, scale = max(candidates, key=lambda item: item[0] / item[1] ** 2)
    return [int(channels), int(scale), 0]


def network_shapes(pipeline: Any) -> dict[str, NetworkShape]:
    """The estimate's view of a diffusers pipeline's networks, by role (``unet``, ``transformer``,
    ``vae_encoder``, ``vae_decoder``); plain lists, saved in ``pipeline.json``."""
    vae = pipeline.vae.config
    blocks = [int(channels) for channels in vae.block_out_channels]
    factor = 2 ** (len(blocks) - 1)
    vae_attention = [[factor, 1, 0]] if getattr(vae, "mid_block_add_attention", True) else []
    # Encoder: block i works at 1/2^i of the image. Decoder: block i (channels reversed) ends upsampled
    # to 1/2^(n-2-i), the last one at full size, so the widest map is usually the second-to-last
    # block's output upsampled to full size (256 channels for SD's VAE).
    levels = len(blocks)
    decoder = list(reversed(blocks))
    shapes: dict[str, NetworkShape] = {
        "vae_encoder": {
            "attention": vae_attention,
            "feature_map": _largest([(blocks[i], 2**i) for i in range(levels)]),
        },
        "vae_decoder": {
            "attention": vae_attention,
            "feature_map": _largest(
                [(decoder[i], 2 ** max(0, levels - 2 - i)) for i in range(levels)] + [(decoder[0], factor)]
            ),
        },
    }
    transformer = getattr(pipeline, "transformer", None)
    if transformer is not None:  # FLUX: joint attention over 2x2-packed image tokens and text tokens
        config = transformer.config
        text_tokens = min(512, int(pipeline.tokenizer_2.model_max_length))
        inner = int(config.num_attention_heads) * int(config.attention_head_dim)
        # Single-stream blocks join the attention output and the 4x MLP: 5 x inner per token.
        shapes["transformer"] = {
            "attention": [[2 * factor, int(config.num_attention_heads), text_tokens]],
            "feature_map": [5 * inner, 2 * factor, text_tokens],
        }
    else:
        config = pipeline.unet.config
        unet_levels = len(config.block_out_channels)
        heads = config.num_attention_heads or config.attention_head_dim  # diffusers' legacy naming
        heads = list(heads) if isinstance(heads, list | tuple) else [heads] * unet_levels
        attention_levels = [
            level for level, kind in enumerate(config.down_block_types) if "CrossAttn" in kind
        ]
        attention = [[factor * 2**level, int(heads[level]), 0] for level in attention_levels]
        if config.mid_block_type and "CrossAttn" in config.mid_block_type:
            attention.append([factor * 2 ** (unet_levels - 1), int(heads[-1]), 0])
        # Convolutions at each level, and the transformer blocks' GEGLU feed-forward, which projects to
        # 2 x 4 x the level's channels: the widest activation of SD's UNets.
        widths = [int(channels) for channels in config.block_out_channels]
        candidates = [(channels, factor * 2**level) for level, channels in enumerate(widths)]
        candidates += [(8 * widths[level], factor * 2**level) for level in attention_levels]
        shapes["unet"] = {"attention": attention, "feature_map": _largest(candidates)}
    for shape in shapes.values():
        shape["fused_attention"] = False
        shape["value_bytes"] = BYTES_PER_VALUE
    return shapes


def for_runtime(networks: dict[str, NetworkShape], fused_attention: bool, value_bytes: int) -> dict:
    """``networks`` as a runtime runs them: with or without fused attention, in fp32 or fp16."""
    return {
        role: {**shape, "fused_attention": fused_attention, "value_bytes": value_bytes}
        for role, shape in networks.items()
    }


def needs_tiles(width: int, height: int, tile: int) -> bool:
    """Whether diffusers' tiled VAE splits an image of this size (else it runs untiled)."""
    return width > tile or height > tile


def call_bytes(shape: NetworkShape, role: str, width: int, height: int, batch: int) -> int:
    """Peak bytes of one call of the ``role`` network on ``batch`` items of ``width`` x ``height``
    pixels."""
    channels, scale, *extra = shape["feature_map"]
    tokens = math.ceil(height / scale) * math.ceil(width / scale) + (extra[0] if extra else 0)
    per_item = FEATURE_MAP_COPIES[role] * channels * tokens
    if not shape.get("fused_attention", False):
        scores = max(
            (heads * (math.ceil(height / side) * math.ceil(width / side) + joined) ** 2
             for side, heads, joined in shape["attention"]),
            default=0,
        )  # fmt: skip
        per_item = max(per_item, ATTENTION_COPIES * scores)
    return int(batch * per_item * shape.get("value_bytes", BYTES_PER_VALUE))


def request_bytes(
    networks: dict[str, NetworkShape],
    width: int,
    height: int,
    num_images: int,
    guided: bool,
    vae_tile: int | None = None,
) -> int:
    """Peak bytes of one request's work: its denoiser call (every image, twice over with
    classifier-free guidance, whose two halves go through in one call), and the larger of the VAE's
    encoder and decoder, which run one image at a time before and after it (on tiles of at most
    ``vae_tile`` pixels a side when given)."""
    rows = num_images * (2 if guided and "unet" in networks else 1)
    denoiser = sum(
        call_bytes(shape, role, width, height, rows) for role, shape in networks.items() if role in DENOISERS
    )
    vae_width, vae_height = (
        (width, height) if vae_tile is None else (min(width, vae_tile), min(height, vae_tile))
    )
    vae = max(
        (
            call_bytes(networks[role], role, vae_width, vae_height, 1)
            for role in VAE_ROLES
            if role in networks
        ),
        default=0,
    )
    return FIXED_BYTES + denoiser + vae


def cache_bytes(spec: Any, cache: Any, width: int, height: int, rows: int) -> int:
    """What a request's step cache keeps between steps (``spec``: its PipelineSpec, ``cache``: its
    CachePlan): DeepCache's feature of its branch per row, or the first-block cache's two residuals
    (first block and the rest) per row, each the size of the transformer's hidden states."""
    latent_width, latent_height = width // spec.vae_scale_factor, height // spec.vae_scale_factor
    if cache.kind == "deep_cache":
        _, channels, scale = next(item for item in spec.deep_cache_features if item[0] == cache.branch)
        values = channels * math.ceil(latent_width / scale) * math.ceil(latent_height / scale)
    else:
        inner = (spec.networks or {}).get("transformer", {}).get("feature_map", [0])[0] // 5
        values = 2 * inner * (latent_width // 2) * (latent_height // 2)
    return rows * values * BYTES_PER_VALUE


@dataclass(frozen=True)
class Need:
    """What a request needs: ``bytes`` of the budget, with the VAE in tiles of ``vae_tile`` pixels a
    side when the untiled VAE would not fit (None: untiled)."""

    bytes: int
    vae_tile: int | None = None


def largest_fitting(
    networks: dict[str, NetworkShape],
    width: int,
    height: int,
    num_images: int,
    guided: bool,
    budget: int,
    multiple: int,
    vae_tile: int | None = None,
) -> tuple[int, int] | None:
    """The largest (width, height) of the same aspect, in multiples of ``multiple``, whose request fits
    ``budget`` (with VAE tiles of ``vae_tile`` pixels where available); None when not even the smallest
    does."""
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
        if request_bytes(networks, *candidate, num_images, guided, vae_tile) <= budget:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def _cgroup_limit() -> int | None:
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def _physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit when lower."""
    total = _physical_bytes()
    limit = _cgroup_limit()
    return min(total, limit) if limit is not None else total


def _meminfo(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match[1]) * 1024 if match else 0


def memory_in_use() -> int:
    """Memory already taken where this process runs: its container's use (less the page cache it can
    drop) under a cgroup limit below the machine's, else the machine's total less what is available."""
    total = _physical_bytes()
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        try:
            current = int(Path("/sys/fs/cgroup/memory.current").read_text())
            stat = Path("/sys/fs/cgroup/memory.stat").read_text()
            inactive = re.search(r"^inactive_file (\d+)", stat, re.MULTILINE)
            return current - (int(inactive[1]) if inactive else 0)
        except (OSError, ValueError):
            pass
    return total - _meminfo("MemAvailable")


def configured_budget() -> int | None:
    """``$TRITON_INPAINT_MEMORY_BUDGET`` in bytes, when set."""
    configured = os.environ.get(BUDGET_ENV)
    return parse_size(configured) if configured else None


def default_budget(total: int, in_use: int) -> int:
    """The budget when none is configured: most of the memory still free once every model's weights
    are loaded (the rest is headroom for fragmentation and the processes' own growth)."""
    return max(0, int((total - in_use) * FREE_FRACTION))


def host_budget() -> int:
    """Bytes a checkpoint's networks may use for their work in host memory. Read at the first request,
    when Triton has loaded every model, so the weights of all of them are already taken out."""
    configured = configured_budget()
    return configured if configured is not None else default_budget(machine_bytes(), memory_in_use())


def device_budget(device: Any) -> int:
    """Bytes the networks may use for their work on a GPU: the configured budget, else most of the
    device's free memory, read at the first request as :func:`host_budget` is."""
    configured = configured_budget()
    if configured is not None:
        return configured
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return default_budget(total, total - free)


def check_request(
    networks: dict[str, NetworkShape] | None,
    width: int,
    height: int,
    num_images: int,
    guided: bool,
    budget: int | None,
    multiple: int,
    vae_tile: int | None = None,
) -> Need:
    """What the request needs (0 bytes when unknown), with the VAE tiled (tiles of ``vae_tile`` pixels,
    the checkpoint's own) only when the untiled VAE would not fit ``budget``. Refuses, before any work,
    a request that does not fit even so, naming the largest size that fits (and with one image, when
    more were asked for). No budget checks nothing; a checkpoint exported before shapes were saved (no
    ``networks``) needs an unknown amount."""
    if not networks:
        return Need(0)
    needed = request_bytes(networks, width, height, num_images, guided)
    if budget is None or needed <= budget:
        return Need(needed)
    if vae_tile is not None and needs_tiles(width, height, vae_tile):
        tiled = request_bytes(networks, width, height, num_images, guided, vae_tile)
        if tiled <= budget:
            return Need(tiled, vae_tile)
        needed = tiled
    fits = largest_fitting(networks, width, height, num_images, guided, budget, multiple, vae_tile)
    advice = [f"at most {fits[0]}x{fits[1]} fits with num_images {num_images}"] if fits else []
    if num_images > 1:
        single = largest_fitting(networks, width, height, 1, guided, budget, multiple, vae_tile)
        if single is not None and request_bytes(networks, width, height, 1, guided, vae_tile) <= budget:
            advice.append(f"{width}x{height} fits with num_images 1")
        elif single is not None:
            advice.append(f"at most {single[0]}x{single[1]} with num_images 1")
    raise InvalidInputError(
        "width",
        f"{width}x{height} (width x height) with num_images {num_images} needs about {gib(needed)} of "
        f"memory, more than the {gib(budget)} this model's networks may use for their work "
        f"({BUDGET_ENV}); "
        + (", or ".join(advice) if advice else "not even the smallest size fits: raise the budget"),
    )
