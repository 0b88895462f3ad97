"""LoRA adapters inside the exported networks, with each row's adapter weights as an input.

Every adapter a model declares is exported into its networks once, as a *bank*: each layer an adapter
touches keeps its base weights and gains, beside them, all adapters' low-rank matrices stacked
(``down``: rank-sum x in, ``up``: out x rank-sum). The network takes one more input, ``lora_scales``
(rows x adapters), and adds ``up((down x) * s)``, where ``s`` gives each rank column its adapter's
weight for that row times the adapter's own ``alpha / rank``: exactly diffusers' (peft's)
``base(x) + sum_i weight_i * scaling_i * B_i(A_i x)``, regrouped.

Why this and not weights fused per combination: a request's weights are any numbers in [-4, 4] and any
mix of adapters, so fused variants could not cover them, and each would be another copy of the UNet
(3.4 GB at SD 1.5 size). Here the adapters cost their own size once (megabytes), the weights change
per request with no reload, and requests using different adapters still share one denoiser call per
step (in-flight batching is per row). The price is the low-rank products on every call, zero-weighted
or not: a few percent of the layer's work per adapter at the usual ranks (``triton-inpaint bench``).
It is one graph for every runtime that runs ONNX (onnxruntime on the CPU or GPU, TensorRT).

peft is used to read the adapters (through diffusers' ``load_lora_weights``, which converts the
kohya and other formats); the bank layers are written here because neither library offers a layer
whose adapter weights are a per-row input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

HOLDER = "_lora_scales"  # attribute of a banked diffusers/transformers module: its LoraScales


class LoraScales:
    """The current call's ``lora_scales`` (rows x adapters), read by every bank of one network."""

    def __init__(self, adapters: int) -> None:
        self.adapters = adapters
        self.value: torch.Tensor | None = None


class BankedLora(torch.nn.Module):
    """A Linear or Conv2d with several LoRA adapters beside it, weighted per row by :class:`LoraScales`."""

    def __init__(
        self,
        base: torch.nn.Module,
        downs: Sequence[torch.Tensor],
        ups: Sequence[torch.Tensor],
        adapters: Sequence[int],
        scalings: Sequence[float],
        scales: LoraScales,
    ) -> None:
        super().__init__()
        self.base = base
        self.scales = scales
        down = torch.cat(list(downs), dim=0)
        up = torch.cat(list(ups), dim=1)
        if isinstance(base, torch.nn.Conv2d):
            self.down = torch.nn.Conv2d(
                base.in_channels, down.shape[0], base.kernel_size, base.stride, base.padding,
                base.dilation, bias=False,
            )  # fmt: skip
            self.up = torch.nn.Conv2d(up.shape[1], base.out_channels, 1, bias=False)
        else:
            self.down = torch.nn.Linear(down.shape[1], down.shape[0], bias=False)
            self.up = torch.nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.down.weight = torch.nn.Parameter(down.to(base.weight.dtype), requires_grad=False)
        self.up.weight = torch.nn.Parameter(up.to(base.weight.dtype), requires_grad=False)
        columns = [index for index, down in zip(adapters, downs, strict=True) for _ in range(down.shape[0])]
        weights = [scale for scale, down in zip(scalings, downs, strict=True) for _ in range(down.shape[0])]
        self.register_buffer("column_adapter", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.register_buffer("column_scaling", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = self.scales.value
        if scales is None:
            raise RuntimeError("a LoRA bank ran outside a call that gave lora_scales")
        columns = (scales[:, self.column_adapter] * self.column_scaling).to(x.dtype)  # (rows, rank sum)
        low = self.down(x)
        if isinstance(self.base, torch.nn.Conv2d):
            columns = columns[:, :, None, None]
        else:
            columns = columns.reshape(columns.shape[0], *([1] * (low.dim() - 2)), columns.shape[1])
        return self.base(x) + self.up(low * columns)


def _peft_layers(module: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    for name, layer in module.named_modules():
        if hasattr(layer, "lora_A") and hasattr(layer, "base_layer"):
            yield name, layer


def bank_adapters(
    module: torch.nn.Module, adapter_names: Sequence[str], where: str, shown: Sequence[str] | None = None
) -> bool:
    """Replace every peft LoRA layer of ``module`` (loaded by diffusers' ``load_lora_weights`` under
    ``adapter_names``) by a :class:`BankedLora` over the same base layer, the banks' columns in the
    order of ``adapter_names``. Returns whether any layer had an adapter. ``where`` names the module and
    ``shown`` the adapters in errors: an adapter kind that cannot be banked is refused, not half-applied."""
    scales = LoraScales(len(adapter_names))
    shown = shown or adapter_names
    replaced = []
    for name, layer in list(_peft_layers(module)):
        downs, ups, indices, scalings = [], [], [], []
        for index, adapter in enumerate(adapter_names):

            def refuse(what: str) -> ValueError:
                return ValueError(f"LoRA {shown[index]}: {where}.{name}: {what} is not supported")  # noqa: B023

            if adapter in getattr(layer, "lora_embedding_A", {}):
                raise refuse("LoRA on embeddings")
            if adapter not in layer.lora_A:
                continue
            if getattr(layer, "use_dora", {}).get(adapter):
                raise refuse("DoRA")
            if layer.lora_B[adapter].bias is not None:
                raise refuse("LoRA with a bias")
            if not isinstance(layer.base_layer, torch.nn.Linear | torch.nn.Conv2d):
                raise refuse(f"LoRA on a {type(layer.base_layer).__name__}")
            downs.append(layer.lora_A[adapter].weight.detach().float())
            ups.append(layer.lora_B[adapter].weight.detach().float().flatten(1))
            indices.append(index)
            scalings.append(float(layer.scaling[adapter]))
        if downs:
            replaced.append((name, BankedLora(layer.base_layer, downs, ups, indices, scalings, scales)))
    for name, bank in replaced:
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, bank)
    if replaced:
        setattr(module, HOLDER, scales)
    return bool(replaced)


class LoraNetwork(torch.nn.Module):
    """A role's module whose networks hold LoRA banks: the same inputs plus ``lora_scales`` last."""

    def __init__(self, inner: torch.nn.Module, scales: LoraScales) -> None:
        super().__init__()
        self.inner = inner
        self.scales = scales

    def forward(self, *inputs: torch.Tensor, lora_scales: torch.Tensor | None = None, **named: Any) -> Any:
        if lora_scales is None:  # traced and called by position: the last input
            *inputs, lora_scales = inputs
        self.scales.value = lora_scales
        try:
            return self.inner(*inputs, **named)
        finally:
            self.scales.value = None


def lora_scales_of(module: torch.nn.Module) -> LoraScales | None:
    """The scales holder of a banked module (:func:`bank_adapters`), or None."""
    return getattr(module, HOLDER, None)
