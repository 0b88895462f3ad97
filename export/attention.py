"""Attention exported as onnxruntime's fused ``MultiHeadAttention`` for the CPU runtime.

The TorchScript exporter writes ``scaled_dot_product_attention`` as plain matrix products and a
Softmax, so every attention layer of the served graph holds its (batch, heads, tokens, tokens) score
matrix twice: a 512x512 SD 1.5 request with four images needed 12 GB in the UNet alone, and memory grew
with the square of the pixels. onnxruntime's CPU kernel for the ``com.microsoft.MultiHeadAttention``
contrib op runs flash attention (blocked, online softmax): no score matrix at all, and about twice as
fast on these networks (docs/benchmarks.md).

Written by hand because neither library does it for these graphs: onnxruntime's transformer optimizer
(``optimize_model(model_type="unet")``) fuses self-attention into the older ``Attention`` op, whose CPU
kernel materialises the scores again, and it needs about six times a graph's weights in memory (20 GB for
the SD 1.5 UNet). Emitting the op at export instead takes no extra memory and covers every network that
calls ``scaled_dot_product_attention`` (diffusers' UNet, VAE and FLUX transformer, transformers' CLIP
and T5 with the ``sdpa`` implementation).

The op is onnxruntime's own, so only the ``cpu`` runtime's graphs use it; the portable graphs that
TensorRT builds from keep standard ONNX ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
import torch.nn.functional as F

FUSED_OP = "MultiHeadAttention"  # in the com.microsoft domain
_sdpa = F.scaled_dot_product_attention
_HEADS_FIRST = [0, 2, 1, 3]  # (batch, heads, tokens, dim) <-> (batch, tokens, heads, dim)


class _MultiHeadAttention(torch.autograd.Function):
    """Torch's attention when run (tracing, checks); ``MultiHeadAttention`` in the exported graph."""

    @staticmethod
    def forward(ctx, query, key, value, scale: float, causal: bool, heads: int, value_dim: int):  # noqa: ANN001, ANN205
        return _sdpa(query, key, value, scale=scale, is_causal=causal)

    @staticmethod
    def symbolic(g, query, key, value, scale: float, causal: bool, heads: int, value_dim: int):  # noqa: ANN001, ANN205
        # The op takes (batch, tokens, heads * dim); the callers hold (batch, heads, tokens, dim). The
        # transposes added here meet the callers' own and onnxruntime cancels most pairs when it loads.
        merged = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))

        def tokens_first(tensor):  # noqa: ANN001, ANN202
            return g.op("Reshape", g.op("Transpose", tensor, perm_i=_HEADS_FIRST), merged)

        attended = g.op(
            f"com.microsoft::{FUSED_OP}",
            tokens_first(query),
            tokens_first(key),
            tokens_first(value),
            num_heads_i=heads,
            scale_f=scale,
            unidirectional_i=int(causal),
        )
        split = g.op("Constant", value_t=torch.tensor([0, 0, heads, value_dim], dtype=torch.int64))
        return g.op("Transpose", g.op("Reshape", attended, split), perm_i=_HEADS_FIRST)


def _fusable(query: torch.Tensor, key: torch.Tensor, attn_mask: object, dropout_p: float, gqa: bool) -> bool:
    return (
        torch.onnx.is_in_onnx_export()
        and attn_mask is None
        and dropout_p == 0.0
        and not gqa
        and query.dim() == 4
        and key.shape[1] == query.shape[1]
    )


def _scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` that exports as ``MultiHeadAttention`` where the op can say
    the same (no mask tensor, no dropout, as many key heads as query heads); anything else, and every
    call outside an export, is torch's own."""
    if not _fusable(query, key, attn_mask, dropout_p, enable_gqa):
        return _sdpa(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )  # fmt: skip
    scale = float(scale) if scale is not None else float(query.shape[-1]) ** -0.5
    return _MultiHeadAttention.apply(
        query, key, value, scale, bool(is_causal), int(query.shape[1]), int(value.shape[-1])
    )


@contextmanager
def fused_attention(enabled: bool = True) -> Iterator[None]:
    """While exporting inside this block, attention becomes ``com.microsoft.MultiHeadAttention``."""
    if not enabled:
        yield
        return
    with mock.patch.object(F, "scaled_dot_product_attention", _scaled_dot_product_attention):
        yield
